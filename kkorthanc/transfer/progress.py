"""Progress bars for uploads and exports: tqdm when installed and asked for, else silence."""

from __future__ import annotations

import warnings
from typing import Any

#: whether the missing-tqdm warning was given (once per process)
_warned_tqdm = False


class _NoBar:
    """What a run calls on its bar, doing nothing: progress off, or tqdm missing."""

    total: int | None = None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int | None, desc: str, unit: str) -> Any:
    """A tqdm bar (``tqdm.auto``: a widget in notebooks), or a silent stand-in.

    Without tqdm the first bar asked for warns once per process.
    """
    global _warned_tqdm
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned_tqdm:
            _warned_tqdm = True
            warnings.warn(
                "progress bars need tqdm: pip install 'kkorthanc[progress]'",
                stacklevel=3,
            )
        return _NoBar()
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=True)
