from modalmesh.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeatureKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_KIND_UNSPECIFIED: _ClassVar[FeatureKind]
    FEATURE_KIND_TOKENS: _ClassVar[FeatureKind]
    FEATURE_KIND_PATCHES: _ClassVar[FeatureKind]
    FEATURE_KIND_FRAMES: _ClassVar[FeatureKind]
FEATURE_KIND_UNSPECIFIED: FeatureKind
FEATURE_KIND_TOKENS: FeatureKind
FEATURE_KIND_PATCHES: FeatureKind
FEATURE_KIND_FRAMES: FeatureKind

class EncodeRequest(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: EncodeHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[EncodeHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class EncodeOnceRequest(_message.Message):
    __slots__ = ("header", "payload")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    header: EncodeHeader
    payload: bytes
    def __init__(self, header: _Optional[_Union[EncodeHeader, _Mapping]] = ..., payload: _Optional[bytes] = ...) -> None: ...

class EncodeOnceResponse(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[FeatureChunk]
    def __init__(self, chunks: _Optional[_Iterable[_Union[FeatureChunk, _Mapping]]] = ...) -> None: ...

class EncodeBatchRequest(_message.Message):
    __slots__ = ("inputs",)
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[EncodeOnceRequest]
    def __init__(self, inputs: _Optional[_Iterable[_Union[EncodeOnceRequest, _Mapping]]] = ...) -> None: ...

class EncodeBatchResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[EncodeOnceResponse]
    def __init__(self, outputs: _Optional[_Iterable[_Union[EncodeOnceResponse, _Mapping]]] = ...) -> None: ...

class EncodeHeader(_message.Message):
    __slots__ = ("request_id", "media_type", "options", "output_datatype", "pooled_only", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATATYPE_FIELD_NUMBER: _ClassVar[int]
    POOLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    media_type: str
    options: _containers.RepeatedScalarFieldContainer[str]
    output_datatype: str
    pooled_only: bool
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, request_id: _Optional[str] = ..., media_type: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., output_datatype: _Optional[str] = ..., pooled_only: _Optional[bool] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FeatureChunk(_message.Message):
    __slots__ = ("request_id", "sequence", "side", "pooled")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    POOLED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sequence: SequenceFeatures
    side: SideOutputs
    pooled: PooledFeatures
    def __init__(self, request_id: _Optional[str] = ..., sequence: _Optional[_Union[SequenceFeatures, _Mapping]] = ..., side: _Optional[_Union[SideOutputs, _Mapping]] = ..., pooled: _Optional[_Union[PooledFeatures, _Mapping]] = ...) -> None: ...

class SequenceFeatures(_message.Message):
    __slots__ = ("kind", "offset", "values")
    KIND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    kind: FeatureKind
    offset: int
    values: _tensor_pb2.Tensor
    def __init__(self, kind: _Optional[_Union[FeatureKind, str]] = ..., offset: _Optional[int] = ..., values: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class PooledFeatures(_message.Message):
    __slots__ = ("vector", "sequence_length", "truncated", "timings_ms", "model_version", "characters_read")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHARACTERS_READ_FIELD_NUMBER: _ClassVar[int]
    vector: _tensor_pb2.Tensor
    sequence_length: int
    truncated: bool
    timings_ms: _containers.ScalarMap[str, float]
    model_version: str
    characters_read: int
    def __init__(self, vector: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., sequence_length: _Optional[int] = ..., truncated: _Optional[bool] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ..., characters_read: _Optional[int] = ...) -> None: ...

class TextSpan(_message.Message):
    __slots__ = ("text", "confidence", "box")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    text: str
    confidence: float
    box: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, text: _Optional[str] = ..., confidence: _Optional[float] = ..., box: _Optional[_Iterable[float]] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "confidence", "language")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    text: str
    confidence: float
    language: str
    def __init__(self, text: _Optional[str] = ..., confidence: _Optional[float] = ..., language: _Optional[str] = ...) -> None: ...

class SideOutputs(_message.Message):
    __slots__ = ("text_spans", "transcript", "tags")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_SPANS_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    text_spans: _containers.RepeatedCompositeFieldContainer[TextSpan]
    transcript: Transcript
    tags: _containers.ScalarMap[str, str]
    def __init__(self, text_spans: _Optional[_Iterable[_Union[TextSpan, _Mapping]]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputLimits(_message.Message):
    __slots__ = ("max_input_bytes", "max_tokens", "max_pixels", "max_duration_s", "max_batch_inputs")
    MAX_INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_INPUTS_FIELD_NUMBER: _ClassVar[int]
    max_input_bytes: int
    max_tokens: int
    max_pixels: int
    max_duration_s: float
    max_batch_inputs: int
    def __init__(self, max_input_bytes: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_pixels: _Optional[int] = ..., max_duration_s: _Optional[float] = ..., max_batch_inputs: _Optional[int] = ...) -> None: ...

class EncoderInfo(_message.Message):
    __slots__ = ("modality", "feature_width", "datatypes", "default_datatype", "model_id", "model_version", "media_types", "options", "limits", "feature_kind")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DATATYPES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DATATYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_KIND_FIELD_NUMBER: _ClassVar[int]
    modality: str
    feature_width: int
    datatypes: _containers.RepeatedScalarFieldContainer[str]
    default_datatype: str
    model_id: str
    model_version: str
    media_types: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.RepeatedScalarFieldContainer[str]
    limits: InputLimits
    feature_kind: FeatureKind
    def __init__(self, modality: _Optional[str] = ..., feature_width: _Optional[int] = ..., datatypes: _Optional[_Iterable[str]] = ..., default_datatype: _Optional[str] = ..., model_id: _Optional[str] = ..., model_version: _Optional[str] = ..., media_types: _Optional[_Iterable[str]] = ..., options: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[InputLimits, _Mapping]] = ..., feature_kind: _Optional[_Union[FeatureKind, str]] = ...) -> None: ...
