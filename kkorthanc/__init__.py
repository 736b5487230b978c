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
from .models import Instance, Patient, Resource, Series, Study, orthanc_id
from .tags import PersonName

__version__ = "0.1.0"

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Instance",
    "JobFailed",
    "JobTimeout",
    "NotFound",
    "Orthanc",
    "OrthancConnectionError",
    "OrthancError",
    "OrthancHTTPError",
    "OrthancTimeout",
    "Patient",
    "PersonName",
    "Resource",
    "Series",
    "ServerError",
    "Study",
    "SystemInfo",
    "Unauthorized",
    "UnsupportedByServer",
    "ValidationFailed",
    "__version__",
    "orthanc_id",
]
