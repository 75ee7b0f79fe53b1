"""Tensor codec: numpy arrays and torch tensors <-> the `modalmesh.v1.Tensor` message.

The wire form is (datatype, shape, raw little-endian row-major bytes). Decoding is
zero-copy: the array is a read-only view of the message's bytes. Every decode is
validated (known datatype, non-negative shape, byte count matches), and a bad tensor
raises `TensorError`, which the services turn into INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Sequence

import numpy as np

from modalmesh.v1 import tensor_pb2

if TYPE_CHECKING:
    import torch

# Open Inference Protocol name -> (numpy dtype, torch dtype name). BF16 has no numpy dtype;
# its bytes travel as uint16 and become torch.bfloat16 on the torch side. torch is imported
# only when a torch tensor is encoded or decoded: a client sending numpy starts without it.
_DATATYPES: dict[str, tuple[np.dtype, str]] = {
    "FP32": (np.dtype("<f4"), "float32"),
    "FP16": (np.dtype("<f2"), "float16"),
    "BF16": (np.dtype("<u2"), "bfloat16"),
    "INT8": (np.dtype("i1"), "int8"),
    "INT32": (np.dtype("<i4"), "int32"),
    "INT64": (np.dtype("<i8"), "int64"),
    "UINT8": (np.dtype("u1"), "uint8"),
    "BOOL": (np.dtype("?"), "bool"),
}
DATATYPES: tuple[str, ...] = tuple(_DATATYPES)
FLOAT_DATATYPES: tuple[str, ...] = ("FP32", "FP16", "BF16")

_NUMPY_TO_NAME = {numpy_dtype: name for name, (numpy_dtype, _) in _DATATYPES.items() if name != "BF16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, _DATATYPES[name][1])


def _is_torch(value) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


class TensorError(ValueError):
    """A tensor message that cannot be decoded, or a value that cannot be encoded."""


def itemsize(datatype: str) -> int:
    return _lookup(datatype)[0].itemsize


def _lookup(datatype: str) -> tuple[np.dtype, str]:
    try:
        return _DATATYPES[datatype]
    except KeyError:
        raise TensorError(f"unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}") from None


def encode(value: np.ndarray | torch.Tensor, datatype: str | None = None) -> tensor_pb2.Tensor:
    """Encode an array or tensor, optionally converting it to `datatype` first."""
    if not isinstance(value, np.ndarray) and _is_torch(value):
        return _encode_torch(value, datatype)
    if isinstance(value, np.ndarray):
        return _encode_numpy(value, datatype)
    raise TensorError(f"cannot encode {type(value).__name__}; expected numpy.ndarray or torch.Tensor")


def _encode_torch(value: torch.Tensor, datatype: str | None) -> tensor_pb2.Tensor:
    import torch

    if datatype is not None:
        _lookup(datatype)
        value = value.to(_torch_dtype(datatype))
    name = next((n for n in _DATATYPES if _torch_dtype(n) == value.dtype), None)
    if name is None:
        raise TensorError(f"torch dtype {value.dtype} has no wire datatype")
    value = value.detach().cpu().contiguous()
    if name == "BF16":
        raw = value.view(torch.int16).numpy().astype("<i2", copy=False).tobytes()
    else:
        raw = value.numpy().astype(_DATATYPES[name][0], copy=False).tobytes()
    return tensor_pb2.Tensor(datatype=name, shape=list(value.shape), data=raw)


def _encode_numpy(value: np.ndarray, datatype: str | None) -> tensor_pb2.Tensor:
    if datatype == "BF16":
        return tensor_pb2.Tensor(datatype="BF16", shape=list(value.shape), data=_bfloat16_bits(value).astype("<u2", copy=False).tobytes())
    if datatype is not None:
        target = _lookup(datatype)[0]
    else:
        target = value.dtype.newbyteorder("<")
        if target not in _NUMPY_TO_NAME:
            raise TensorError(f"numpy dtype {value.dtype} has no wire datatype")
        datatype = _NUMPY_TO_NAME[target]
    raw = np.ascontiguousarray(value, dtype=target).tobytes()
    return tensor_pb2.Tensor(datatype=datatype, shape=list(value.shape), data=raw)


def _bfloat16_bits(value: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16's bits (uint16), rounded to the nearest even as torch rounds;
    a NaN stays a (quiet) NaN."""
    bits = np.ascontiguousarray(value, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(value), np.uint16(0x7FC0), rounded)


def _checked_shape(message: tensor_pb2.Tensor, field: str) -> tuple[np.dtype, str, tuple[int, ...]]:
    numpy_dtype, torch_dtype = _lookup(message.datatype)
    shape = tuple(int(d) for d in message.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"{field}.shape {list(shape)} has a negative dimension")
    expected = math.prod(shape) * numpy_dtype.itemsize
    if expected != len(message.data):
        raise TensorError(f"{field}.data has {len(message.data)} bytes but shape {list(shape)} of {message.datatype} needs {expected}")
    return numpy_dtype, torch_dtype, shape


def to_numpy(message: tensor_pb2.Tensor, field: str = "tensor") -> np.ndarray:
    """Decode to a read-only numpy view of the message bytes (BF16 widens to float32)."""
    numpy_dtype, _, shape = _checked_shape(message, field)
    flat = np.frombuffer(message.data, dtype=numpy_dtype)
    if message.datatype == "BF16":
        return (flat.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return flat.reshape(shape)


def to_torch(message: tensor_pb2.Tensor, field: str = "tensor") -> torch.Tensor:
    """Decode to a torch tensor of the matching dtype (a copy: torch wants writable memory)."""
    import torch

    _, _, shape = _checked_shape(message, field)
    torch_dtype = _torch_dtype(message.datatype)
    if not message.data:
        return torch.empty(shape, dtype=torch_dtype)
    flat = torch.frombuffer(bytearray(message.data), dtype=torch_dtype)
    return flat.reshape(shape)


def shape_of(message: tensor_pb2.Tensor) -> list[int]:
    return [int(d) for d in message.shape]


def describe(message: tensor_pb2.Tensor) -> str:
    """'FP16[12, 384]': what a log line or the CLI prints for a tensor."""
    return f"{message.datatype}{shape_of(message)}"


def require_float_datatype(datatype: str, allowed: Sequence[str] = FLOAT_DATATYPES) -> str:
    if datatype not in allowed:
        raise TensorError(f"output datatype {datatype!r} is not one of {', '.join(allowed)}")
    return datatype
