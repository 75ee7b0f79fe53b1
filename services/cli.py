"""The `modalmesh` command line.

modalmesh serve text [--port N] [...config flags]
modalmesh serve vision|audio
modalmesh encode text "a sentence" [--json] [--target HOST:PORT]
modalmesh encode image PATH [--ocr] [--json]
modalmesh encode audio PATH [--transcript] [--json]
modalmesh say "text" --out reply.wav
modalmesh analyze --task T [--text ...] [--image PATH] [--audio PATH] [--speech-out reply.wav] [--json]
modalmesh certs --out DIR
modalmesh demo
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any, Callable
from pathlib import Path

from modalmesh.common.config import add_config_flags, load_config
from modalmesh.common.media import guess_media_type
from modalmesh.router import BUILT_IN_TASKS

SERVICES = ("router", "text", "vision", "audio")


def _service(name: str, config):
    if name == "text":
        from modalmesh.text.server import TextService

        return TextService(config)
    if name == "vision":
        from modalmesh.vision.server import VisionService

        return VisionService(config)
    if name == "audio":
        from modalmesh.audio.server import AudioService

        return AudioService(config)
    if name == "router":
        from modalmesh.router.server import RouterService

        return RouterService(config)
    raise SystemExit(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from modalmesh.common.runtime import serve_forever, single_threaded_numpy_blas, sleeping_idle_threads

    sleeping_idle_threads()  # before the service's module loads torch
    single_threaded_numpy_blas()  # and numpy
    args.service = args.service or os.environ.get("MODALMESH_SERVICE", "")
    if args.service not in SERVICES:
        print(f"modalmesh serve: name a service ({', '.join(SERVICES)}) or set MODALMESH_SERVICE", file=sys.stderr)
        return 2
    try:
        config = load_config(args.service, args)
    except ValueError as exc:
        print(f"modalmesh serve: {exc}", file=sys.stderr)
        return 2
    return serve_forever(config, _service(args.service, config))


def _client_flags(parser: argparse.ArgumentParser, default_target: str) -> None:
    shown = default_target or "the modality's service: text 50051, image 50052, audio 50053"
    parser.add_argument("--target", default=default_target, help=f"service address (default {shown})")
    parser.add_argument("--ca", default="", help="PEM CA to trust (turns TLS on)")
    parser.add_argument("--cert", default="", help="client certificate for mTLS")
    parser.add_argument("--key", default="", help="client key for mTLS")
    parser.add_argument("--token", default="", help="bearer token")
    parser.add_argument("--server-name", default="", help="name to check in the server certificate")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")


def _channel(args: argparse.Namespace):
    from modalmesh.common.client import connect

    return connect(args.target, ca=args.ca, cert=args.cert, key=args.key, token=args.token, server_name=args.server_name)


DEFAULT_TARGETS = {"text": "127.0.0.1:50051", "image": "127.0.0.1:50052", "audio": "127.0.0.1:50053"}


def cmd_encode(args: argparse.Namespace) -> int:
    import grpc

    args.target = args.target or DEFAULT_TARGETS[args.modality]
    from modalmesh.common import codec, errors
    from modalmesh.common.client import EncoderClient

    options, parameters = [], dict(args.param)
    media_type: str | None
    if args.modality == "text":
        data, media_type = args.input.encode("utf-8"), "text/plain"
    else:
        try:
            with open(args.input, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            print(f"modalmesh encode: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
            return 2
        media_type = args.media_type or guess_media_type(args.modality, data, args.input)
        if media_type is None:
            print(f"modalmesh encode: cannot tell the media type of {args.input}; pass --media-type", file=sys.stderr)
            return 2
        if args.ocr:
            options.append("ocr")
        if args.lesions:
            options.append("lesions")
        if args.transcript:
            options.append("transcript")
    with _channel(args) as channel:
        try:
            result = EncoderClient(channel).encode(
                data, media_type, options=options, parameters=parameters, output_datatype=args.datatype, timeout=args.timeout
            )
        except grpc.RpcError as exc:
            detail = "; ".join(f"{f}: {d}" for f, d in errors.field_violations(exc))
            print(f"modalmesh encode: {exc.code().name}: {exc.details()}" + (f" [{detail}]" if detail else ""), file=sys.stderr)
            return 1
    pooled = result.pooled_message
    summary: dict[str, Any] = {
        "request_id": result.request_id,
        "model_version": pooled.model_version,
        "sequence": None if result.sequence is None else {"datatype": result.chunks[0].sequence.values.datatype, "shape": list(result.sequence.shape)},
        "pooled": {
            "datatype": pooled.vector.datatype,
            "shape": codec.shape_of(pooled.vector),
            "values": [round(float(v), 6) for v in result.pooled],
        },
        "sequence_length": pooled.sequence_length,
        "truncated": pooled.truncated,
        "timings_ms": dict(pooled.timings_ms),
    }
    if result.side is not None:
        summary["tags"] = dict(result.side.tags)
        if result.side.text_spans:
            summary["text_spans"] = [
                {"text": s.text, "confidence": round(s.confidence, 4), "box": [round(v, 1) for v in s.box]} for s in result.side.text_spans
            ]
        if result.side.HasField("transcript"):
            summary["transcript"] = {"text": result.side.transcript.text, "confidence": round(result.side.transcript.confidence, 4)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        seq = summary["sequence"]
        print(f"request {summary['request_id']} model {summary['model_version']}")
        if seq:
            print(f"  tokens  {seq['datatype']}{seq['shape']}")
        head = ", ".join(f"{v:+.4f}" for v in summary["pooled"]["values"][:6])
        print(f"  pooled  {pooled.vector.datatype}{summary['pooled']['shape']}  [{head}, ...]")
        print(f"  truncated={pooled.truncated}  timings_ms={ {k: round(v, 2) for k, v in pooled.timings_ms.items()} }")
        for key in ("tags", "text_spans", "transcript"):
            if key in summary:
                print(f"  {key}: {summary[key]}")
    return 0


def cmd_say(args: argparse.Namespace) -> int:
    import grpc

    from modalmesh.common import errors
    from modalmesh.v1 import speech_pb2, speech_pb2_grpc

    audio_format = speech_pb2.AUDIO_FORMAT_PCM16 if args.out.endswith((".pcm", ".raw")) else speech_pb2.AUDIO_FORMAT_WAV
    request = speech_pb2.SynthesizeRequest(text=args.text, voice=args.voice, rate_wpm=args.rate, format=audio_format, sample_rate_hz=args.sample_rate)
    with _channel(args) as channel:
        try:
            chunks = list(speech_pb2_grpc.SpeechStub(channel).Synthesize(request, timeout=args.timeout))
        except grpc.RpcError as exc:
            detail = "; ".join(f"{f}: {d}" for f, d in errors.field_violations(exc))
            print(f"modalmesh say: {exc.code().name}: {exc.details()}" + (f" [{detail}]" if detail else ""), file=sys.stderr)
            return 1
    data = b"".join(chunk.data for chunk in chunks)
    with open(args.out, "wb") as handle:
        handle.write(data)
    rate = chunks[0].sample_rate_hz if chunks else 0
    seconds = (len(data) - (44 if audio_format == speech_pb2.AUDIO_FORMAT_WAV else 0)) / 2 / rate if rate else 0
    print(f"wrote {args.out}: {seconds:.2f} s at {rate} Hz in {len(chunks)} chunks")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import grpc

    from modalmesh.client import RouterClient, format_answer
    from modalmesh.common import errors

    inputs = {}
    for name in ("image", "audio"):
        path = getattr(args, name)
        if path:
            try:
                with open(path, "rb") as handle:
                    inputs[name] = handle.read()
            except OSError as exc:
                print(f"modalmesh analyze: cannot read {path}: {exc.strerror}", file=sys.stderr)
                return 2
    text = args.text
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            print(f"modalmesh analyze: cannot read {args.text_file}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}", file=sys.stderr)
            return 2
    with RouterClient(args.target, ca=args.ca, cert=args.cert, key=args.key, token=args.token, server_name=args.server_name, timeout=args.timeout) as client:
        try:
            answer = client.analyze(
                args.task,
                text=text,
                image=inputs.get("image", b""),
                audio=inputs.get("audio", b""),
                image_parameters=dict(args.image_param),
                speech=bool(args.speech_out),
                voice=args.voice,
                explain=args.explain,
                mode=args.mode,
                require=args.require,
                reports=[name for name, path in (("fhir", args.fhir), ("dicom_sr", args.sr), ("ticket", args.ticket)) if path],
            )
        except grpc.RpcError as exc:
            detail = "; ".join(f"{f}: {d}" for f, d in errors.field_violations(exc))
            print(f"modalmesh analyze: {exc.code().name}: {exc.details()}" + (f" [{detail}]" if detail else ""), file=sys.stderr)
            print(_unreachable_hint(exc, args.target), end="", file=sys.stderr)
            return 1
    speech = answer.pop("speech_wav")
    if args.speech_out and speech:
        with open(args.speech_out, "wb") as handle:
            handle.write(speech)
    written = answer.pop("reports")
    for name, path in (("fhir", args.fhir), ("dicom_sr", args.sr), ("ticket", args.ticket)):
        if path and name in written:
            Path(path).write_bytes(written[name])
            print(f"{name}: {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(format_answer(answer))
    if args.speech_out:
        print(f"spoken reply: {args.speech_out}" if speech else "no spoken reply (see speech_error)")
    return 0


def _unreachable_hint(exc, target: str) -> str:
    """How to get a router, when the call found none; '' otherwise."""
    import grpc

    if (
        exc.code() == grpc.StatusCode.UNAVAILABLE
        and "connect" in (exc.details() or "").lower()
        or exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        and (exc.details() or "") == "Deadline Exceeded"
    ):
        return f"  no answer from a router at {target}: start one with `modalmesh up` (or `modalmesh up --detach`), or point --router at one\n"
    return ""


def cmd_tasks(args: argparse.Namespace) -> int:
    import grpc

    from modalmesh.client import RouterClient
    from modalmesh.v1 import router_pb2

    def names(modalities) -> str:
        return "+".join(router_pb2.Modality.Name(m).removeprefix("MODALITY_").lower() for m in modalities) or "none"

    with RouterClient(args.target, ca=args.ca, cert=args.cert, key=args.key, token=args.token, server_name=args.server_name, timeout=args.timeout) as client:
        try:
            tasks = client.list_tasks()
        except grpc.RpcError as exc:
            print(f"modalmesh tasks: {exc.code().name}: {exc.details()}", file=sys.stderr)
            print(_unreachable_hint(exc, args.target), end="", file=sys.stderr)
            return 1
    for task in tasks:
        print(f"{task.name} ({task.model_version}): {task.description}")
        print(f"  labels: {', '.join(task.labels)}; inputs: {names(task.accepted_modalities)}")
        print(
            f"  routing: tau {task.tau:.2f}, gamma {task.gamma:.2f}, side outputs with the features: {names(task.eager_side_outputs)}, "
            f"read quickly first: {names(task.quick_side_outputs)}"
        )
        print(f"  text model: {task.text_model or 'any whose features fit'}")
        alone = "".join(f", {t:.2f} from the {m} alone" for m, t in sorted(task.abstain_below_alone.items()))
        elsewhere = f"; about other matters: out-of-scope score above {task.out_of_scope_above:.2f}" if task.out_of_scope_above else ""
        print(
            f"  withheld: below confidence {task.abstain_below:.2f}{alone}; read from one input alone and labelled otherwise by its "
            f"nearest training inputs: {names(task.neighbour_checked)}{elsewhere}"
        )
        for version in task.versions:  # a router serving a model repository
            said = f" ({version.reason})" if version.reason else f" {version.model_version}"
            print(f"  version {version.version}: {version.state}{' (serving)' if version.serving else ''}{said}")
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the service reports SERVING (for container health checks)."""
    import os

    from modalmesh.common.client import connect, wait_for_serving
    from modalmesh.common.config import load_config

    service = args.service or os.environ.get("MODALMESH_SERVICE", "router")
    config = load_config(service)
    port = config.health_port or config.port  # the plaintext probe port when TLS is on
    target = args.target or f"127.0.0.1:{port}"
    try:
        with connect(target) as channel:
            wait_for_serving(channel, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"modalmesh health: {service} at {target}: {exc}", file=sys.stderr)
        return 1
    return 0


