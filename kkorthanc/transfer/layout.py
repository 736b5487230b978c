"""Export path templates: layouts of DICOM keywords, each value made safe as a file name."""

from __future__ import annotations

import os
import re
import string

from .. import tags as _tags

#: Where :func:`export` puts each instance unless told otherwise.
DEFAULT_LAYOUT = "{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_MAX_VALUE = 128


def safe_component(text: str) -> str:
    """A tag value made safe as (part of) one file name.

    Separators, control and reserved characters become ``_``; surrounding spaces go; a value
    that is empty or only dots (``..``) becomes ``_``; long values are cut to 128 characters.
    """
    text = _UNSAFE.sub("_", text).strip()[:_MAX_VALUE]
    if not text.strip("."):
        return "_"
    return text


_Piece = tuple[str, str | None, str]


def _parse_layout(layout: str) -> list[list[_Piece]]:
    """Split a layout into components of ``(literal, field, format_spec)`` pieces."""
    if not layout or layout.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", layout):
        raise ValueError(f"layout must be a relative path template, not {layout!r}")
    components: list[list[_Piece]] = []
    for part in layout.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(
                f"layout {layout!r} has an empty, '.' or '..' component; use '/' only between names"
            )
        pieces: list[_Piece] = []
        try:
            parsed = list(string.Formatter().parse(part))
        except ValueError as exc:
            raise ValueError(f"layout {layout!r} is not a valid template: {exc}") from exc
        for literal, name, spec, conversion in parsed:
            if conversion:
                raise ValueError(f"layout {layout!r}: conversions like !{conversion} are not used")
            if name is not None and not name.isidentifier():
                raise ValueError(
                    f"layout {layout!r}: {{{name}}} is not a DICOM keyword "
                    "(write e.g. {PatientID})"
                )
            if _UNSAFE.search(literal):
                raise ValueError(f"layout {layout!r} has unsafe characters in {literal!r}")
            pieces.append((literal, name, spec or ""))
        components.append(pieces)
    return components


def check_layout(layout: str) -> None:
    """Refuse a layout that :func:`~kkorthanc.transfer.export` would refuse, without a server.

    Raises:
        ValueError: the layout is not a relative path template of main DICOM tag keywords;
            the message says why (with a suggestion for a misspelt keyword).
    """
    _relative_path(_parse_layout(layout), {})


def _format_value(value: str, spec: str) -> str:
    if not spec:
        return value
    try:
        if spec[-1] in "bcdoxXn":
            return format(int(value.strip()), spec)
        if spec[-1] in "eEfFgG%":
            return format(float(value.strip()), spec)
        return format(value, spec)
    except ValueError:
        return value


def _relative_path(components: list[list[_Piece]], tags: dict[str, str]) -> str:
    parts: list[str] = []
    for pieces in components:
        text = ""
        for literal, name, spec in pieces:
            text += literal
            if name is not None:
                value = tags.get(name)
                if value is None and name not in _tags.VR_OF:
                    hint = _tags.suggest_keywords(name)
                    maybe = f"; did you mean {', '.join(hint)}?" if hint else ""
                    raise ValueError(
                        f"layout field {{{name}}} is not a main DICOM tag of the instance, "
                        f"its series, study or patient{maybe}"
                    )
                text += safe_component(_format_value(value or "", spec))
        parts.append(text if text.strip(".").strip() else "_")
    return os.path.join(*parts)
