"""`modalmesh up`: the four services as separate processes on one machine.

Starts text, vision, audio and the router (`modalmesh serve ...` each), streams their
logs with a service prefix, waits on their health checks with a progress line, and
stops all of them cleanly on Ctrl-C or SIGTERM. If a service exits or does not become
healthy in time, the others are stopped and the exit code is non-zero with that
service named. `--detach` leaves them running (pids in a state file) for
`modalmesh down`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from modalmesh.common.config import DEFAULT_PORTS

ORDER = ("text", "vision", "audio", "router")  # the router last: it dials the others
STATE_FILE = Path(os.environ.get("MODALMESH_STATE_DIR", Path.home() / ".modalmesh")) / "up.json"
LOG_DIR = STATE_FILE.parent / "logs"  # a detached mesh's service logs, <name>.log


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Nothing listens on it (connections of a stopped server in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class Member:
    name: str
    port: int
    process: subprocess.Popen | None = None
    ready_after: float | None = None
    log_threads: list[threading.Thread] = field(default_factory=list)
    recent: deque = field(default_factory=lambda: deque(maxlen=200))  # its last log lines
    log_path: Path | None = None  # detached: where its log goes

    @property
    def running(self) -> subprocess.Popen:
        """Its process (started: Mesh.start runs before anything asks)."""
        assert self.process is not None, f"{self.name} was not started"
        return self.process

    def last_words(self, count: int = 3) -> str:
        """The end of its log, for saying why it stopped: the last lines that are not a
        traceback's indented frames."""
        lines = list(self.recent)
        if self.log_path is not None and self.log_path.is_file():
            lines = self.log_path.read_text(errors="replace").splitlines()[-200:]
        said = [line.strip() for line in lines if line.strip() and not line.startswith((" ", "\t", "Traceback"))]
        return " | ".join(said[-count:])


