"""A model repository: numbered versions of each task's weights, loaded while serving.

    <repository>/<task>/task.json                  (a task of your own: router/task_file.py)
    <repository>/<task>/<version>/model.safetensors
                                  config.json
                                  applicability.safetensors, status_line.safetensors (when trained with them)
                                  MODEL_CARD.md

The layout Triton's users know. <version> is a positive integer; other folders (a
training run's `.3.partial-...`) are not versions. Each task answers with its highest
version that loaded (or the one pinned for it); a request may name any ready version as
"<task>@<version>". A thread looks for new versions every `poll_s` seconds and loads
them beside the ones serving: a request holds the version it started with to the end,
and a version that fails to load is reported with the reason while the one before it
keeps serving (fix its files and it is tried again). `modalmesh train --repository DIR`
writes the next version (never over an existing one) and moves it into place in one
rename, so a half-written version is never seen.

A task file that changes is read again on the next poll: its ready versions are loaded
again under it and take over together (requests in flight finish as they began). A
changed file that does not load, or that a ready version does not load under (other
labels, say), is not applied: the task keeps serving as before and `refused` says why.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from modalmesh.router.task_file import TaskFileError, find_task_files, load_task_file
from modalmesh.router.tasks import FusionEngine, TaskModel, TaskSpec, load_task_folder

log = logging.getLogger(__name__)

REQUIRED_FILES = ("model.safetensors", "config.json")
VERSION_NAME = re.compile(r"^[1-9][0-9]{0,8}$")


@dataclass(frozen=True)
class VersionState:
    version: int
    state: str  # "ready", "failed" or "unloaded"
    reason: str = ""  # why it failed or was unloaded
    stamp: float = 0.0  # the version folder's newest file time when it was loaded: a failed one is retried when it changes


def _stamp(folder: Path) -> float:
    try:
        return max([folder.stat().st_mtime] + [entry.stat().st_mtime for entry in folder.iterdir()])
    except OSError:
        return 0.0


def _read_task_file(name: str, path: Path) -> TaskSpec:
    """The task file of the repository's folder `name`; TaskFileError when it does not load
    or names another task."""
    spec = load_task_file(path)
    if spec.name != name:
        raise TaskFileError(path, [f"{path}: name {spec.name!r} is not its folder's name {name!r}"])
    return spec


def _file_stamp(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def versions_in(folder: Path) -> list[int]:
    """The version numbers present in a task's folder, ascending."""
    if not folder.is_dir():
        return []
    return sorted(int(entry.name) for entry in folder.iterdir() if entry.is_dir() and VERSION_NAME.match(entry.name))


@contextlib.contextmanager
def staged_version(task_folder: Path, published: list[Path]) -> Iterator[Path]:
    """A new, empty folder to write a version into. On success it becomes the task's next
    version, `<task_folder>/<N>` with N one more than the highest there, in one rename
    (appended to `published`); an existing version is never replaced. On failure it is removed."""
    task_folder.mkdir(parents=True, exist_ok=True)
    staging = task_folder / f".next.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        for _ in range(1000):
            final = task_folder / str(max(versions_in(task_folder), default=0) + 1)
            if final.exists():
                continue
            try:
                os.rename(staging, final)  # fails if another run took the number meanwhile
            except OSError:
                continue
            published.append(final)
            return
        raise OSError(f"{task_folder}: no free version number")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def why_missing(tasks: Mapping[str, TaskModel], key: str) -> str:
    """Why `key` ("task" or "task@version") names no task that can answer, in words (at
    most 300 characters): a repository's reason, or the tasks there are."""
    if isinstance(tasks, Repository):
        return tasks.why_not(key)[:300]
    return f"unknown task {key[:100]!r}; one of {', '.join(sorted(tasks))}"


