"""The ``kkorthanc`` command line.

    kkorthanc tree [--depth patient|study|series|instance]
    kkorthanc find LEVEL Tag=value ... [--local] [--limit N]
    kkorthanc show ID
    kkorthanc upload PATH ... [--workers N]
    kkorthanc export (--patient X | --study X | --series X | --instance X)... [--all] DIR
    kkorthanc anonymize ID [--replace Tag=Value] [--remove Tag] [--keep Tag] [--job | --wait]
    kkorthanc modify ID [--replace Tag=Value] [--remove Tag] [--keep Tag] [--job | --wait]
    kkorthanc delete ID ... --yes
    kkorthanc labels list [LEVEL ID] | add LEVEL ID NAME... | remove LEVEL ID NAME...
    kkorthanc jobs list | wait JOB_ID | cancel JOB_ID
    kkorthanc modality list | echo NAME | find NAME LEVEL Tag=value ...
                       | move NAME LEVEL Tag=value ... [--target AET] | store NAME ID ...
    kkorthanc stats
    kkorthanc sandbox start [--sample [N]] | stop | status

An ID is an Orthanc ID, a PatientID or a DICOM UID; one that several resources share is an
error naming them. The server comes from ``--url`` or ``$ORTHANC_URL`` (default
``http://localhost:8042``), the credentials from ``--user`` / ``--password`` or
``$ORTHANC_USERNAME`` / ``$ORTHANC_PASSWORD``. ``--json`` prints machine-readable output on
standard output, with snake_case keys (the raw ``main_dicom_tags`` keep DICOM keywords).

Exit codes: 0 success; 1 partial failure (rejected uploads, failed exports or jobs, nothing
found by ``sandbox status`` or ``modality move``, an ambiguous ID, a feature the server
lacks) or another server error; 2 bad usage; 3 server unreachable or credentials refused;
130 interrupted. Errors are one line on standard error, never a traceback (``--debug``
shows it). Closing standard output early (``kkorthanc tree | head``) is not an error.

The commands live in one module per family (``_browse``, ``_transfer``, ``_edit``, ``_jobs``,
``_dicom``, ``_sandbox``); ``_main`` builds the parser and maps outcomes to exit codes.
"""

from ._browse import tree_json
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    LEVELS,
    SAMPLE_STUDY,
    resource_json,
)
from ._main import build_parser, main
from ._sandbox import state_home

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "LEVELS",
    "SAMPLE_STUDY",
    "build_parser",
    "main",
    "resource_json",
    "state_home",
    "tree_json",
]
