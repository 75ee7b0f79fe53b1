"""Generate the Python code for protos/ into services/v1/ (imported as modalmesh.v1).

    python tools/gen_protos.py          # regenerate
    python tools/gen_protos.py --check  # exit 1 when the committed code is stale

The .proto files live under protos/modalmesh/v1/ and import each other as
"modalmesh/v1/x.proto", so protoc writes modules named modalmesh.v1.x_pb2. The
installed package `modalmesh` is the services/ folder, so those modules belong in
services/v1/. protos/inference/inference.proto (the Open Inference Protocol, whose
package is `inference` by specification) is generated into the same folder, its grpc
module importing it from there. One command, one place: nothing else writes generated
code.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
PROTO_DIRS = (PROTO_ROOT / "modalmesh" / "v1", PROTO_ROOT / "inference")
OUTPUT_DIR = REPO / "services" / "v1"
INIT_TEXT = '"""Generated from protos/ by tools/gen_protos.py. Do not edit."""\n'


def generate(into: Path) -> None:
    from grpc_tools import protoc  # dev dependency: grpcio-tools

    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as work:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={work}",
            f"--pyi_out={work}",
            f"--grpc_python_out={work}",
            *sorted(str(p) for folder in PROTO_DIRS for p in folder.glob("*.proto")),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        into.mkdir(parents=True, exist_ok=True)
        for folder in PROTO_DIRS:
            for produced in sorted((Path(work) / folder.relative_to(PROTO_ROOT)).iterdir()):
                text = produced.read_text().replace("from inference import inference_pb2", "from modalmesh.v1 import inference_pb2")
                (into / produced.name).write_text(text)
    (into / "__init__.py").write_text(INIT_TEXT)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        for old in OUTPUT_DIR.glob("*_pb2*.py*"):
            old.unlink()
        generate(OUTPUT_DIR)
        print(f"generated {len(list(OUTPUT_DIR.glob('*_pb2*.py*')))} files in {OUTPUT_DIR.relative_to(REPO)}")
        return 0
    with tempfile.TemporaryDirectory() as fresh:
        generate(Path(fresh))
        expected = sorted(p.name for p in Path(fresh).iterdir())
        committed = sorted(p.name for p in OUTPUT_DIR.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"})
        _, mismatch, errors = filecmp.cmpfiles(fresh, OUTPUT_DIR, expected, shallow=False)
        stale = sorted(set(mismatch) | set(errors) | (set(committed) ^ set(expected)))
    if stale:
        print("stale generated code (run: make protos): " + ", ".join(stale))
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