class Repository(Mapping[str, TaskModel]):
    """The tasks a router serves from a model repository, by name: `repository["t"]` is the
    version serving for task t, `repository["t@3"]` its version 3 (KeyError if not ready)."""

    def __init__(
        self,
        root: str | Path,
        specs: Mapping[str, TaskSpec],
        prepare: Callable[[TaskModel], TaskModel] = lambda task: task,
        pins: Mapping[str, int] | None = None,
        precision: str = "auto",
        engine: FusionEngine | None = None,
    ) -> None:
        self.root = Path(root)
        self.precision = precision  # the fusion precision each version loads at (tasks.load_task_folder)
        self.engine = engine  # what runs each version's decisions (tasks.FusionEngine; torch when None)
        self.specs = dict(specs)
        self.prepare = prepare  # applied to each version as it loads (routing overrides, warm-up)
        self.pins = dict(pins or {})
        self._lock = threading.Lock()
        self._ready: dict[str, dict[int, TaskModel]] = {name: {} for name in self.specs}
        self._states: dict[str, dict[int, VersionState]] = {name: {} for name in self.specs}
        self.problems: dict[str, str] = {}  # task -> why its task file does not load
        self._problem_stamps: dict[str, float] = {}
        self.refused: dict[str, str] = {}  # served task -> why its changed task file is not applied
        self._file_stamps: dict[str, int] = {}  # task -> its task file's mtime (ns) when read; built-ins have none
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loading ---------------------------------------------------------------------
    def discover(self) -> None:
        """Add the tasks whose task file (`<task>/task.json`) appeared; a file that does not
        load is reported (`problems`) and tried again when it changes. Built-in tasks need none."""
        for name, path in find_task_files(self.root).items():
            if name in self._file_stamps:  # served from its file: read it again when it changed
                self._reread(name, path)
                continue
            stamp = _stamp(path.parent)
            if name in self.specs or self._problem_stamps.get(name) == stamp:
                continue
            try:
                spec = _read_task_file(name, path)
            except TaskFileError as exc:
                self.problems[name], self._problem_stamps[name] = str(exc), stamp
                log.error("model repository: task %s not loaded: %s", name, exc)
                continue
            self.problems.pop(name, None)
            with self._lock:
                self._ready.setdefault(name, {})
                self._states.setdefault(name, {})
            self.specs = {**self.specs, name: spec}  # a new dict: readers iterating the old one are not disturbed
            self._file_stamps[name] = _file_stamp(path)
            log.info("model repository: task %s from %s", name, path)

    def _reread(self, name: str, path: Path) -> None:
        """Apply a changed task file to a served task: its ready versions loaded again under
        it and swapped in together, or nothing changed and `refused[name]` saying why."""
        stamp = _file_stamp(path)
        if stamp == self._file_stamps.get(name):
            return
        self._file_stamps[name] = stamp  # tried once per change
        try:
            spec = _read_task_file(name, path)
        except TaskFileError as exc:
            self.refused[name] = f"the changed task file is not applied: {exc}"
            log.error("model repository: %s: %s", name, self.refused[name])
            return
        with self._lock:
            versions = sorted(self._ready[name])
        loaded, failed = {}, []
        for version in versions:
            folder = self.root / name / str(version)
            try:
                model = self.prepare(load_task_folder(spec, folder, self.precision, self.engine))
            except Exception as exc:  # the weights do not fit the new file: nothing is swapped
                failed.append(f"version {version} does not load under it: {_reason(exc, folder)}")
                continue
            model.repository_version = version
            loaded[version] = model
        if failed:
            self.refused[name] = f"the changed task file {path} is not applied: " + "; ".join(failed)
            log.error("model repository: %s: %s", name, self.refused[name])
            return
        with self._lock:
            self._ready[name].update(loaded)  # requests in flight keep the models they hold
            for version, state in list(self._states[name].items()):
                if state.state == "failed":  # tried again under the new file on the next poll
                    del self._states[name][version]
        self.specs = {**self.specs, name: spec}
        self.refused.pop(name, None)
        log.info("model repository: task %s: %s read again, %d version(s) reloaded", name, path, len(loaded))

    def poll(self) -> list[VersionState]:
        """Add new task files' tasks, then load every version not seen before; returns what
        became of each version."""
        self.discover()
        outcomes = []
        for name, spec in self.specs.items():
            for version in versions_in(self.root / name):
                known = self._states[name].get(version)
                if known is not None and not (known.state == "failed" and known.stamp != _stamp(self.root / name / str(version))):
                    continue  # loaded, unloaded on request, or failed and unchanged since
                outcomes.append(self._load(name, spec, version))
        return outcomes

    def _load(self, name: str, spec: TaskSpec, version: int) -> VersionState:
        folder = self.root / name / str(version)
        stamp = _stamp(folder)
        missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
        try:
            if missing:
                raise ValueError(f"{folder}: missing {', '.join(missing)}")
            model = self.prepare(load_task_folder(spec, folder, self.precision, self.engine))
        except Exception as exc:  # any file problem: reported, and the versions before keep serving
            state = VersionState(version, "failed", _reason(exc, folder), stamp)
            log.error("model repository: %s version %d not loaded: %s", name, version, state.reason)
        else:
            model.repository_version = version
            with self._lock:
                self._ready[name][version] = model
            state = VersionState(version, "ready", stamp=stamp)
            log.info("model repository: %s version %d ready (%s)", name, version, model.version)
        with self._lock:
            self._states[name][version] = state
        return state

    def unload(self, name: str, version: int) -> None:
        """Stop serving a version (requests holding it finish on it); a later poll leaves it unloaded."""
        with self._lock:
            if self._ready.get(name, {}).pop(version, None) is None:
                raise KeyError(f"{name} has no ready version {version}")
            self._states[name][version] = VersionState(version, "unloaded", "unloaded on request")

    def reload(self, name: str) -> list[VersionState]:
        """Read the task's file again where it changed, then load the versions that are not
        ready, unloaded ones included; its states after."""
        path = find_task_files(self.root).get(name)
        if name in self._file_stamps and path is not None:
            self._reread(name, path)
        spec = self.specs[name]
        for version in versions_in(self.root / name):
            known = self._states[name].get(version)
            if known is None or known.state != "ready":
                self._load(name, spec, version)
        return self.states(name)

    def unload_task(self, name: str) -> None:
        """Stop serving every version of the task (until `reload`)."""
        with self._lock:
            for version in list(self._ready[name]):
                del self._ready[name][version]
                self._states[name][version] = VersionState(version, "unloaded", "unloaded on request")

    def start(self, poll_s: float) -> None:
        """Poll for new versions every `poll_s` seconds in the background (0: never)."""
        if poll_s <= 0 or self._thread is not None:
            return

        def watch() -> None:
            while not self._stop.wait(poll_s):
                try:
                    self.poll()
                except OSError as exc:  # the folder went away for a moment: try again next time
                    log.warning("model repository %s: %s", self.root, exc)

        self._thread = threading.Thread(target=watch, name="model-repository", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- reading ---------------------------------------------------------------------
    def serving(self, name: str) -> TaskModel | None:
        """The version a request without `@version` gets: the pinned one, else the highest ready."""
        with self._lock:
            ready = self._ready.get(name, {})
            pinned = self.pins.get(name)
            if pinned is not None:
                return ready.get(pinned)
            return ready[max(ready)] if ready else None

    def states(self, name: str) -> list[VersionState]:
        with self._lock:
            return [self._states[name][v] for v in sorted(self._states.get(name, {}))]

    def why_not(self, key: str) -> str:
        """Why `key` ("task" or "task@version") names nothing ready, in words."""
        name, _, version = key.partition("@")
        if name in self.problems:
            return f"task {name}'s task file does not load: {self.problems[name]}"
        if name not in self.specs:
            return f"unknown task {name[:100]!r}; one of {', '.join(sorted(self.specs))}"
        states = {s.version: s for s in self.states(name)}
        ready = [str(v) for v, s in states.items() if s.state == "ready"]
        if not version:
            pinned = self.pins.get(name)
            if pinned is not None:
                return f"{name}: pinned version {pinned} is not ready ({_describe(states.get(pinned))})"
            return f"{name} has no ready version in {self.root / name}"
        if not VERSION_NAME.match(version):
            return f"{key!r}: a version is a positive integer"
        return f"{name} version {version} is not ready ({_describe(states.get(int(version)))}); ready: {', '.join(ready) or 'none'}"

    def __getitem__(self, key: str) -> TaskModel:
        name, _, version = key.partition("@")
        if not version:
            model = self.serving(name)
        elif VERSION_NAME.match(version):
            with self._lock:
                model = self._ready.get(name, {}).get(int(version))
        else:
            model = None
        if model is None:
            raise KeyError(key)
        return model

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(name for name in self.specs if self.serving(name) is not None))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self[key]
        except KeyError:
            return False
        return True


def _describe(state: VersionState | None) -> str:
    if state is None:
        return "no such version"
    return f"{state.state}: {state.reason}" if state.reason else state.state


def _reason(exc: Exception, folder: Path) -> str:
    text = str(exc) or type(exc).__name__
    return text if str(folder) in text else f"{folder}: {text}"