class Mesh:
    def __init__(
        self,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        extra_env: dict[str, str] | None = None,
        log_stream=sys.stderr,
        quiet_logs: bool = False,
        metrics_ports: dict[str, int] | None = None,
        health_ports: dict[str, int] | None = None,
        http_port: int = 0,
        model_repository: str = "",
    ) -> None:
        self.host = host
        self.http_port = http_port  # the router's HTTP port (0: none)
        self.model_repository = model_repository  # the router's model repository ('': the shipped weights)
        # Per service: a plaintext port that answers only health checks, on its own server (0 or absent: none).
        self.health_ports = {name: port for name, port in (health_ports or {}).items() if port > 0}
        # Per service: -1 (or absent) keeps the service's own rule (gRPC port - 41000), 0 turns metrics off.
        self.metrics_ports = {name: port for name, port in (metrics_ports or {}).items() if port >= 0}
        ports = {**DEFAULT_PORTS, **(ports or {})}
        self.members = {name: Member(name, ports[name]) for name in ORDER}
        self.extra_env = extra_env or {}
        self.log_stream = log_stream
        self.quiet_logs = quiet_logs
        self._print_lock = threading.Lock()

    def address(self, name: str) -> str:
        return f"{self.host}:{self.members[name].port}"

    def command(self, name: str) -> list[str]:
        command = [sys.executable, "-m", "modalmesh.cli", "serve", name, "--host", self.host, "--port", str(self.members[name].port)]
        if name in self.metrics_ports:
            command += ["--metrics-port", str(self.metrics_ports[name])]
        if name in self.health_ports:
            command += ["--health-port", str(self.health_ports[name])]
        if name == "router":
            command += ["--http-port", str(self.http_port)]
            if self.model_repository:
                command += ["--model-repository", self.model_repository]
            command += ["--text-target", self.address("text"), "--vision-target", self.address("vision"), "--audio-target", self.address("audio")]
        return command

    def start(self, detach: bool = False) -> None:
        for name in ORDER:
            member = self.members[name]
            env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
            if detach:
                LOG_DIR.mkdir(parents=True, exist_ok=True)
                member.log_path = LOG_DIR / f"{name}.log"
                with member.log_path.open("w") as log_file:  # the child keeps its own descriptor
                    member.process = subprocess.Popen(self.command(name), env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True, start_new_session=True)
                continue
            member.process = subprocess.Popen(self.command(name), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if not detach:
                thread = threading.Thread(target=self._pump, args=(member,), daemon=True)
                thread.start()
                member.log_threads.append(thread)

    def _pump(self, member: Member) -> None:
        for line in member.running.stdout or ():
            member.recent.append(line.rstrip())
            if not self.quiet_logs:
                with self._print_lock:
                    print(f"{member.name:>6} | {line.rstrip()}", file=self.log_stream, flush=True)

    def wait_healthy(self, timeout: float = 300.0, progress=sys.stderr) -> None:
        """Block until every service reports SERVING; raise RuntimeError naming the first
        that exited or timed out."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        from modalmesh.common.client import connect

        started = time.monotonic()
        channels = {name: connect(self.address(name)) for name in ORDER}
        last_states = ""
        try:
            while True:
                for name, member in self.members.items():
                    if member.running.poll() is not None:
                        for thread in member.log_threads:  # its last lines may still be in the pipe
                            thread.join(timeout=2)
                        raise RuntimeError(f"{name} exited with code {member.running.returncode} before becoming healthy: {member.last_words() or 'no log'}")
                    if member.ready_after is not None:
                        continue
                    try:
                        reply = health_pb2_grpc.HealthStub(channels[name]).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            member.ready_after = time.monotonic() - started
                    except Exception:  # not listening yet
                        pass
                states = "  ".join(f"{n} {'ok %.1fs' % m.ready_after if m.ready_after is not None else 'starting'}" for n, m in self.members.items())
                if progress is not None:
                    if progress.isatty():  # one line, redrawn
                        print(f"\r[{time.monotonic() - started:5.1f}s] {states}   ", end="", file=progress, flush=True)
                    elif states != last_states:  # a log: one line per change
                        print(f"[{time.monotonic() - started:5.1f}s] {states}", file=progress, flush=True)
                    last_states = states
                if all(m.ready_after is not None for m in self.members.values()):
                    if progress is not None and progress.isatty():
                        print(file=progress)
                    return
                if time.monotonic() - started > timeout:
                    late = [n for n, m in self.members.items() if m.ready_after is None]
                    raise RuntimeError(f"{', '.join(late)} not healthy after {timeout:.0f} s")
                time.sleep(0.25)
        finally:
            for channel in channels.values():
                channel.close()

    def stop(self, grace: float = 15.0) -> dict[str, int]:
        """SIGTERM in reverse order (router first), then wait; SIGKILL what is left."""
        for name in reversed(ORDER):
            process = self.members[name].process
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        deadline = time.monotonic() + grace
        for name in reversed(ORDER):
            process = self.members[name].process
            if process is None:
                continue
            try:
                codes[name] = process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes

    def save_state(self) -> None:
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        state = {name: {"pid": m.running.pid, "started": _start_time(m.running.pid), "address": self.address(name)} for name, m in self.members.items()}
        STATE_FILE.write_text(json.dumps(state, indent=2))


def run_up(
    ports: dict[str, int],
    host: str,
    detach: bool,
    timeout: float,
    metrics_ports: dict[str, int] | None = None,
    http_port: int = 0,
    model_repository: str = "",
) -> int:
    running = _detached_pids() if detach else {}  # a second one would take over its state file
    if running:
        print(f"modalmesh up: a detached mesh is running ({', '.join(f'{n} pid {p}' for n, p in running.items())}); `modalmesh down` stops it", file=sys.stderr)
        return 1
    mesh = Mesh(host=host, ports=ports, metrics_ports=metrics_ports, http_port=http_port, model_repository=model_repository)
    busy = [mesh.address(name) for name in ORDER if not port_free(host, mesh.members[name].port)]
    busy += [f"{host}:{http_port} (HTTP)"] if http_port and not port_free(host, http_port) else []
    busy += [f"{host}:{port} (metrics)" for port in mesh.metrics_ports.values() if port and not port_free(host, port)]
    if busy:  # else the health checks could find whatever listens there and call the mesh up
        print(
            f"modalmesh up: {', '.join(busy)} already in use; stop what listens there or choose other ports "
            f"(--router-port, --text-port, --vision-port, --audio-port, --<service>-metrics-port, --http-port)",
            file=sys.stderr,
        )
        return 1
    print("starting " + ", ".join(f"{n} on {mesh.address(n)}" for n in ORDER), file=sys.stderr)
    mesh.start(detach=detach)
    try:
        mesh.wait_healthy(timeout=timeout)
    except RuntimeError as exc:
        print(f"\nmodalmesh up: {exc}; stopping the others", file=sys.stderr)
        mesh.stop()
        return 1
    print("mesh is up: " + ", ".join(f"{n}={mesh.address(n)}" for n in ORDER), file=sys.stderr)
    if detach:
        mesh.save_state()
        print(f"detached; `modalmesh down` stops it (state in {STATE_FILE}, logs in {LOG_DIR})", file=sys.stderr)
        return 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        for name, member in mesh.members.items():
            if member.running.poll() is not None:
                print(f"modalmesh up: {name} exited with code {member.running.returncode}; stopping the others", file=sys.stderr)
                mesh.stop()
                return 1
    print("stopping the mesh", file=sys.stderr)
    codes = mesh.stop()
    print("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()), file=sys.stderr)
    return 0 if all(c == 0 for c in codes.values()) else 1


def run_down(grace: float = 15.0) -> int:
    if not STATE_FILE.is_file():
        print(f"modalmesh down: no detached mesh ({STATE_FILE} not found)", file=sys.stderr)
        return 1
    state = json.loads(STATE_FILE.read_text())
    ours = _detached_pids(state)
    for name in reversed(ORDER):
        pid = state.get(name, {}).get("pid") if isinstance(state.get(name), dict) else None
        if pid and name not in ours:  # after a crash or a reboot the pid can be anybody's
            print(f"{name} (pid {pid}) had already stopped; that pid is not signalled", file=sys.stderr)
    for name in reversed(ORDER):  # the router first, then the encoders
        pid = ours.get(name)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for name in reversed(ORDER):
        pid = ours.get(name)
        if pid is None:
            continue
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        print(f"stopped {name} (pid {pid})", file=sys.stderr)
    STATE_FILE.unlink()
    return 0


def _detached_pids(state: dict | None = None) -> dict[str, int]:
    """The services of a mesh left by `up --detach` that are still running: their pid is
    alive and is still the process that was started (its start time, where /proc tells;
    else a command line naming modalmesh). Only those may be signalled."""
    if state is None:
        try:
            state = json.loads(STATE_FILE.read_text())
        except (OSError, ValueError):
            return {}
    ours = {}
    for name, entry in state.items():
        pid = entry.get("pid") if isinstance(entry, dict) else None
        if isinstance(pid, int) and pid > 0 and _alive(pid) and _same_process(pid, entry.get("started")):
            ours[name] = pid
    return ours


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat, field 22);
    None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def _same_process(pid: int, started: str | None) -> bool:
    now = _start_time(pid)
    if started is not None and now is not None:
        return now == started
    try:  # a state file without start times: the command line must at least be ours
        return b"modalmesh" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: the pid is all there is


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