def _data_errors(command):
    """A problem with the user's data or files (a manifest line, a missing file, weights that
    do not fit the encoders) is one line on stderr and exit status 2, not a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError) as exc:
            said = " ".join(name for name in (getattr(args, "command", ""), getattr(args, "data_command", ""), getattr(args, "task_command", "")) if name)
            print(f"modalmesh {said or command.__name__.removeprefix('cmd_').replace('_', ' ')}: {exc}", file=sys.stderr)
            return 2

    return run


@_data_errors
def cmd_data_generate(args: argparse.Namespace) -> int:
    from modalmesh.data.generate import generate

    manifests = generate(args.task, args.out, args.n, args.seed)
    for split, path in manifests.items():
        print(f"{split:5s} {path} ({sum(1 for _ in open(path))} items)")
    return 0


@_data_errors
def cmd_data_heldout(args: argparse.Namespace) -> int:
    from modalmesh.data.heldout import heldout

    try:
        path = heldout(args.task, args.out, args.n, args.seed, renderer=args.renderer)
    except RuntimeError as exc:  # scikit-image or Chromium missing
        raise ValueError(str(exc)) from None
    records = [json.loads(line) for line in open(path)]
    inside = sum(r["scope"] == "in" for r in records)
    print(f"{path} ({inside} in scope, {len(records) - inside} out of scope); evaluate with modalmesh eval --task {args.task} --data {path} --report <folder>")
    return 0


@_data_errors
def cmd_data_lm(args: argparse.Namespace) -> int:
    from modalmesh.audio.lm import build, sentences_from_manifests

    model = build(sentences_from_manifests(args.data, tuple(args.field or ["text"])))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(model.arpa)
    print(f"wrote {out}: {model.vocabulary} words, {model.bigrams} word pairs, from {model.sentences} sentences")
    if model.dropped:
        shown = ", ".join(model.dropped[:12]) + (" ..." if len(model.dropped) > 12 else "")
        print(f"left out {len(model.dropped)} words the pronunciation dictionary does not know: {shown}")
    print(f"use it: modalmesh serve audio --asr-lm {out}   (or MODALMESH_AUDIO_ASR_LM={out})")
    return 0


def _task_choice(parser: argparse.ArgumentParser, file_help: str) -> None:
    """--task (a built-in) or --task-file (a task of your own), one of them required; read with _task_arg."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", choices=BUILT_IN_TASKS, help="a built-in task")
    which.add_argument("--task-file", metavar="FILE", help=file_help)


