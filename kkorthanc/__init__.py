"""kkorthanc: a typed, fast client for the Orthanc DICOM server.

>>> from kkorthanc import Orthanc, build_patient_forest
>>> client = Orthanc("http://localhost:8042", auth=("user", "password"))
>>> forest = build_patient_forest(client)
"""

from .client import Orthanc, SystemInfo
from .errors import (
    AmbiguousIdentifier,
    BadRequest,
    Conflict,
    EchoFailed,
    ExportFailed,
    FindFailed,
    Forbidden,
    ForestStoreError,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    ModalityError,
    NoResultingResource,
    NotFound,
    NotInForest,
    OrthancConnectionError,
    OrthancError,
    OrthancHTTPError,
    OrthancTimeout,
    PaddedIdentifier,
    QueryError,
    SandboxError,
    ServerError,
    StoreFailed,
    TransferFailed,
    Unauthorized,
    UnknownKeyword,
    UnknownModality,
    UnsupportedByServer,
    UploadFailed,
    ValidationFailed,
)
from .forest import PatientForest, UpdateReport, build_patient_forest
from .jobs import Job
from .modalities import FindAnswer, Modality, StoreReport
from .models import Instance, Patient, Resource, Series, Study, orthanc_id
from .query import OrderBy
from .server import Server
from .tags import PersonName
from .transfer import ExportReport, UploadItem, UploadReport

__version__ = "0.2.0"

__all__ = [
    "AmbiguousIdentifier",
    "BadRequest",
    "Conflict",
    "EchoFailed",
    "ExportFailed",
    "ExportReport",
    "FindAnswer",
    "FindFailed",
    "Forbidden",
    "ForestStoreError",
    "Instance",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobTimeout",
    "Modality",
    "ModalityError",
    "NoResultingResource",
    "NotFound",
    "NotInForest",
    "OrderBy",
    "Orthanc",
    "OrthancConnectionError",
    "OrthancError",
    "OrthancHTTPError",
    "OrthancTimeout",
    "PaddedIdentifier",
    "Patient",
    "PatientForest",
    "PersonName",
    "QueryError",
    "Resource",
    "SandboxError",
    "Series",
    "Server",
    "ServerError",
    "StoreFailed",
    "StoreReport",
    "Study",
    "SystemInfo",
    "TransferFailed",
    "Unauthorized",
    "UnknownKeyword",
    "UnknownModality",
    "UnsupportedByServer",
    "UpdateReport",
    "UploadFailed",
    "UploadItem",
    "UploadReport",
    "ValidationFailed",
    "__version__",
    "build_patient_forest",
    "orthanc_id",
]
