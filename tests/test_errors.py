"""The exception hierarchy: one root, messages that say what went wrong, pickling."""

from __future__ import annotations

import inspect
import pickle
from concurrent.futures import ProcessPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from kkorthanc import errors

pytestmark = pytest.mark.no_cassette

_REPORT = SimpleNamespace(total=3)
_ITEM = SimpleNamespace(label="a.dcm")

#: constructor arguments per class; a class missing here fails the coverage test below
ARGUMENTS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "OrthancHTTPError": ((418, "GET", "http://h/x", {"Details": "teapot"}, ""), {}),
    "UnsupportedByServer": (
        ("Labels", "1.12.0", "1.12.3", 23),
        {"database": "a database that stores labels", "lacking": "PostgreSQL index without labels"},
    ),
    "JobFailed": (("job-1", 2, "Internal error", "disk full"), {}),
    "UnknownKeyword": (("PatientNam", ["PatientName"]), {}),
    "AmbiguousIdentifier": (("two studies", ["s1", "s2"]), {}),
    "ModalityError": (("peer", "refused", 500), {}),
    "TransferFailed": ((_REPORT, [_ITEM]), {}),
}


def _instance(cls: type[Exception]) -> Exception:
    for base in cls.__mro__:
        if base.__name__ in ARGUMENTS:
            args, kwargs = ARGUMENTS[base.__name__]
            return cls(*args, **kwargs)
    return cls(f"{cls.__name__} happened")


def _classes() -> list[type[Exception]]:
    return [
        value
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, Exception) and not name.startswith("_")
    ]


@pytest.mark.parametrize("cls", _classes(), ids=lambda cls: cls.__name__)
def test_every_error_survives_pickling(cls: type[Exception]) -> None:
    error = _instance(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) and copy.args == error.args
    assert {k: v for k, v in vars(copy).items() if k not in ("report", "items")} == {
        k: v for k, v in vars(error).items() if k not in ("report", "items")
    }
    assert isinstance(copy, errors.OrthancError)


def _raise_not_found() -> None:
    raise errors.NotFound(404, "GET", "http://h/patients/x", None, "")


def test_a_process_pool_delivers_the_error() -> None:
    with ProcessPoolExecutor(1) as pool:
        future = pool.submit(_raise_not_found)
        with pytest.raises(errors.NotFound) as caught:
            future.result(timeout=60)
    assert caught.value.status == 404 and caught.value.url == "http://h/patients/x"


def test_refusals_before_sending_share_a_base() -> None:
    assert issubclass(errors.QueryError, errors.InvalidRequest)
    assert issubclass(errors.UnknownKeyword, errors.InvalidRequest)
    assert issubclass(errors.InvalidRequest, ValueError)


def test_a_capability_refusal_names_version_and_database() -> None:
    args, kwargs = ARGUMENTS["UnsupportedByServer"]
    message = str(errors.UnsupportedByServer(*args, **kwargs))
    assert message == (
        "Labels needs Orthanc 1.12.0 and a database that stores labels; "
        "this server: 1.12.3 (REST API 23), PostgreSQL index without labels"
    )
    old = str(errors.UnsupportedByServer("Labels", "1.12.0", "1.10.1", 16))
    assert old == "Labels needs Orthanc 1.12.0 or newer; this server: 1.10.1 (REST API 16)"