def _task_arg(args: argparse.Namespace):
    """--task's name, or the TaskSpec of --task-file."""
    if not args.task_file:
        return args.task
    from modalmesh.router.task_file import load_task_file

    return load_task_file(args.task_file)


def _keep_task_file(args: argparse.Namespace, task) -> None:
    """A task file's task published to a repository: the repository keeps the task file beside its versions."""
    if not (args.task_file and args.repository):
        return
    from modalmesh.router.task_file import FILE_NAME

    kept = Path(args.repository) / task.name / FILE_NAME
    given = Path(args.task_file).read_bytes()
    if kept.is_file() and kept.read_bytes() != given:
        raise ValueError(f"{kept} differs from {args.task_file}: a repository's versions share one task file; edit it there, or train another task name")
    kept.parent.mkdir(parents=True, exist_ok=True)
    if not kept.is_file():
        kept.write_bytes(given)


@_data_errors
def cmd_train(args: argparse.Namespace) -> int:
    from modalmesh.router.train import train

    task = _task_arg(args)
    _keep_task_file(args, task)
    summary = train(
        task,
        args.data,
        args.out or "",
        epochs=args.epochs,
        seed=args.seed,
        cache_dir=args.cache,
        feature_noise=args.feature_noise,
        members=args.members,
        finetune_top=args.finetune_top,
        repository=args.repository or "",
        **{name: value for name, value in (("width", args.width), ("max_tokens", args.max_tokens), ("source_tokens", args.source_tokens)) if value is not None},
    )
    print(json.dumps(summary, indent=2))
    print(f"wrote {summary['out']}/model.safetensors, config.json, MODEL_CARD.md")
    return 0


