from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Modality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_UNSPECIFIED: _ClassVar[Modality]
    MODALITY_TEXT: _ClassVar[Modality]
    MODALITY_IMAGE: _ClassVar[Modality]
    MODALITY_AUDIO: _ClassVar[Modality]

class RoutingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTING_MODE_UNSPECIFIED: _ClassVar[RoutingMode]
    ROUTING_MODE_ROUTED: _ClassVar[RoutingMode]
    ROUTING_MODE_FULL: _ClassVar[RoutingMode]

class ReportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPORT_FORMAT_UNSPECIFIED: _ClassVar[ReportFormat]
    REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT: _ClassVar[ReportFormat]
    REPORT_FORMAT_DICOM_SR: _ClassVar[ReportFormat]
    REPORT_FORMAT_TICKET_JSON: _ClassVar[ReportFormat]

class ModalityStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODALITY_STATUS_UNSPECIFIED: _ClassVar[ModalityStatus]
    MODALITY_STATUS_USED: _ClassVar[ModalityStatus]
    MODALITY_STATUS_ABSENT: _ClassVar[ModalityStatus]
    MODALITY_STATUS_SKIPPED: _ClassVar[ModalityStatus]
    MODALITY_STATUS_FAILED: _ClassVar[ModalityStatus]
    MODALITY_STATUS_TIMED_OUT: _ClassVar[ModalityStatus]
    MODALITY_STATUS_NOT_APPLICABLE: _ClassVar[ModalityStatus]
MODALITY_UNSPECIFIED: Modality
MODALITY_TEXT: Modality
MODALITY_IMAGE: Modality
MODALITY_AUDIO: Modality
ROUTING_MODE_UNSPECIFIED: RoutingMode
ROUTING_MODE_ROUTED: RoutingMode
ROUTING_MODE_FULL: RoutingMode
REPORT_FORMAT_UNSPECIFIED: ReportFormat
REPORT_FORMAT_FHIR_DIAGNOSTIC_REPORT: ReportFormat
REPORT_FORMAT_DICOM_SR: ReportFormat
REPORT_FORMAT_TICKET_JSON: ReportFormat
MODALITY_STATUS_UNSPECIFIED: ModalityStatus
MODALITY_STATUS_USED: ModalityStatus
MODALITY_STATUS_ABSENT: ModalityStatus
MODALITY_STATUS_SKIPPED: ModalityStatus
MODALITY_STATUS_FAILED: ModalityStatus
MODALITY_STATUS_TIMED_OUT: ModalityStatus
MODALITY_STATUS_NOT_APPLICABLE: ModalityStatus

class MediaInput(_message.Message):
    __slots__ = ("data", "media_type", "parameters")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    parameters: _containers.ScalarMap[str, str]
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AnalyzeOptions(_message.Message):
    __slots__ = ("speech", "voice", "explain", "deadline_ms", "mode", "require", "top_k", "report_formats", "image_preview")
    SPEECH_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REPORT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PREVIEW_FIELD_NUMBER: _ClassVar[int]
    speech: bool
    voice: str
    explain: bool
    deadline_ms: int
    mode: RoutingMode
    require: _containers.RepeatedScalarFieldContainer[Modality]
    top_k: int
    report_formats: _containers.RepeatedScalarFieldContainer[ReportFormat]
    image_preview: bool
    def __init__(self, speech: _Optional[bool] = ..., voice: _Optional[str] = ..., explain: _Optional[bool] = ..., deadline_ms: _Optional[int] = ..., mode: _Optional[_Union[RoutingMode, str]] = ..., require: _Optional[_Iterable[_Union[Modality, str]]] = ..., top_k: _Optional[int] = ..., report_formats: _Optional[_Iterable[_Union[ReportFormat, str]]] = ..., image_preview: _Optional[bool] = ...) -> None: ...

