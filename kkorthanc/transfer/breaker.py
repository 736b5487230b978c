"""The breaker of uploads and exports: stop sending once the server looks gone.

A run counts its "server unreachable" failures in a row (connection errors and timeouts,
502, 503, 504, each after the transport's own retries); any answer from the server resets
the count. At ``limit`` the breaker trips, and the items after that are reported failed
without a request, with a reason that says why they were not sent.
"""

from __future__ import annotations

import threading

from ..errors import OrthancConnectionError, OrthancError, ServerError

#: Consecutive "server unreachable" failures after which :func:`~kkorthanc.transfer.upload`
#: and :func:`~kkorthanc.transfer.export` stop sending.
DEFAULT_MAX_CONSECUTIVE_FAILURES = 32
#: Statuses that mean the server (or the proxy in front of it) is not serving.
UNREACHABLE_STATUSES = frozenset({502, 503, 504})


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says that the server could not be reached (rather than a refusal)."""
    if isinstance(exc, OrthancConnectionError):
        return True
    return isinstance(exc, ServerError) and exc.status in UNREACHABLE_STATUSES


class _Breaker:
    """Consecutive "server unreachable" failures of a run, shared by its worker threads."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.lock = threading.Lock()
        self.consecutive = 0
        self.tripped: str | None = None
        """Why the remaining items are not sent, once the breaker has tripped."""

    def answered(self) -> None:
        """The server answered (success or a refusal of this one item): count from zero."""
        if self.consecutive:
            with self.lock:
                self.consecutive = 0

    def failed(self, exc: OrthancError) -> None:
        """A request failed with ``exc``: count it if it says the server is unreachable."""
        with self.lock:
            self.consecutive = self.consecutive + 1 if unreachable(exc) else 0
            if self.limit is not None and self.consecutive >= self.limit and not self.tripped:
                self.tripped = (
                    f"not sent: the server was unreachable ({self.consecutive} failures in a "
                    f"row, the last: {exc})"
                )
