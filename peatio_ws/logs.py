# -*- test-case-name: peatio_ws.test.test_service -*-
"""
JSON-lines logging for log shippers (LOG_FORMAT=json).

One JSON object per line on stdout: C{time} (ISO 8601, UTC), C{level},
C{namespace}, C{message} (the event's format string filled in) and the
event's own named fields (C{conn_id}, C{uid}, …) as top-level keys, plus
C{failure} with the traceback for C{log.failure}. Twisted's own
C{jsonFileLogObserver} is not used: it writes RFC 7464 record separators and
nests the level as an object, which line-based shippers do not expect.

Two ways to switch it on:

 - C{twistd --logger peatio_ws.logs.json_observer peatio-ws}, or
 - LOG_FORMAT=json: the daemon sets L{json_observer} as the
   L{ILogObserver} component of twistd's Application (L{install}), which
   twistd's logger reads when it starts, after C{makeService}.

Fields whose names say they hold a secret (token, jwt, password, …) are
replaced by C{"[redacted]"}, in the fields and in the message, as a second
line of defence: the code never logs them in the first place.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import ILogObserver, formatEvent
from twisted.python.components import Componentized
from zope.interface import implementer

__all__ = ["JSONLinesObserver", "install", "json_observer"]

_SECRET_NAME = re.compile(r"token|jwt|password|passwd|secret|authorization|private", re.IGNORECASE)
_REDACTED = "[redacted]"

#: Twisted's bookkeeping keys that become the line's fixed fields or are dropped.
_SKIP = frozenset(
    {
        "log_format",
        "log_level",
        "log_namespace",
        "log_source",
        "log_time",
        "log_logger",
        "log_failure",
        "log_trace",
        "log_observer",
        "log_flattened",
        "log_text",
        "log_io",
        "log_system",
        "log_legacy",
        "format",
        "message",
        "isError",
        "system",
        "time",
        "why",
        "failure",
    }
)


def _plain(value: Any) -> Any:
    """C{value} if JSON can carry it as is, else its C{str}."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(
        x is None or isinstance(x, (bool, int, float, str)) for x in value
    ):
        return list(value)
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def event_as_dict(event: dict[str, Any]) -> dict[str, Any]:
    """The flat, JSON-ready form of one twisted.logger event."""
    safe = {
        key: (_REDACTED if not key.startswith("log_") and _SECRET_NAME.search(key) else value)
        for key, value in event.items()
    }
    level = event.get("log_level")
    when = event.get("log_time")
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace") or event.get("log_system") or "-",
        "message": formatEvent(safe) if ("log_format" in event or "message" in event) else "",
    }
    if event.get("log_io") is not None and not line["message"]:
        line["message"] = str(event["log_io"])
    for key, value in safe.items():
        if key in _SKIP or key in line or key.startswith("log_"):
            continue
        line[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["failure"] = failure.getTraceback()
        except Exception:
            line["failure"] = repr(failure)
        line.setdefault("error", failure.getErrorMessage())
    return line


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON line to a text stream, flushed at once."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            text = json.dumps(event_as_dict(event), ensure_ascii=False, separators=(",", ":"), default=str)
        except Exception as e:
            text = json.dumps({"level": "error", "namespace": "peatio_ws.logs", "message": f"unloggable event: {e}"})
        self._out.write(text + "\n")
        self._out.flush()


def json_observer() -> JSONLinesObserver:
    """
    A JSON-lines observer on the current stdout; the factory for
    C{twistd --logger peatio_ws.logs.json_observer}.

    stdout is taken now, before twistd redirects C{sys.stdout} into the log
    (writing there afterwards would loop).
    """
    return JSONLinesObserver(sys.stdout)


def install(application: object) -> bool:
    """
    Make twistd log JSON lines for C{application}: set L{json_observer} as
    its L{ILogObserver} component, unless one is set already. True if set.

    twistd reads the component when its logger starts, after C{makeService}
    returned, which is why the daemon does this from C{setServiceParent}.
    A C{--logger} given on the command line still wins.
    """
    if not isinstance(application, Componentized):
        return False
    if application.getComponent(ILogObserver, None) is not None:
        return False
    application.setComponent(ILogObserver, json_observer())
    return True