class Report(_message.Message):
    __slots__ = ("format", "media_type", "content")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    format: ReportFormat
    media_type: str
    content: bytes
    def __init__(self, format: _Optional[_Union[ReportFormat, str]] = ..., media_type: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class AnalyzeRequest(_message.Message):
    __slots__ = ("request_id", "task", "text", "image", "audio", "options")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task: str
    text: str
    image: MediaInput
    audio: MediaInput
    options: AnalyzeOptions
    def __init__(self, request_id: _Optional[str] = ..., task: _Optional[str] = ..., text: _Optional[str] = ..., image: _Optional[_Union[MediaInput, _Mapping]] = ..., audio: _Optional[_Union[MediaInput, _Mapping]] = ..., options: _Optional[_Union[AnalyzeOptions, _Mapping]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    probability: float
    def __init__(self, label: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class Uncertainty(_message.Message):
    __slots__ = ("predictive_entropy", "gate_entropy")
    PREDICTIVE_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    GATE_ENTROPY_FIELD_NUMBER: _ClassVar[int]
    predictive_entropy: float
    gate_entropy: float
    def __init__(self, predictive_entropy: _Optional[float] = ..., gate_entropy: _Optional[float] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("key", "value", "number", "unit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    number: float
    unit: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., number: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class ModalityReport(_message.Message):
    __slots__ = ("modality", "status", "reason", "error_code", "gate_weight", "latency_ms", "applicability")
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    GATE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    APPLICABILITY_FIELD_NUMBER: _ClassVar[int]
    modality: Modality
    status: ModalityStatus
    reason: str
    error_code: str
    gate_weight: float
    latency_ms: float
    applicability: float
    def __init__(self, modality: _Optional[_Union[Modality, str]] = ..., status: _Optional[_Union[ModalityStatus, str]] = ..., reason: _Optional[str] = ..., error_code: _Optional[str] = ..., gate_weight: _Optional[float] = ..., latency_ms: _Optional[float] = ..., applicability: _Optional[float] = ...) -> None: ...

class AttentionMass(_message.Message):
    __slots__ = ("query_modality", "key_modality", "mass")
    QUERY_MODALITY_FIELD_NUMBER: _ClassVar[int]
    KEY_MODALITY_FIELD_NUMBER: _ClassVar[int]
    MASS_FIELD_NUMBER: _ClassVar[int]
    query_modality: Modality
    key_modality: Modality
    mass: float
    def __init__(self, query_modality: _Optional[_Union[Modality, str]] = ..., key_modality: _Optional[_Union[Modality, str]] = ..., mass: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("modalities", "attention", "timings_ms", "model_version", "screen_text", "lesions", "image_preview")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCREEN_TEXT_FIELD_NUMBER: _ClassVar[int]
    LESIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PREVIEW_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityReport]
    attention: _containers.RepeatedCompositeFieldContainer[AttentionMass]
    timings_ms: _containers.ScalarMap[str, float]
    model_version: str
    screen_text: _containers.RepeatedCompositeFieldContainer[ScreenText]
    lesions: _containers.RepeatedCompositeFieldContainer[MeasuredLesion]
    image_preview: ImagePreview
    def __init__(self, modalities: _Optional[_Iterable[_Union[ModalityReport, _Mapping]]] = ..., attention: _Optional[_Iterable[_Union[AttentionMass, _Mapping]]] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., model_version: _Optional[str] = ..., screen_text: _Optional[_Iterable[_Union[ScreenText, _Mapping]]] = ..., lesions: _Optional[_Iterable[_Union[MeasuredLesion, _Mapping]]] = ..., image_preview: _Optional[_Union[ImagePreview, _Mapping]] = ...) -> None: ...

class ImagePreview(_message.Message):
    __slots__ = ("png", "width", "height")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class MeasuredLesion(_message.Message):
    __slots__ = ("diameter_mm", "side", "box")
    DIAMETER_MM_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    diameter_mm: float
    side: str
    box: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, diameter_mm: _Optional[float] = ..., side: _Optional[str] = ..., box: _Optional[_Iterable[float]] = ...) -> None: ...

class ScreenText(_message.Message):
    __slots__ = ("text", "confidence", "box", "status_line", "unreadable")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    STATUS_LINE_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    text: str
    confidence: float
    box: _containers.RepeatedScalarFieldContainer[float]
    status_line: bool
    unreadable: bool
    def __init__(self, text: _Optional[str] = ..., confidence: _Optional[float] = ..., box: _Optional[_Iterable[float]] = ..., status_line: _Optional[bool] = ..., unreadable: _Optional[bool] = ...) -> None: ...

class AnalyzeResponse(_message.Message):
    __slots__ = ("request_id", "task", "label", "confidence", "uncertainty", "top_k", "description", "findings", "speech_wav", "explanation", "model_version", "abstained", "abstain_reason", "task_version", "reports")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    UNCERTAINTY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    SPEECH_WAV_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ABSTAINED_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    TASK_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task: str
    label: str
    confidence: float
    uncertainty: Uncertainty
    top_k: _containers.RepeatedCompositeFieldContainer[LabelScore]
    description: str
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    speech_wav: bytes
    explanation: Explanation
    model_version: str
    abstained: bool
    abstain_reason: str
    task_version: int
    reports: _containers.RepeatedCompositeFieldContainer[Report]
    def __init__(self, request_id: _Optional[str] = ..., task: _Optional[str] = ..., label: _Optional[str] = ..., confidence: _Optional[float] = ..., uncertainty: _Optional[_Union[Uncertainty, _Mapping]] = ..., top_k: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., description: _Optional[str] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., speech_wav: _Optional[bytes] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., model_version: _Optional[str] = ..., abstained: _Optional[bool] = ..., abstain_reason: _Optional[str] = ..., task_version: _Optional[int] = ..., reports: _Optional[_Iterable[_Union[Report, _Mapping]]] = ...) -> None: ...

class AnalyzeStreamRequest(_message.Message):
    __slots__ = ("request", "image_chunk", "audio_chunk")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CHUNK_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    request: AnalyzeRequest
    image_chunk: bytes
    audio_chunk: bytes
    def __init__(self, request: _Optional[_Union[AnalyzeRequest, _Mapping]] = ..., image_chunk: _Optional[bytes] = ..., audio_chunk: _Optional[bytes] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("modalities",)
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedCompositeFieldContainer[ModalityReport]
    def __init__(self, modalities: _Optional[_Iterable[_Union[ModalityReport, _Mapping]]] = ...) -> None: ...

class AnalyzeEvent(_message.Message):
    __slots__ = ("gate", "diagnosis", "description", "speech_chunk", "final")
    GATE_FIELD_NUMBER: _ClassVar[int]
    DIAGNOSIS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SPEECH_CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    gate: GateDecision
    diagnosis: AnalyzeResponse
    description: str
    speech_chunk: bytes
    final: AnalyzeResponse
    def __init__(self, gate: _Optional[_Union[GateDecision, _Mapping]] = ..., diagnosis: _Optional[_Union[AnalyzeResponse, _Mapping]] = ..., description: _Optional[str] = ..., speech_chunk: _Optional[bytes] = ..., final: _Optional[_Union[AnalyzeResponse, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("name", "description", "labels", "accepted_modalities", "optional_modalities", "model_version", "tau", "gamma", "eager_side_outputs", "text_model", "abstain_below", "applicability_max_distance", "versions", "problem", "report_formats", "neighbour_checked", "abstain_below_alone", "quick_side_outputs", "out_of_scope_above")
    class ApplicabilityMaxDistanceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AbstainBelowAloneEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_MODALITIES_FIELD_NUMBER: _ClassVar[int]
    OPTIONAL_MODALITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    EAGER_SIDE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_BELOW_FIELD_NUMBER: _ClassVar[int]
    APPLICABILITY_MAX_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    REPORT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_CHECKED_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_BELOW_ALONE_FIELD_NUMBER: _ClassVar[int]
    QUICK_SIDE_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_SCOPE_ABOVE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    accepted_modalities: _containers.RepeatedScalarFieldContainer[Modality]
    optional_modalities: _containers.RepeatedScalarFieldContainer[Modality]
    model_version: str
    tau: float
    gamma: float
    eager_side_outputs: _containers.RepeatedScalarFieldContainer[Modality]
    text_model: str
    abstain_below: float
    applicability_max_distance: _containers.ScalarMap[str, float]
    versions: _containers.RepeatedCompositeFieldContainer[TaskVersion]
    problem: str
    report_formats: _containers.RepeatedScalarFieldContainer[ReportFormat]
    neighbour_checked: _containers.RepeatedScalarFieldContainer[Modality]
    abstain_below_alone: _containers.ScalarMap[str, float]
    quick_side_outputs: _containers.RepeatedScalarFieldContainer[Modality]
    out_of_scope_above: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., accepted_modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., optional_modalities: _Optional[_Iterable[_Union[Modality, str]]] = ..., model_version: _Optional[str] = ..., tau: _Optional[float] = ..., gamma: _Optional[float] = ..., eager_side_outputs: _Optional[_Iterable[_Union[Modality, str]]] = ..., text_model: _Optional[str] = ..., abstain_below: _Optional[float] = ..., applicability_max_distance: _Optional[_Mapping[str, float]] = ..., versions: _Optional[_Iterable[_Union[TaskVersion, _Mapping]]] = ..., problem: _Optional[str] = ..., report_formats: _Optional[_Iterable[_Union[ReportFormat, str]]] = ..., neighbour_checked: _Optional[_Iterable[_Union[Modality, str]]] = ..., abstain_below_alone: _Optional[_Mapping[str, float]] = ..., quick_side_outputs: _Optional[_Iterable[_Union[Modality, str]]] = ..., out_of_scope_above: _Optional[float] = ...) -> None: ...

class TaskVersion(_message.Message):
    __slots__ = ("version", "state", "reason", "model_version", "serving")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    reason: str
    model_version: str
    serving: bool
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., model_version: _Optional[str] = ..., serving: _Optional[bool] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ...) -> None: ...
