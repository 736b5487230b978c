"""The SOPInstanceUID of a DICOM file, read from its first bytes without pydicom.

An export that is run again skips a file already present only when its size is the
instance's and this UID, read from the file's head, is the instance's too. Anything that
cannot be read here (no UID in the head, a sequence of undefined length before it, an
unknown encoding) gives ``None``, and the file is downloaded again: a wrong guess costs a
request, never a wrong file kept.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

#: How much of a file is read to find its SOPInstanceUID (0008,0018), one of the first
#: elements of a dataset: a first read, enough for almost every file, then at most this.
FIRST_READ = 4 * 1024
HEAD_BYTES = 64 * 1024

_SOP_INSTANCE_UID = (0x0008, 0x0018)
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_UNDEFINED = 0xFFFFFFFF


def read_sop_instance_uid(path: Path) -> str | None:
    """The SOPInstanceUID of the DICOM file at ``path``, or ``None`` when it cannot be read."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(FIRST_READ)
            found = sop_instance_uid(head)
            if found is None and len(head) == FIRST_READ:  # long elements before it?
                head += stream.read(HEAD_BYTES - FIRST_READ)
                found = sop_instance_uid(head)
    except OSError:
        return None
    return found


def sop_instance_uid(head: bytes) -> str | None:
    """The SOPInstanceUID (0008,0018) of the dataset that ``head`` starts, or ``None``.

    ``head`` is a Part-10 file (preamble, ``DICM``, the file meta group in explicit VR
    little endian, then the dataset in the transfer syntax the meta group names: implicit
    or explicit VR little endian, explicit big endian, deflated) or a bare dataset in
    little endian.
    """
    try:
        if head[128:132] == b"DICM":
            syntax, start = _file_meta(head, 132)
            if syntax is None:
                return None
            data = head[start:]
            if syntax == _DEFLATED:
                data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data, HEAD_BYTES)
                return _find(data, explicit=True, little=True)
            if syntax == _IMPLICIT_LITTLE:
                return _find(data, explicit=False, little=True)
            return _find(data, explicit=True, little=syntax != _EXPLICIT_BIG)
        explicit = head[4:6].isalpha() and head[4:6].isupper()
        return _find(head, explicit=explicit, little=True)
    except (struct.error, zlib.error, ValueError):
        return None


def _file_meta(head: bytes, position: int) -> tuple[str | None, int]:
    """The transfer syntax the file meta group names, and where the dataset starts."""
    syntax: str | None = None
    while position + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, position)
        if group != 0x0002:
            return syntax, position
        vr = head[position + 4 : position + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", head, position + 8)
            position += 12
        else:
            (length,) = struct.unpack_from("<H", head, position + 6)
            position += 8
        if length == _UNDEFINED or position + length > len(head):
            return None, position
        if element == 0x0010:
            syntax = _text(head[position : position + length])
        position += length
    return None, position


def _find(data: bytes, *, explicit: bool, little: bool) -> str | None:
    """The value of (0008,0018) in a dataset that starts at ``data[0]``."""
    order = "<" if little else ">"
    position = 0
    while position + 8 <= len(data):
        group, element = struct.unpack_from(order + "HH", data, position)
        if explicit:
            vr = data[position + 4 : position + 6]
            if vr in _LONG_VRS:
                (length,) = struct.unpack_from(order + "I", data, position + 8)
                position += 12
            else:
                (length,) = struct.unpack_from(order + "H", data, position + 6)
                position += 8
        else:
            (length,) = struct.unpack_from(order + "I", data, position + 4)
            position += 8
        tag = (group, element)
        if tag > _SOP_INSTANCE_UID or length == _UNDEFINED:
            return None
        if tag == _SOP_INSTANCE_UID:
            value = data[position : position + length]
            return _text(value) if len(value) == length else None
        position += length
    return None


def _text(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")