def _rewrite_weights(args: argparse.Namespace, what: str, run: Callable[..., dict], said: Callable[[dict], list[str]]) -> int:
    """What tune-routing, fit-scope and fit-status-line share: `run(task, data, weights, cache, write=,
    repository=)` for a trained task's folder; its result printed as JSON, then the lines
    `said(result)`, then where it was written."""
    task = _task_arg(args)
    if args.task_file and not args.weights:
        raise ValueError(f"--task-file needs --weights: the folder of the version to {what} (REPOSITORY/<task>/<N>)")
    if args.write and not args.weights:
        raise ValueError("--write needs --weights: the folder to rewrite (the installed weights are not rewritten unasked)")
    _keep_task_file(args, task)
    result = run(task, args.data, args.weights, args.cache, write=args.write, repository=args.repository or "")
    print(json.dumps(result, indent=2))
    print("\n".join(said(result)))
    print(f"wrote {result['written']}" if result["written"] else "nothing written: add --write (this folder) or --repository DIR (a new version)")
    return 0


@_data_errors
def cmd_fit_scope(args: argparse.Namespace) -> int:
    from modalmesh.router.train import fit_scope_again

    def said(result: dict) -> list[str]:
        check = result["scope_check"]
        return [
            f"scope check: {result['train_out_of_scope']} out-of-scope training inputs; on validation it withholds {check['val_out_caught']} "
            f"of {check['val_out']} out of scope and none of {check['val_in']} in scope (threshold {check['threshold']:.3f})"
        ]

    return _rewrite_weights(args, "fit it for", fit_scope_again, said)


@_data_errors
def cmd_fit_status_line(args: argparse.Namespace) -> int:
    from modalmesh.router.train import fit_status_line_again

    def said(result: dict) -> list[str]:
        pointer = result["status_line"]
        return [
            f"status-line pointer: right on {pointer['val_accuracy']:.1%} of {pointer['val_screens']} validation screens "
            f"({pointer['train_screens']} training screens)"
        ]

    return _rewrite_weights(args, "fit it for", fit_status_line_again, said)


