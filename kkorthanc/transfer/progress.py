"""Progress bars for uploads and exports: tqdm where a person watches, else silence.

What ``progress`` asks for:

- ``"auto"`` (or ``None``): a bar when someone can see it, that is when standard error is a
  terminal or the code runs in a Jupyter kernel; nothing in a script's log, a pipe or CI;
- ``True``: a bar on standard error even when it is not a terminal;
- ``False``: no bar.

In Jupyter the bar is tqdm's widget when ipywidgets imports, else tqdm's text bar on
standard error: never ``tqdm.auto``'s "IProgress not found" warning. A bar never moves
backwards: the count only grows, and a total that would lower the fraction already shown
(a larger total learnt mid-run) leaves the bar counting without a percentage instead.
Without tqdm, the first bar that would show warns once per process.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any, Literal, TypeAlias

__all__ = ["AUTO", "ProgressOption", "wants_bar"]

#: what ``progress=`` accepts (see the module documentation)
ProgressOption: TypeAlias = bool | Literal["auto"] | None
#: a bar only where a person watches: standard error is a terminal, or a Jupyter kernel
AUTO: Literal["auto"] = "auto"

#: whether the missing-tqdm warning was given (once per process)
_warned_tqdm = False


class _NoBar:
    """What a run calls on its bar, doing nothing: progress off, or tqdm missing."""

    total: int | None = None
    n: int = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _in_jupyter() -> bool:
    """Whether the code runs in a Jupyter kernel (JupyterLab, Notebook, VS Code, nbclient)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half imported: not a kernel we know
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _stderr_is_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def wants_bar(progress: ProgressOption) -> bool:
    """Whether ``progress`` asks for a bar here and now (``"auto"`` looks at the context)."""
    if progress is None or progress == AUTO:
        return _stderr_is_terminal() or _in_jupyter()
    if isinstance(progress, bool):
        return progress
    raise ValueError(f"progress must be True, False or 'auto', not {progress!r}")


def _has_ipywidgets() -> bool:
    try:
        importlib.import_module("ipywidgets")
    except Exception:  # ImportError, or a broken install: the text bar then
        return False
    return True


class _Bar:
    """A tqdm bar that never moves backwards (see the module documentation)."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        #: the highest fraction the bar may have shown
        self._shown = 0.0

    @property
    def n(self) -> int:
        return int(self._bar.n)

    @property
    def total(self) -> int | None:
        total: int | None = self._bar.total
        return total

    @total.setter
    def total(self, value: int | None) -> None:
        done = self.n
        if value is not None:
            value = max(int(value), done)
            if value > 0 and done / value < self._shown:
                value = None  # a lower fraction than already shown: count without a total
        self._set_total(value)

    def _set_total(self, value: int | None) -> None:
        bar = self._bar
        bar.total = value
        container = getattr(bar, "container", None)  # tqdm.notebook's widget
        if container is not None:
            widget = container.children[1]
            widget.max = value if value else 1
            widget.bar_style = "" if value else "info"

    def update(self, n: int = 1) -> None:
        if n <= 0:
            return
        total = self.total
        if total is not None and self.n + n > total:
            self._set_total(self.n + n)  # more than announced: the bar stays at 100 %
        self._bar.update(n)
        total = self.total
        if total:
            self._shown = max(self._shown, min(1.0, self.n / total))

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self._bar.set_postfix_str(text, refresh=refresh)

    def refresh(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def _progress_bar(progress: ProgressOption, total: int | None, desc: str, unit: str) -> Any:
    """A bar for ``progress`` (see the module documentation), or a silent stand-in."""
    global _warned_tqdm
    if not wants_bar(progress):
        return _NoBar()
    try:
        import tqdm  # noqa: F401  (the package first: a blocked tqdm hides tqdm.std too)
        from tqdm.std import tqdm as text_bar
    except ImportError:
        if not _warned_tqdm:
            _warned_tqdm = True
            warnings.warn(
                "progress bars need tqdm: pip install 'kkorthanc[progress]'",
                stacklevel=3,
            )
        return _NoBar()
    if total is not None and total < 0:
        total = None
    if _in_jupyter():
        if _has_ipywidgets():
            from tqdm.notebook import tqdm as widget_bar

            return _Bar(widget_bar(total=total, desc=desc, unit=unit, leave=True))
        # no widgets: the text bar, which the notebook redraws in place on each "\r"
        return _Bar(text_bar(total=total, desc=desc, unit=unit, file=sys.stderr, ncols=88))
    return _Bar(
        text_bar(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
    )
