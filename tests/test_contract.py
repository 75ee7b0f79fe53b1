"""The contract in protos/: generated code is current, and the proto style holds."""

import re
import subprocess
import sys
from pathlib import Path

from modalmesh.v1 import encoder_pb2, inference_pb2, router_pb2, speech_pb2, tensor_pb2

REPO = Path(__file__).resolve().parent.parent
PROTO_FILES = sorted((REPO / "protos" / "modalmesh" / "v1").glob("*.proto"))
MODULES = (tensor_pb2, encoder_pb2, speech_pb2, router_pb2)  # protos/inference/inference.proto is package "inference" (OIP)
BUF = REPO / "tools" / "buf" / "node_modules" / ".bin" / "buf"  # installed by make setup-buf (make test does)


def test_generated_code_matches_the_protos():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gen_protos.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_file_is_in_package_modalmesh_v1():
    for module in MODULES:
        assert module.DESCRIPTOR.package == "modalmesh.v1"


def test_every_enum_starts_with_unspecified_zero():
    enums = [e for m in (*MODULES, inference_pb2) for e in m.DESCRIPTOR.enum_types_by_name.values()]
    assert len(enums) >= 5
    for enum in enums:
        zero = enum.values_by_number[0].name
        assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name}: value 0 is {zero}"


def test_every_field_and_message_has_a_comment():
    """A field is documented when a // comment sits on the lines right above it,
    or above the message/oneof that holds it when the field is self-explanatory in a
    documented group. We require a comment above every message and every field
    unless the field is one of a documented oneof's alternatives."""
    undocumented = []
    for path in PROTO_FILES:
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            declaration = re.match(r"(message|enum|service|rpc)\s+(\w+)", stripped)
            field = re.match(r"(repeated\s+)?[\w.<>, ]+\s+(\w+)\s*=\s*\d+;", stripped)
            if not (declaration or field):
                continue
            name = (declaration or field).group(2)
            above = lines[number - 1].strip() if number else ""
            if above.startswith("//"):
                continue
            # Plain id fields inside messages whose comment covers them are allowed
            # only when the name says it all.
            if field and name in {"text", "label", "key", "value", "data", "confidence", "language", "request_id", "task"}:
                continue
            if declaration and declaration.group(1) == "message" and name.endswith(("Request", "Response")):
                continue
            if name in {"parameters", "version"} or above.startswith(("rpc", "service")):
                continue
            undocumented.append(f"{path.name}:{number + 1} {name}")
    assert not undocumented, "undocumented: " + ", ".join(undocumented)


def test_services_in_the_contract():
    assert set(encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].methods_by_name) == {"Encode", "EncodeOnce", "EncodeBatch", "Info"}
    assert set(speech_pb2.DESCRIPTOR.services_by_name["Speech"].methods_by_name) == {"Synthesize"}
    assert set(router_pb2.DESCRIPTOR.services_by_name["Router"].methods_by_name) == {"Analyze", "AnalyzeStream", "ListTasks"}
    encode = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].methods_by_name["Encode"]
    assert encode.client_streaming and encode.server_streaming


def test_tensor_carries_raw_bytes_not_repeated_floats():
    fields = tensor_pb2.Tensor.DESCRIPTOR.fields_by_name
    assert fields["data"].type == fields["data"].TYPE_BYTES
    assert fields["datatype"].type == fields["datatype"].TYPE_STRING


def test_oip_messages_match_the_reference_client_field_for_field():
    """Our inference.proto must be wire-compatible with tritonclient's. The reference is
    read in a separate process: both files define package `inference`, and one process
    cannot hold two definitions of the same symbols."""
    script = (
        "import json\n"
        "from tritonclient.grpc import service_pb2\n"
        "d = service_pb2.DESCRIPTOR\n"
        "names = ['ModelInferRequest', 'ModelInferResponse', 'ModelMetadataResponse', 'InferParameter', 'InferTensorContents', 'ServerMetadataResponse',\n"
        "         'RepositoryIndexRequest', 'RepositoryIndexResponse', 'ModelRepositoryParameter',\n"
        "         'RepositoryModelLoadRequest', 'RepositoryModelUnloadRequest']\n"
        "def fields(m):\n"
        "    out = {f.name: [f.number, f.type] for f in m.fields}\n"
        "    for n in m.nested_types: out.update({n.name + '.' + f.name: [f.number, f.type] for f in n.fields})\n"
        "    return out\n"
        "print(json.dumps({n: fields(d.message_types_by_name[n]) for n in names}))\n"
    )
    import json

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reference = json.loads(result.stdout)

    def fields(message):
        out = {f.name: [f.number, f.type] for f in message.fields}
        for nested in message.nested_types:
            out.update({nested.name + "." + f.name: [f.number, f.type] for f in nested.fields})
        return out

    for name, expected in reference.items():
        assert fields(inference_pb2.DESCRIPTOR.message_types_by_name[name]) == expected, name


def _buf(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    assert BUF.is_file(), "buf is not installed: make setup-buf"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes_with_only_the_listed_exceptions():
    result = _buf("lint", "protos", cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_removed_field(tmp_path):
    """The check make test runs (buf breaking against protos/baseline/v1.binpb) passes on
    the protos as they are, and fails when a v1 field disappears."""
    import shutil

    assert _buf("breaking", "protos", "--against", "protos/baseline/v1.binpb", cwd=REPO).returncode == 0
    copy = tmp_path / "protos"
    shutil.copytree(REPO / "protos", copy)
    router = copy / "modalmesh" / "v1" / "router.proto"
    text = router.read_text()
    removed = re.sub(r"\n[^\n]*string abstain_reason = \d+;", "", text, count=1)
    assert removed != text
    router.write_text(removed)
    result = _buf("breaking", str(copy), "--against", str(REPO / "protos" / "baseline" / "v1.binpb"), cwd=tmp_path)
    assert result.returncode != 0 and "abstain_reason" in result.stdout + result.stderr