@_data_errors
def cmd_tune_routing(args: argparse.Namespace) -> int:
    from modalmesh.router.train import tune_routing_again

    def said(result: dict) -> list[str]:
        return [
            f"{when:6s}  tau {r['tau']:g}, gamma {r['gamma']:g}, eager {'+'.join(r['eager']) or 'none'}, quick {'+'.join(r.get('quick') or []) or 'none'}: "
            f"accuracy {r['accuracy']:.3f}, "
            f"mean latency {r['mean_latency_ms']:.0f} ms (simulated), {r['early']} of {result['items']} answered early, {r['early_wrong']} of those wrong"
            for when, r in ((w, result[w]) for w in ("before", "after"))
        ]

    return _rewrite_weights(args, "tune", tune_routing_again, said)


@_data_errors
def cmd_eval(args: argparse.Namespace) -> int:
    from modalmesh.router.evaluate import evaluate

    if args.task_file and not args.weights:
        raise ValueError("--task-file needs --weights: the folder of the version to evaluate (REPOSITORY/<task>/<N>)")
    results = evaluate(_task_arg(args), args.data, args.report, weights=args.weights, cache_dir=args.cache)
    print((Path(args.report) / "report.md").read_text())
    print(f"wrote {args.report}/report.json, report.md, predictions.jsonl, reliability.png, confusion.png, gate_by_label.png")
    return 0 if results else 1


@_data_errors
def cmd_task_init(args: argparse.Namespace) -> int:
    from modalmesh.router.task_file import FILE_NAME, load_task_file, template_file

    folder = Path(args.out or args.name)
    target = folder / FILE_NAME
    if target.exists():
        raise FileExistsError(f"{target} exists; edit it, or name another folder with --out")
    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(template_file(args.name, labels, modalities), indent=2) + "\n")
    try:
        load_task_file(target)  # what was asked for is checked as a written file is
    except ValueError:
        target.unlink()
        raise
    example = folder / "train.example.jsonl"
    fields = {"text": "what the customer or the record says"} if "text" in modalities else {}
    fields.update({"image": "files/{n:04d}.png"} if "image" in modalities else {})
    fields.update({"audio": "files/{n:04d}.wav"} if "audio" in modalities else {})
    lines = [
        json.dumps({"id": f"train-{n:05d}", "task": args.name, **{k: v.format(n=n) for k, v in fields.items()}, "label": label})
        for n, label in enumerate(labels, start=1)
    ]
    example.write_text("\n".join(lines) + "\n")
    print(f"wrote {target} and {example} (one line per item; val.jsonl beside train.jsonl calibrates)")
    print(f"next: edit them, then `modalmesh task check {target}` and `modalmesh train --task-file {target} --data train.jsonl --repository models`")
    return 0


def cmd_task_check(args: argparse.Namespace) -> int:
    from modalmesh.router.task_file import TaskFileError, load_task_file

    try:
        spec = load_task_file(args.file)
    except TaskFileError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    spoken = f" (audio: {spec.speech}; audio without speech is not read)" if spec.speech else ""
    print(f"{args.file}: task {spec.name}: {len(spec.labels)} labels ({', '.join(spec.labels)}); reads {'+'.join(spec.modalities)}{spoken}; ok")
    return 0


@_data_errors
def cmd_certs(args: argparse.Namespace) -> int:
    from modalmesh.common.security import make_dev_certificates

    written = make_dev_certificates(args.out, days=args.days, replace=args.replace)
    for name, path in written.items():
        print(f"{name:8s} {path}")
    print("development certificates only: keep ca-key.pem out of production")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modalmesh.demo import run_demo

    return run_demo(out_dir=Path(args.out), mode=args.mode)


def cmd_up(args: argparse.Namespace) -> int:
    from modalmesh.up import run_up

    ports = {name: getattr(args, f"{name}_port") for name in ("router", "text", "vision", "audio")}
    metrics = {name: getattr(args, f"{name}_metrics_port") for name in ("router", "text", "vision", "audio")}
    return run_up(ports, args.host, args.detach, args.timeout, metrics, http_port=args.http_port, model_repository=args.model_repository)


def cmd_down(args: argparse.Namespace) -> int:
    from modalmesh.up import run_down

    return run_down()


