"""kkorthanc: a typed, fast client for the Orthanc DICOM server.

>>> from kkorthanc import Orthanc, build_patient_forest
>>> client = Orthanc("http://localhost:8042", auth=("user", "password"))
>>> forest = build_patient_forest(client)
"""

from .client import Orthanc, SystemInfo
from .errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidRequest,
    JobFailed,
    JobTimeout,
    NotFound,
    OrthancConnectionError,
    OrthancError,
    OrthancHTTPError,
    OrthancTimeout,
    ServerError,
    Unauthorized,
    UnsupportedByServer,
    ValidationFailed,
)
from .forest import NotInForest, PatientForest, UpdateReport, build_patient_forest
from .jobs import Job
from .modalities import (
    EchoFailed,
    FindAnswer,
    FindFailed,
    Modality,
    ModalityError,
    StoreFailed,
    StoreReport,
    UnknownModality,
)
from .models import Instance, Patient, Resource, Series, Study, orthanc_id
from .query import QueryError, UnknownKeyword
from .tags import PersonName
from .transfer import ExportFailed, ExportReport, UploadFailed, UploadItem, UploadReport

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Conflict",
    "EchoFailed",
    "ExportFailed",
    "ExportReport",
    "FindAnswer",
    "FindFailed",
    "Forbidden",
    "Instance",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobTimeout",
    "Modality",
    "ModalityError",
    "NotFound",
    "NotInForest",
    "Orthanc",
    "OrthancConnectionError",
    "OrthancError",
    "OrthancHTTPError",
    "OrthancTimeout",
    "Patient",
    "PatientForest",
    "PersonName",
    "QueryError",
    "Resource",
    "Series",
    "ServerError",
    "StoreFailed",
    "StoreReport",
    "Study",
    "SystemInfo",
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
