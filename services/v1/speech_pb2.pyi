from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AudioFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_FORMAT_UNSPECIFIED: _ClassVar[AudioFormat]
    AUDIO_FORMAT_WAV: _ClassVar[AudioFormat]
    AUDIO_FORMAT_PCM16: _ClassVar[AudioFormat]
AUDIO_FORMAT_UNSPECIFIED: AudioFormat
AUDIO_FORMAT_WAV: AudioFormat
AUDIO_FORMAT_PCM16: AudioFormat

class SynthesizeRequest(_message.Message):
    __slots__ = ("text", "voice", "rate_wpm", "format", "sample_rate_hz")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    RATE_WPM_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    rate_wpm: int
    format: AudioFormat
    sample_rate_hz: int
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., rate_wpm: _Optional[int] = ..., format: _Optional[_Union[AudioFormat, str]] = ..., sample_rate_hz: _Optional[int] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data", "sample_rate_hz", "format", "sequence", "last")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sample_rate_hz: int
    format: AudioFormat
    sequence: int
    last: bool
    def __init__(self, data: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., format: _Optional[_Union[AudioFormat, str]] = ..., sequence: _Optional[int] = ..., last: _Optional[bool] = ...) -> None: ...