def _key_value(text: str) -> tuple[str, str]:
    """An argparse type: KEY=VALUE (argparse reports anything else in one line)."""
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _source_tokens(text: str) -> dict[str, int]:
    """An argparse type: `source=N[,source=N...]`, per-source token limits."""
    from modalmesh.router.fusion import SOURCES

    limits = {}
    for part in text.split(","):
        source, _, count = part.strip().partition("=")
        if source not in SOURCES:
            raise argparse.ArgumentTypeError(f"{source!r} is not one of {', '.join(SOURCES)} (write source=N, e.g. audio=16)")
        try:
            limits[source] = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{source}: {count!r} is not a number of tokens (write source=N, e.g. audio=16)") from None
        if limits[source] < 1:
            raise argparse.ArgumentTypeError(f"{source}: must be at least 1 token, not {limits[source]}")
    return limits


def _at_least(minimum: int):
    """An argparse type: an integer no smaller than `minimum` (`--n 0` would write an empty
    training split)."""

    def parse(text: str) -> int:
        value = int(text)  # not a number: argparse reports "invalid int value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    parse.__name__ = "int"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modalmesh", description="ModalMesh: a multimodal inference mesh over gRPC")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service until SIGTERM")
    serve.add_argument("service", nargs="?", default="", help=f"one of {', '.join(SERVICES)} (default: $MODALMESH_SERVICE)")
    add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    encode = commands.add_parser("encode", help="send one input to an encoder and print its features")
    encode.add_argument("modality", choices=("text", "image", "audio"))
    encode.add_argument("input", help="the text (for text) or a file path")
    encode.add_argument("--json", action="store_true", help="print JSON (shapes, datatypes, pooled vector)")
    encode.add_argument("--datatype", default="", choices=("", "FP32", "FP16", "BF16"), help="feature datatype")
    encode.add_argument("--media-type", default="", help="override the media type guessed from the file")
    encode.add_argument("--ocr", action="store_true", help="image: also read the text on it")
    encode.add_argument("--lesions", action="store_true", help="image: also measure lung lesions on a CT slice (in HU)")
    encode.add_argument("--transcript", action="store_true", help="audio: also transcribe it")
    encode.add_argument(
        "--param",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="header parameter, e.g. sample_rate_hz=16000 for raw PCM, frame=3, window=lung",
    )
    _client_flags(encode, "")
    encode.set_defaults(func=cmd_encode)

    say = commands.add_parser("say", help="synthesize speech through the audio service")
    say.add_argument("text")
    say.add_argument("--out", required=True, help="output file (.wav, or .pcm for raw 16-bit PCM)")
    say.add_argument("--voice", default="en-us")
    say.add_argument("--rate", type=int, default=0, help="words per minute (80-450; 0: 175)")
    say.add_argument("--sample-rate", type=int, default=0, help="Hz (8000-48000; 0: 22050)")
    _client_flags(say, "127.0.0.1:50053")
    say.set_defaults(func=cmd_say)

    analyze = commands.add_parser("analyze", help="ask the router for an answer")
    analyze.add_argument("--task", required=True, help=f"{' or '.join(BUILT_IN_TASKS)}, a task of the router's model repository, or TASK@VERSION")
    analyze.add_argument("--text", default="", help="the message or patient record")
    analyze.add_argument("--text-file", default="", help="read the text from a file")
    analyze.add_argument("--image", default="", help="screenshot or scan (PNG, JPEG, DICOM...)")
    analyze.add_argument("--image-param", action="append", default=[], type=_key_value, metavar="KEY=VALUE", help="e.g. window=lung")
    analyze.add_argument("--audio", default="", help="voice message or dictated note (WAV, FLAC, OGG)")
    analyze.add_argument("--speech-out", default="", help="write the spoken reply to this WAV file")
    analyze.add_argument("--fhir", default="", metavar="FILE", help="medical_report: write a FHIR R4 DiagnosticReport (JSON) here")
    analyze.add_argument("--sr", default="", metavar="FILE", help="medical_report: write a DICOM Comprehensive SR here (needs the scan as DICOM)")
    analyze.add_argument("--ticket", default="", metavar="FILE", help="screenshot_triage: write a help-desk ticket (JSON) here")
    analyze.add_argument("--voice", default="")
    analyze.add_argument("--mode", choices=("routed", "full"), default="routed")
    analyze.add_argument("--require", action="append", default=[], choices=("text", "image", "audio"))
    analyze.add_argument("--explain", action="store_true", help="include attention mass per modality pair")
    analyze.add_argument("--json", action="store_true")
    _client_flags(analyze, "127.0.0.1:50050")
    analyze.add_argument("--router", dest="target", default=argparse.SUPPRESS, help="router address (same as --target)")
    analyze.set_defaults(func=cmd_analyze)

    tasks = commands.add_parser("tasks", help="list the router's tasks, labels, model versions and routing")
    _client_flags(tasks, "127.0.0.1:50050")
    tasks.add_argument("--router", dest="target", default=argparse.SUPPRESS, help="router address (same as --target)")
    tasks.set_defaults(func=cmd_tasks)

    data = commands.add_parser("data", help="datasets for the built-in tasks")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    for name, command, what, n, n_help in (
        (
            "generate",
            cmd_data_generate,
            "write a synthetic dataset (train/val/test manifests + files)",
            240,
            "training items (val and test get n/4 each, at least 12)",
        ),
        (
            "heldout",
            cmd_data_heldout,
            "write a held-out set built unlike the training data, with out-of-scope inputs",
            120,
            "in-scope items (and n/2 out of scope)",
        ),
    ):
        dataset = data_commands.add_parser(name, help=what)
        generated = BUILT_IN_TASKS + ("qc_line",)  # qc_line: a task file's task
        dataset.add_argument("--task", required=True, choices=generated)
        dataset.add_argument("--out", required=True)
        dataset.add_argument("--n", type=_at_least(1), default=n, help=n_help)
        dataset.add_argument("--seed", type=int, default=0)
        if name == "heldout":
            dataset.add_argument(
                "--renderer",
                choices=("mail", "browser"),
                default="mail",
                help="screenshot_triage's screens: an e-mail client (Pillow) or web and app pages drawn by headless Chromium",
            )
        dataset.set_defaults(func=command)
    lm = data_commands.add_parser("lm", help="build a transcript language model (ARPA) from manifests' texts, for the audio service's --asr-lm")
    lm.add_argument("--data", required=True, action="append", help="a manifest (JSONL); its records' `text` are the sentences (repeatable)")
    lm.add_argument(
        "--field",
        action="append",
        help="a record field holding sentences, a dotted path for nested ones (default: text; repeatable, e.g. --field text --field extra.voice)",
    )
    lm.add_argument("--out", required=True, help="the .arpa file to write")
    lm.set_defaults(func=cmd_data_lm)

    train = commands.add_parser("train", help="train a task's fusion model on a manifest (encoders frozen, features cached)")
    _task_choice(train, "a task of your own: its task.json (`modalmesh task init`)")
    train.add_argument("--data", required=True, help="train.jsonl (val.jsonl beside it: calibration, size-rule sigma, routing thresholds)")
    where = train.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="folder for model.safetensors, config.json, MODEL_CARD.md (replaced whole)")
    where.add_argument(
        "--repository",
        metavar="DIR",
        help="a model repository: write the task's next version, DIR/<task>/<N>/ (never over an existing one); "
        "a router serving DIR (--model-repository) loads it without a restart",
    )
    train.add_argument("--epochs", type=_at_least(1), default=60)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cache", default="", help="feature cache folder (default: .features beside the manifest)")
    train.add_argument(
        "--feature-noise",
        type=float,
        default=None,
        help="Gaussian noise on the frozen features while training, relative to each row's RMS "
        "(default: the task's, 0.5 for screenshot_triage, 0 for medical_report)",
    )
    train.add_argument(
        "--members",
        type=_at_least(1),
        default=None,
        help="train an ensemble of this many models (seeds seed, seed+1, ...) whose answers are averaged "
        "(default: the task's, 3 for screenshot_triage, 1 for medical_report)",
    )
    train.add_argument(
        "--width",
        type=_at_least(1),
        default=None,
        help="the fusion model's width, a multiple of its 4 attention heads (default 128); smaller decides faster "
        "and answers differently: docs/deployment.md, Router",
    )
    train.add_argument(
        "--max-tokens",
        type=_at_least(1),
        default=None,
        help="each input's features are average-pooled to at most this many tokens (default 64); fewer decide faster",
    )
    train.add_argument(
        "--source-tokens",
        type=_source_tokens,
        default=None,
        metavar="SOURCE=N,...",
        help="lower limits for some sources, e.g. image=16,audio=16 (default: none)",
    )
    train.add_argument(
        "--finetune-top",
        type=_at_least(0),
        default=0,
        metavar="K",
        help="also train the text encoder's top K layers (BERT family; needs --members 1); the text model "
        "is written to OUT/text-model: serve it with MODALMESH_TEXT_MODEL=OUT/text-model",
    )
    train.set_defaults(func=cmd_train)

    evaluation = commands.add_parser("eval", help="evaluate a task's model on a manifest; writes JSON, Markdown and plots")
    _task_choice(evaluation, "a task of your own: its task.json (then --weights names its folder)")
    evaluation.add_argument("--data", required=True, help="test.jsonl")
    evaluation.add_argument("--report", required=True, help="folder for the report")
    evaluation.add_argument("--weights", default="", help="task folder from `modalmesh train` (default: the shipped weights)")
    evaluation.add_argument("--cache", default="")
    evaluation.set_defaults(func=cmd_eval)

    def weights_command(name: str, help: str, data: str, holding: str, func) -> None:
        """tune-routing, fit-scope and fit-status-line: a trained task's folder, recomputed, written as asked."""
        command = commands.add_parser(name, help=help)
        _task_choice(command, "a task of your own: its task.json (then --weights names its folder)")
        command.add_argument("--data", required=True, help=data)
        command.add_argument("--weights", default="", help="task folder from `modalmesh train` (default: the shipped weights)")
        command.add_argument("--cache", default="", help="feature cache folder (default: .features beside the manifest)")
        written = command.add_mutually_exclusive_group()
        written.add_argument("--write", action="store_true", help=f"replace the folder with a copy holding {holding}")
        written.add_argument(
            "--repository", metavar="DIR", help="write the copy as the task's next version, DIR/<task>/<N>/; a router serving DIR loads it without a restart"
        )
        command.set_defaults(func=func)

    weights_command(
        "tune-routing",
        "choose a trained model's routing again on validation data (early answers wrong at most 3%% of the time); prints before and after",
        "val.jsonl: the validation manifest",
        "the new routing",
        cmd_tune_routing,
    )
    weights_command(
        "fit-scope",
        "fit a trained model's scope check (it withholds inputs about other matters) on the manifest's out-of-scope records; prints what validation says",
        'train.jsonl with out-of-scope records ("scope": "out"); val.jsonl beside it chooses the threshold',
        "the scope check",
        cmd_fit_scope,
    )
    weights_command(
        "fit-status-line",
        "fit a trained model's status-line pointer (which screen paragraph is the status message) on the manifest's screens; the fusion model is kept",
        "train.jsonl whose records say which message each screen shows (extra.screen); val.jsonl beside it checks and calibrates it",
        "the pointer",
        cmd_fit_status_line,
    )

    task = commands.add_parser("task", help="a task of your own: write a task file, check one")
    task_commands = task.add_subparsers(dest="task_command", required=True)
    init = task_commands.add_parser("init", help="write a task file and an example manifest to edit")
    init.add_argument("name", help="the task's name: lower-case letters, digits and _")
    init.add_argument("--labels", required=True, help="comma-separated, two or more: ok,surface_defect,bearing_noise")
    init.add_argument("--modalities", required=True, help="comma-separated from text, image, audio")
    init.add_argument("--out", default="", help="folder to write task.json into (default: NAME)")
    init.set_defaults(func=cmd_task_init)
    check = task_commands.add_parser("check", help="validate a task file; exit 2 with every problem listed")
    check.add_argument("file")
    check.set_defaults(func=cmd_task_check)

    health = commands.add_parser("health", help="exit 0 if a service is SERVING (container health checks)")
    health.add_argument("service", nargs="?", default="", help="default: $MODALMESH_SERVICE, else router")
    health.add_argument("--target", default="", help="address (default 127.0.0.1 and the service's port)")
    health.add_argument("--timeout", type=float, default=3.0)
    health.set_defaults(func=cmd_health)

    certs = commands.add_parser("certs", help="write a development CA and service certificates")
    certs.add_argument("--out", default="certs", help="folder to write PEM files into")
    certs.add_argument("--days", type=_at_least(1), default=365)
    certs.add_argument("--replace", action="store_true", help="replace a CA and certificates already in --out (those the old CA issued stop being trusted)")
    certs.set_defaults(func=cmd_certs)

    demo = commands.add_parser("demo", help="start the mesh on the bundled models and run example requests")
    demo.add_argument("--out", default="demo-output", help="folder for the spoken replies")
    demo.add_argument("--mode", choices=("routed", "full"), default="full", help="triage request mode (full always reads the screen's error text)")
    demo.set_defaults(func=cmd_demo)

    up = commands.add_parser("up", help="run the four services as processes until Ctrl-C")
    up.add_argument("--host", default="127.0.0.1")
    for name, port in (("router", 50050), ("text", 50051), ("vision", 50052), ("audio", 50053)):
        up.add_argument(f"--{name}-port", type=int, default=port)
        up.add_argument(f"--{name}-metrics-port", type=int, default=-1, help="Prometheus port (default: the gRPC port - 41000; 0: none)")
    up.add_argument("--http-port", type=int, default=8000, help="the router's HTTP port (OIP v2 REST, /v1/analyze; 0: none)")
    up.add_argument("--model-repository", default="", metavar="DIR", help="serve this model repository's tasks and versions (default: the shipped weights)")
    up.add_argument("--detach", action="store_true", help="leave them running; stop with `modalmesh down`")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for health")
    up.set_defaults(func=cmd_up)

    down = commands.add_parser("down", help="stop a mesh started with `up --detach`")
    down.set_defaults(func=cmd_down)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
