"""The base of every model that belongs to one server and can reach it again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, PrivateAttr, ValidationError

from ._answers import expect_object, shown_error
from .errors import ValidationFailed

if TYPE_CHECKING:
    from .server import Server

S = TypeVar("S", bound="ServerObject")

class ServerObject(BaseModel):
    """A model read from a server, keeping the client it came from for later requests."""

    _client: Server | None = PrivateAttr(default=None)

    def _label(self) -> str:
        """How messages name this object, e.g. ``job 1234``."""
        return type(self).__name__

    @property
    def client(self) -> Server:
        """The client this object came from (raises if it was built without one)."""
        if self._client is None:
            raise RuntimeError(f"{self._label()} is not attached to a client")
        return self._client

    @classmethod
    def _attached(cls: type[S], data: Any, client: Server | None, what: str) -> S:
        """Validate ``data`` into a model attached to ``client``; ``what`` names it in errors."""
        expect_object(data, what)
        try:
            obj = cls.model_validate(data)
        except ValidationError as exc:  # kept as the cause
            raise ValidationFailed(f"cannot read {what}: {shown_error(exc)}") from exc
        obj._client = client
        return obj
