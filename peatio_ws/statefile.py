# -*- test-case-name: tests.unit.test_statefile -*-
"""
Files a clean stop leaves for the next process (RABBITMQ_HANDOVER_FILE,
JWT_HANDOVER_FILE): written whole or not at all, readable by this user only,
and taken by exactly one reader.

A file is written to a temporary file in the same directory and renamed
over the path, so a reader sees the whole of it or nothing. It is not synced
to disk: after a power cut the next process may find it empty or missing,
and starts as it would without it. Taking a file reads it and removes it, so
of two processes given one file only one can take it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

__all__ = ["StateFileError", "json_object", "leave", "take"]


class StateFileError(Exception):
    """The file could not be read, removed or written: C{str()} says why, in one line."""


def take(path: str, max_bytes: int) -> bytes | None:
    """
    What was left at C{path}, removing the file: None when there is none
    (or another process took it first).

    @raise StateFileError: the file is there but unreadable, or larger than
        C{max_bytes} (it is removed all the same when it can be, so it is
        not met again).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StateFileError(f"cannot read it: {e.strerror or e}") from None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None  # taken by another process between our read and our unlink
    except OSError as e:
        raise StateFileError(f"cannot remove it: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise StateFileError(f"larger than {max_bytes} bytes")
    return data


def json_object(data: bytes, format: int) -> dict[str, Any]:
    """
    The JSON object a state file holds, of this version's C{format}.

    @raise StateFileError: not JSON, not an object, or another C{format}.
    """
    try:
        raw = json.loads(data)
    except ValueError:
        raise StateFileError("not JSON") from None
    if not isinstance(raw, dict):
        raise StateFileError("not a JSON object")
    if raw.get("format") != format:
        raise StateFileError(f"format {raw.get('format')!r}, this version reads {format}")
    return raw


def leave(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path}, whole or not at all (a temporary file in the
    same directory, renamed over it), readable by this user only.

    @raise StateFileError: it could not be written.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temporary, path)
    except OSError as e:
        # A failed write leaves no temporary file behind.
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise StateFileError(f"cannot write it: {e.strerror or e}") from None
