import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_ENCODING_UNSPECIFIED: _ClassVar[UpdateEncoding]
    UPDATE_ENCODING_FLOAT32: _ClassVar[UpdateEncoding]
    UPDATE_ENCODING_FLOAT16_DELTA: _ClassVar[UpdateEncoding]
    UPDATE_ENCODING_INT8_DELTA: _ClassVar[UpdateEncoding]
UPDATE_ENCODING_UNSPECIFIED: UpdateEncoding
UPDATE_ENCODING_FLOAT32: UpdateEncoding
UPDATE_ENCODING_FLOAT16_DELTA: UpdateEncoding
UPDATE_ENCODING_INT8_DELTA: UpdateEncoding

class TrainingPlan(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "deadline", "proximal_mu")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    deadline: _timestamp_pb2.Timestamp
    proximal_mu: float
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., proximal_mu: _Optional[float] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("client_id", "min_version", "wait_seconds", "have_version", "accept_encodings")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    min_version: int
    wait_seconds: float
    have_version: int
    accept_encodings: _containers.RepeatedScalarFieldContainer[UpdateEncoding]
    def __init__(self, client_id: _Optional[str] = ..., min_version: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., have_version: _Optional[int] = ..., accept_encodings: _Optional[_Iterable[_Union[UpdateEncoding, str]]] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("round", "model_version", "architecture_id", "labels", "feature_preset", "plan", "total_bytes", "sha256", "finished", "payload_omitted", "xxh3_128", "encoding", "base_version", "model_data_xxh3_128")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_PRESET_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_OMITTED_FIELD_NUMBER: _ClassVar[int]
    XXH3_128_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_DATA_XXH3_128_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    architecture_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    feature_preset: str
    plan: TrainingPlan
    total_bytes: int
    sha256: str
    finished: bool
    payload_omitted: bool
    xxh3_128: str
    encoding: UpdateEncoding
    base_version: int
    model_data_xxh3_128: str
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., architecture_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., feature_preset: _Optional[str] = ..., plan: _Optional[_Union[TrainingPlan, _Mapping]] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., finished: _Optional[bool] = ..., payload_omitted: _Optional[bool] = ..., xxh3_128: _Optional[str] = ..., encoding: _Optional[_Union[UpdateEncoding, str]] = ..., base_version: _Optional[int] = ..., model_data_xxh3_128: _Optional[str] = ...) -> None: ...

class PullModelResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("client_id", "round", "num_samples", "update_id", "total_bytes", "sha256", "train_loss", "train_accuracy", "base_version", "encoding", "xxh3_128")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    XXH3_128_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    num_samples: int
    update_id: str
    total_bytes: int
    sha256: str
    train_loss: float
    train_accuracy: float
    base_version: int
    encoding: UpdateEncoding
    xxh3_128: str
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ..., num_samples: _Optional[int] = ..., update_id: _Optional[str] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ..., base_version: _Optional[int] = ..., encoding: _Optional[_Union[UpdateEncoding, str]] = ..., xxh3_128: _Optional[str] = ...) -> None: ...

class PushUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PushUpdateResponse(_message.Message):
    __slots__ = ("accepted", "duplicate", "round", "accepted_in_round", "clients_per_round")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_IN_ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    round: int
    accepted_in_round: int
    clients_per_round: int
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., round: _Optional[int] = ..., accepted_in_round: _Optional[int] = ..., clients_per_round: _Optional[int] = ...) -> None: ...

class EvaluationMetrics(_message.Message):
    __slots__ = ("examples", "loss", "accuracy", "uar", "confusion")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    UAR_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    examples: int
    loss: float
    accuracy: float
    uar: float
    confusion: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, examples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., uar: _Optional[float] = ..., confusion: _Optional[_Iterable[int]] = ...) -> None: ...

class ReportEvaluationRequest(_message.Message):
    __slots__ = ("client_id", "model_version", "metrics")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    model_version: int
    metrics: EvaluationMetrics
    def __init__(self, client_id: _Optional[str] = ..., model_version: _Optional[int] = ..., metrics: _Optional[_Union[EvaluationMetrics, _Mapping]] = ...) -> None: ...

class ReportEvaluationResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: int
    def __init__(self, reports: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoundSummary(_message.Message):
    __slots__ = ("round", "model_version", "participants", "samples", "duration_seconds", "train_loss", "train_accuracy")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    participants: int
    samples: int
    duration_seconds: float
    train_loss: float
    train_accuracy: float
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., participants: _Optional[int] = ..., samples: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., train_loss: _Optional[float] = ..., train_accuracy: _Optional[float] = ...) -> None: ...

class VersionEvaluation(_message.Message):
    __slots__ = ("model_version", "reports", "metrics")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    reports: int
    metrics: EvaluationMetrics
    def __init__(self, model_version: _Optional[int] = ..., reports: _Optional[int] = ..., metrics: _Optional[_Union[EvaluationMetrics, _Mapping]] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("round", "model_version", "finished", "accepted_in_round", "clients_per_round", "min_clients", "deadline", "overdue", "architecture_id", "labels", "max_rounds", "rounds", "evaluations")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_IN_ROUND_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    round: int
    model_version: int
    finished: bool
    accepted_in_round: int
    clients_per_round: int
    min_clients: int
    deadline: _timestamp_pb2.Timestamp
    overdue: bool
    architecture_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    max_rounds: int
    rounds: _containers.RepeatedCompositeFieldContainer[RoundSummary]
    evaluations: _containers.RepeatedCompositeFieldContainer[VersionEvaluation]
    def __init__(self, round: _Optional[int] = ..., model_version: _Optional[int] = ..., finished: _Optional[bool] = ..., accepted_in_round: _Optional[int] = ..., clients_per_round: _Optional[int] = ..., min_clients: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., overdue: _Optional[bool] = ..., architecture_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., max_rounds: _Optional[int] = ..., rounds: _Optional[_Iterable[_Union[RoundSummary, _Mapping]]] = ..., evaluations: _Optional[_Iterable[_Union[VersionEvaluation, _Mapping]]] = ...) -> None: ...
