"""The tensor codec: every datatype round-trips, bad payloads are refused with reasons."""

import numpy as np
import pytest
import torch

from modalmesh.common import codec
from modalmesh.v1 import tensor_pb2

NUMPY_CASES = {
    "FP32": np.float32,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "BOOL": np.bool_,
}


@pytest.mark.parametrize("datatype", sorted(NUMPY_CASES))
def test_numpy_round_trip_every_datatype(datatype):
    rng = np.random.default_rng(1)
    values = (rng.normal(size=(3, 5, 2)) * 40).astype(NUMPY_CASES[datatype])
    message = codec.encode(values)
    assert message.datatype == datatype
    assert list(message.shape) == [3, 5, 2]
    assert len(message.data) == values.nbytes
    decoded = codec.to_numpy(tensor_pb2.Tensor.FromString(message.SerializeToString()))
    assert decoded.dtype == values.dtype
    np.testing.assert_array_equal(decoded, values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool])
def test_torch_round_trip_every_datatype(dtype):
    torch.manual_seed(0)
    values = (torch.randn(4, 7) * 30).to(dtype)
    message = codec.encode(values)
    decoded = codec.to_torch(message)
    assert decoded.dtype == dtype
    assert torch.equal(decoded, values)


def test_bf16_numpy_decode_widens_exactly():
    values = torch.tensor([1.5, -2.25, 3.0e5, 0.0], dtype=torch.bfloat16)
    decoded = codec.to_numpy(codec.encode(values))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, values.float().numpy())


def test_bf16_from_numpy_rounds_as_torch_does():
    # A service that runs without torch (the text service on OpenVINO) sends BF16 from numpy:
    # the same bits torch's float32 -> bfloat16 gives, ties to even, overflow to infinity.
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            (rng.standard_normal(20_000) * 10.0 ** rng.integers(-30, 30, 20_000)).astype(np.float32),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, 1.00390625, 1.01171875, 1.0078125], dtype=np.float32),
        ]
    ).reshape(-1, 10)
    ours = np.frombuffer(codec.encode(values, "BF16").data, dtype="<u2")
    theirs = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).ravel()
    np.testing.assert_array_equal(ours, theirs)
    assert np.isnan(codec.to_numpy(codec.encode(np.array([np.nan, 1.0], dtype=np.float32), "BF16"))[0])


def test_encode_converts_to_requested_datatype():
    values = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    half = codec.encode(values, "FP16")
    assert half.datatype == "FP16" and len(half.data) == 24
    np.testing.assert_allclose(codec.to_numpy(half), values, atol=1e-3)
    brain = codec.encode(values, "BF16")
    assert brain.datatype == "BF16" and len(brain.data) == 24
    np.testing.assert_allclose(codec.to_numpy(brain), values, atol=1e-2)


def test_big_endian_and_non_contiguous_inputs_are_normalised():
    values = np.arange(12, dtype=">i4").reshape(3, 4).T  # big-endian, transposed view
    decoded = codec.to_numpy(codec.encode(values))
    np.testing.assert_array_equal(decoded, values)
    assert decoded.dtype == np.dtype("<i4")


def test_decode_is_a_zero_copy_view():
    message = codec.encode(np.arange(1000, dtype=np.float32))
    decoded = codec.to_numpy(message)
    assert not decoded.flags.writeable  # a view of the message's bytes, not a copy
    assert not decoded.flags.owndata


def test_empty_and_scalar_tensors():
    empty = codec.encode(np.zeros((0, 384), dtype=np.float16))
    assert codec.to_numpy(empty).shape == (0, 384)
    assert codec.to_torch(empty).shape == (0, 384)
    scalar = codec.encode(np.array(3.5, dtype=np.float32))
    assert list(scalar.shape) == [] and codec.to_numpy(scalar).item() == 3.5


@pytest.mark.parametrize(
    "message, complaint",
    [
        (tensor_pb2.Tensor(datatype="FP64", shape=[2], data=b"\0" * 16), "unknown datatype 'FP64'"),
        (tensor_pb2.Tensor(datatype="", shape=[1], data=b"\0" * 4), "unknown datatype ''"),
        (tensor_pb2.Tensor(datatype="FP32", shape=[2, 3], data=b"\0" * 20), "has 20 bytes but shape [2, 3] of FP32 needs 24"),
        (tensor_pb2.Tensor(datatype="INT64", shape=[-1, 2], data=b""), "negative dimension"),
        (tensor_pb2.Tensor(datatype="BOOL", shape=[4], data=b"\1\0\1"), "needs 4"),
    ],
)
def test_bad_tensors_are_refused_with_the_reason(message, complaint):
    for decode in (codec.to_numpy, codec.to_torch):
        with pytest.raises(codec.TensorError) as raised:
            decode(message, "features")
        assert complaint in str(raised.value)


def test_unencodable_values_are_refused():
    with pytest.raises(codec.TensorError, match="complex"):
        codec.encode(np.zeros(3, dtype=np.complex64))
    with pytest.raises(codec.TensorError, match="list"):
        codec.encode([1.0, 2.0])
