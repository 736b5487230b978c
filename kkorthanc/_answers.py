"""Reading the server's answers: shape checks, and failures that name the request.

Every answer is decoded JSON of whatever shape the server chose. The code that reads one
either checks its shape (:func:`expect_object`, :func:`expect_list`) or runs inside
:func:`reading`, so that a wrongly shaped answer always ends as one
:class:`~kkorthanc.errors.ValidationFailed` that names the request it answered.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ._limits import kind_of
from .errors import InvalidRequest, OrthancError, ValidationFailed

#: what reading a wrongly shaped answer can raise in the code that reads it
_SHAPE_ERRORS = (TypeError, AttributeError, KeyError, IndexError, ValueError, ValidationError)


class reading:  # lower case: it reads as a function, ``with reading("GET /x"):``
    """Read the answer of ``request`` (``METHOD /path``) in this block: any failure to read
    it becomes :class:`ValidationFailed` naming the request.

    An answer of the wrong shape (a list for an object, a number for a name, a field
    missing) fails wherever the reading code first trips over it; whatever it trips with,
    the caller gets one kkorthanc error that says which answer was wrong. An
    :class:`~kkorthanc.errors.InvalidRequest` here is a value of the answer that cannot go
    into a later request (an ID that would change a path): the answer's fault too. Other
    kkorthanc errors (a later request's own failure) pass unchanged. A loop over several answers
    sets :attr:`request` as it goes (``with reading() as answer: ... answer.request = ...``).
    """

    __slots__ = ("request",)

    def __init__(self, request: str = "") -> None:
        self.request = request

    def __enter__(self) -> reading:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        if exc is None or not self.request:
            return
        if isinstance(exc, ValidationFailed):
            if exc.request is None:
                raise ValidationFailed(str(exc), request=self.request) from (exc.__cause__ or exc)
        elif isinstance(exc, InvalidRequest):
            raise ValidationFailed(f"unusable answer ({exc})", request=self.request) from exc
        elif isinstance(exc, _SHAPE_ERRORS) and not isinstance(exc, OrthancError):
            why = f"unexpected answer ({shown_error(exc)})"
            raise ValidationFailed(why, request=self.request) from exc


def expect_object(data: Any, what: str) -> dict[str, Any]:
    """``data`` when it is a JSON object, else :class:`ValidationFailed` naming ``what``."""
    if not isinstance(data, dict):
        raise ValidationFailed(f"cannot read {what}: expected a JSON object, got {kind_of(data)}")
    return data


def expect_list(data: Any, what: str) -> list[Any]:
    """``data`` when it is a JSON list, else :class:`ValidationFailed` naming ``what``."""
    if not isinstance(data, list):
        raise ValidationFailed(f"cannot read {what}: expected a JSON list, got {kind_of(data)}")
    return data


def expect_names(data: Any, request: str) -> list[str]:
    """``data`` when it is a JSON list of strings (labels, attachment names, IDs), else
    :class:`ValidationFailed` naming ``request``; an empty answer is an empty list."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ValidationFailed(f"expected a JSON list, got {kind_of(data)}", request=request)
    for item in data:
        if not isinstance(item, str):
            raise ValidationFailed(
                f"expected a JSON list of strings, got {kind_of(item)} in it", request=request
            )
    return data


def expect_texts(data: Any, request: str) -> dict[str, str]:
    """``data`` when it is a JSON object of strings (expanded metadata), else
    :class:`ValidationFailed` naming ``request``; an empty answer is an empty object."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationFailed(f"expected a JSON object, got {kind_of(data)}", request=request)
    for name, value in data.items():
        if not isinstance(value, str):
            raise ValidationFailed(
                f"expected a JSON object of strings, got {kind_of(value)} for {name!r}",
                request=request,
            )
    return data


def shown_error(exc: BaseException) -> str:
    """A one-line account of a reading failure (pydantic's first error, where and what)."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the answer"
        return f"{where}: {first['msg']}"
    return f"{type(exc).__name__}: {exc}"


__all__ = [
    "expect_list",
    "expect_names",
    "expect_object",
    "expect_texts",
    "reading",
    "shown_error",
]
