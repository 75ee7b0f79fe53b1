"""The `modalmesh` command line.

    modalmesh serve text [--port N] [...config flags]
    modalmesh encode text "a sentence" [--json] [--target HOST:PORT]
    modalmesh certs --out DIR
    modalmesh demo
"""

from __future__ import annotations

import argparse
import json
import sys

from modalmesh.common.config import add_config_flags, load_config

SERVICES = ("text",)  # vision, audio and router arrive with their issues


def _service(name: str, config):
    if name == "text":
        from modalmesh.text.server import TextService

        return TextService(config)
    raise SystemExit(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")


def cmd_serve(args: argparse.Namespace) -> int:
    from modalmesh.common.runtime import serve_forever

    try:
        config = load_config(args.service, args)
    except ValueError as exc:
        print(f"modalmesh serve: {exc}", file=sys.stderr)
        return 2
    return serve_forever(config, _service(args.service, config))


def _client_flags(parser: argparse.ArgumentParser, default_target: str) -> None:
    parser.add_argument("--target", default=default_target, help=f"service address (default {default_target})")
    parser.add_argument("--ca", default="", help="PEM CA to trust (turns TLS on)")
    parser.add_argument("--cert", default="", help="client certificate for mTLS")
    parser.add_argument("--key", default="", help="client key for mTLS")
    parser.add_argument("--token", default="", help="bearer token")
    parser.add_argument("--server-name", default="", help="name to check in the server certificate")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline in seconds")


def _channel(args: argparse.Namespace):
    from modalmesh.common.client import connect

    return connect(args.target, ca=args.ca, cert=args.cert, key=args.key, token=args.token, server_name=args.server_name)


def cmd_encode(args: argparse.Namespace) -> int:
    import grpc

    from modalmesh.common import codec, errors
    from modalmesh.common.client import EncoderClient

    if args.modality != "text":
        print(f"modalmesh encode: {args.modality} arrives with the vision/audio services", file=sys.stderr)
        return 2
    with _channel(args) as channel:
        try:
            result = EncoderClient(channel).encode_text(args.input, output_datatype=args.datatype, timeout=args.timeout)
        except grpc.RpcError as exc:
            detail = "; ".join(f"{f}: {d}" for f, d in errors.field_violations(exc))
            print(f"modalmesh encode: {exc.code().name}: {exc.details()}" + (f" [{detail}]" if detail else ""), file=sys.stderr)
            return 1
    pooled = result.pooled_message
    summary = {
        "request_id": result.request_id,
        "model_version": pooled.model_version,
        "sequence": None
        if result.sequence is None
        else {"datatype": result.chunks[0].sequence.values.datatype, "shape": list(result.sequence.shape)},
        "pooled": {
            "datatype": pooled.vector.datatype,
            "shape": codec.shape_of(pooled.vector),
            "values": [round(float(v), 6) for v in result.pooled],
        },
        "sequence_length": pooled.sequence_length,
        "truncated": pooled.truncated,
        "timings_ms": dict(pooled.timings_ms),
    }
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
    return 0


def cmd_certs(args: argparse.Namespace) -> int:
    from modalmesh.common.security import make_dev_certificates

    written = make_dev_certificates(args.out, days=args.days)
    for name, path in written.items():
        print(f"{name:8s} {path}")
    print("development certificates only: keep ca-key.pem out of production")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from modalmesh.demo import run_demo

    return run_demo(port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modalmesh", description="ModalMesh: a multimodal inference mesh over gRPC")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service until SIGTERM")
    serve.add_argument("service", choices=SERVICES)
    add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    encode = commands.add_parser("encode", help="send one input to an encoder and print its features")
    encode.add_argument("modality", choices=("text", "image", "audio"))
    encode.add_argument("input", help="the text (for text) or a file path")
    encode.add_argument("--json", action="store_true", help="print JSON (shapes, datatypes, pooled vector)")
    encode.add_argument("--datatype", default="", choices=("", "FP32", "FP16", "BF16"), help="feature datatype")
    _client_flags(encode, "127.0.0.1:50051")
    encode.set_defaults(func=cmd_encode)

    certs = commands.add_parser("certs", help="write a development CA and service certificates")
    certs.add_argument("--out", default="certs", help="folder to write PEM files into")
    certs.add_argument("--days", type=int, default=365)
    certs.set_defaults(func=cmd_certs)

    demo = commands.add_parser("demo", help="start the mesh on the bundled models and run example requests")
    demo.add_argument("--port", type=int, default=0, help="text service port (0: any free port)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
