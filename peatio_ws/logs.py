# -*- test-case-name: tests.unit.test_logs,tests.unit.test_service -*-
"""
Logging that a client cannot forge or break, and JSON lines for log
shippers (LOG_FORMAT=json).

Escaping. Uids and other client- or token-supplied strings end up in log
fields. A field ending in a newline would forge a genuine-looking line in the
text log, NUL bytes would go through, and a lone surrogate makes the
observer's UTF-8 write raise, so the line vanishes. Every module therefore
logs through L{logger}, whose events have every non-printable character of
their string fields replaced by a visible escape (L{escape}: C{\\n},
C{\\x00}, C{\\ud800}, ...) before any observer sees them, whatever the
observer. Under twistd, L{protect_process_logging} (called by
L{peatio_ws.tap.makeService}) does the same for every other logger
(Autobahn, Twisted, txAMQP, ...) and makes stdout write what still cannot be
encoded as a backslash escape instead of raising.

One JSON object per line on stdout: C{time} (ISO 8601, UTC), C{level},
C{namespace}, C{message} (the event's format string filled in) and the
event's own named fields (C{conn_id}, C{uid}, …) as top-level keys, plus
C{failure} with the traceback for C{log.failure}. Every string in the line is
escaped as above (the traceback keeps its line breaks, which JSON encodes), so
each event is exactly one line that parses, whoever logged it. Twisted's own
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

Both observers write their lines in batches, at most L{FLUSH_INTERVAL}
after the first (L{BatchedWriter}), not one write and flush per line: a
connection's life logs three lines, and a system call each was a
measurable part of its CPU. Warnings and worse, and every line while no
reactor runs, are written at once; what waits is written at the reactor's
shutdown. A process killed outright (SIGKILL, a crash in C) loses at most
the info lines of its last L{FLUSH_INTERVAL}.
"""

from __future__ import annotations

import io
import json
import math
import re
import sys
import weakref
from datetime import UTC, datetime
from typing import Any, TextIO

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
    timeFormatRFC3339,
)
from twisted.python.components import Componentized
from zope.interface import implementer, provider

__all__ = [
    "EscapingObserver",
    "JSONLinesObserver",
    "LineThrottle",
    "TextFormatter",
    "escape",
    "escape_fields",
    "flush_all",
    "held_note",
    "install",
    "json_observer",
    "logger",
    "protect_process_logging",
]

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


# ---------------------------------------------------------------------------
# Escaping


def escape(text: str, keep: str = "") -> str:
    """
    C{text} with every character that is not printable (C{str.isprintable}:
    control characters, lone surrogates, U+2028/U+2029, format characters;
    a plain space is printable) replaced by its Python escape, e.g. C{\\n},
    C{\\x00}, C{\\ud800}; characters in C{keep} are left as they are.

    Printable text, all of it in practice, is returned as it is after one
    C{isprintable} scan, so the common case costs almost nothing. A
    backslash is not escaped: the point is one visible line per event, not a
    reversible encoding.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in text)


def _escape_items(value: tuple[Any, ...] | list[Any]) -> tuple[Any, ...] | list[Any]:
    """C{value} itself if none of its str items needs escaping, else an escaped copy (never mutated)."""
    if all(type(x) is not str or x.isprintable() for x in value):
        return value
    items = [escape(x) if type(x) is str else x for x in value]
    return items if type(value) is list else tuple(items)


@provider(ILogObserver)
def escape_fields(event: dict[str, Any]) -> None:
    """
    Escape, in place, every str field value of C{event} and every str item
    of its tuple and list fields (L{escape}). Keys starting with C{log_}
    (Twisted's bookkeeping: the format string, namespace, ...) are written
    by code, not clients, and are left alone. Only exact str, tuple and list
    are looked at (C{type() is}, cheaper than C{isinstance} on every value of
    every event); other objects, str subclasses included, format themselves.

    Also an observer: put first on a publisher, it cleans the event for every
    observer after it (a publisher hands them all the same dict).
    """
    # The fast path, nearly every event: one pass over the values, no change.
    for value in event.values():
        kind = type(value)
        if kind is str:
            if not value.isprintable():
                break
        elif kind is tuple or kind is list:
            break
    else:
        return
    changes: dict[str, Any] = {}
    for key, value in event.items():
        kind = type(value)
        if key.startswith("log_") or (kind is not str and kind is not tuple and kind is not list):
            continue
        new = escape(value) if kind is str else _escape_items(value)
        if new is not value:
            changes[key] = new
    event.update(changes)


@implementer(ILogObserver)
class EscapingObserver:
    """Escapes each event's fields (L{escape_fields}), then hands it on to C{observer}."""

    __slots__ = ("_observer",)

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict[str, Any]) -> None:
        escape_fields(event)
        self._observer(event)


def logger(namespace: str, observer: ILogObserver | None = None) -> Logger:
    """
    The project's logger: a L{Logger} for C{namespace} whose events are
    escaped (L{escape_fields}) before they reach C{observer} (default: the
    global log publisher, i.e. whatever observers the runner installed).

    Use it instead of C{Logger(...)}: a client-supplied uid in a field then
    can neither forge a log line nor make an observer fail, whatever the
    observer. (Being a plain L{Logger}, it also works as a class attribute.)
    """
    target = globalLogPublisher if observer is None else observer
    return Logger(namespace=namespace, observer=EscapingObserver(target))


def protect_process_logging(publisher: LogPublisher | None = None, stream: TextIO | None = None) -> None:
    """
    Make the process's log output safe from what other libraries log, for
    twistd's own observers (text to stdout or a file, syslog) as for ours:

     - L{escape_fields} becomes an observer of C{publisher} (default: the
       global one). Called before twistd starts logging, it precedes the
       observers twistd then adds, and since a publisher hands every observer
       the same event, each of them sees the fields escaped.
     - C{stream} (default: C{sys.stdout}, where C{twistd -n} writes) writes
       what it cannot encode as a backslash escape instead of raising: a
       lone surrogate in text that is not a field (a traceback, a legacy
       message) no longer makes the observer fail and the line vanish.

    Idempotent. Not for tests or libraries: it changes process-wide state.
    """
    (globalLogPublisher if publisher is None else publisher).addObserver(escape_fields)
    out = sys.stdout if stream is None else stream
    if isinstance(out, io.TextIOWrapper) and out.errors != "backslashreplace":
        out.reconfigure(errors="backslashreplace")


# ---------------------------------------------------------------------------
# JSON lines


def _plain(value: Any) -> Any:
    """C{value} if JSON can carry it as is (strings escaped), else its escaped C{str}."""
    if isinstance(value, str):
        return escape(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(
        x is None or isinstance(x, (bool, int, float, str)) for x in value
    ):
        return [escape(x) if isinstance(x, str) else x for x in value]
    try:
        return escape(str(value))
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _message(event: dict[str, Any]) -> str:
    """The event's text: a plain format filled in with C{str.format_map} (C speed), else Twisted's formatEvent."""
    text_format = event.get("log_format")
    if type(text_format) is not str or "log_flattened" in event:
        return formatEvent(event)
    try:
        return text_format.format_map(event)
    except Exception:
        # A format only Twisted's formatter fills ("{f()}"), or a broken one: its own text.
        return formatEvent(event)


def event_as_dict(event: dict[str, Any]) -> dict[str, Any]:
    """
    The flat, JSON-ready form of one twisted.logger event, every string in
    it escaped (L{escape}); the traceback keeps its line breaks.
    """
    safe = {
        key: (_REDACTED if not key.startswith("log_") and _SECRET_NAME.search(key) else value)
        for key, value in event.items()
    }
    # Events of other libraries' loggers were not escaped at the source.
    escape_fields(safe)
    level = event.get("log_level")
    when = event.get("log_time")
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
        if isinstance(when, (int, float))
        else None,
        "level": getattr(level, "name", "info"),
        "namespace": escape(str(event.get("log_namespace") or event.get("log_system") or "-")),
        # The message too: the format string, a legacy log_text or a
        # redirected print (log_io) may hold anything.
        "message": escape(_message(safe)) if ("log_format" in event or "message" in event) else "",
    }
    if event.get("log_io") is not None and not line["message"]:
        line["message"] = escape(str(event["log_io"]))
    for key, value in safe.items():
        if key in _SKIP or key in line or key.startswith("log_"):
            continue
        line[key] = _plain(value)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            line["failure"] = escape(failure.getTraceback(), keep="\n")
        except Exception:
            line["failure"] = escape(repr(failure))
        try:
            line.setdefault("error", escape(failure.getErrorMessage()))
        except Exception:
            line.setdefault("error", "<unprintable error>")
    return line


#: Levels written as soon as they are logged.
_URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})
#: Seconds an info line may wait before it is written.
FLUSH_INTERVAL = 0.05
#: Characters of lines waiting that are written at once, whatever the time.
FLUSH_SIZE = 64 * 1024


#: Every writer made, for L{flush_all}.
_writers: weakref.WeakSet[BatchedWriter] = weakref.WeakSet()


def flush_all() -> None:
    """
    Write what every L{BatchedWriter} holds now: before the process image
    is replaced (a restart in place, L{peatio_ws.reexec}), which no
    shutdown trigger sees.
    """
    for writer in list(_writers):
        writer.flush()


class BatchedWriter:
    """
    Writes log lines to a stream in batches: a line is kept until
    L{FLUSH_INTERVAL} after the first line kept, or until L{FLUSH_SIZE}
    characters wait, then all are written in one write and flushed. A
    warning or worse is written at once with what waits before it, as is
    every line while no reactor runs (before twistd starts it, after it
    stopped); what waits at the reactor's shutdown is written then. The
    reactor is the one installed, looked up when needed (a log observer is
    made before it is installed), unless one is given. The stream's own
    buffering does not matter (C{PYTHONUNBUFFERED}, a log file).
    """

    def __init__(self, out: Any, reactor: Any = None) -> None:
        self._out = out
        self._reactor = reactor
        self._lines: list[str] = []
        self._size = 0
        self._pending: Any = None
        self._at_shutdown = False
        _writers.add(self)

    def write(self, text: str, event: dict[str, Any]) -> None:
        """Write C{text}, the line of C{event}, now or with the next batch."""
        self._lines.append(text)
        self._size += len(text)
        if self._size >= FLUSH_SIZE or event.get("log_level") in _URGENT:
            self.flush()
            return
        if self._pending is not None:
            return
        reactor = self._reactor if self._reactor is not None else sys.modules.get("twisted.internet.reactor")
        if reactor is None or not getattr(reactor, "running", False):
            self.flush()
            return
        self._pending = reactor.callLater(FLUSH_INTERVAL, self.flush)
        if not self._at_shutdown:
            self._at_shutdown = True
            reactor.addSystemEventTrigger("after", "shutdown", self.flush)

    def flush(self) -> None:
        """Write and flush what waits now (a batch scheduled, unless it is this call, is cancelled)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending.active():
            pending.cancel()
        # Taken before the write: a stream that fails does not make lines pile up.
        text, self._lines, self._size = "".join(self._lines), [], 0
        if text:
            self._out.write(text)
        self._out.flush()


@implementer(ILogObserver)
class TextLinesObserver:
    """
    Twisted's C{FileLogObserver} with its write and flush per line batched
    (L{BatchedWriter}): each event formatted by C{formatEvent}.
    """

    def __init__(self, out: Any, formatEvent: Any, reactor: Any = None) -> None:
        self._format = formatEvent
        self._writer = BatchedWriter(out, reactor)

    def __call__(self, event: dict[str, Any]) -> None:
        text = self._format(event)
        if text:
            self._writer.write(text, event)


@implementer(ILogObserver)
class JSONLinesObserver:
    """Writes each event as one JSON line to a text stream, in batches (L{BatchedWriter})."""

    def __init__(self, out: TextIO, reactor: Any = None) -> None:
        self._writer = BatchedWriter(out, reactor)

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            line = event_as_dict(event)
            text = json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)
            if not text.isprintable():
                # Something escaping missed (a field name, say): pure ASCII
                # JSON can always be written and is still one line.
                text = json.dumps(line, separators=(",", ":"), default=str)
        except Exception as e:
            text = json.dumps({"level": "error", "namespace": "peatio_ws.logs", "message": f"unloggable event: {e}"})
        self._writer.write(text + "\n", event)


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


# ---------------------------------------------------------------------------
# Text lines, fast


class TextFormatter:
    """
    Twisted's classic text line (C{formatEventAsClassicLogText}: time,
    C{[namespace#level]}, message, continuation lines indented), the same
    bytes, about seven times cheaper for the events the daemon writes on
    every connection: the time is formatted once per second, and a plain
    C{log_format} is filled in with C{str.format_map} instead of Twisted's
    Python-level formatter (58 µs a line, three lines a connection, were a
    third of the CPU a connection costs; docs/benchmarks.md). Anything
    else (a failure, a legacy event, a format C{format_map} cannot fill)
    goes to Twisted's own function.
    """

    __slots__ = ("_second", "_stamp", "_time_format")

    def __init__(self, time_format: str | None = timeFormatRFC3339) -> None:
        self._time_format = time_format
        self._second: int | None = None
        self._stamp = "-"

    def __call__(self, event: dict[str, Any]) -> str | None:
        text_format = event.get("log_format")
        when = event.get("log_time")
        if (
            type(text_format) is not str
            or "log_failure" in event
            or "log_flattened" in event
            or self._time_format is None
            or not isinstance(when, (int, float))
        ):
            return formatEventAsClassicLogText(event, formatTime=lambda w: formatTime(w, self._time_format))
        try:
            text = text_format.format_map(event)
        except Exception:
            return formatEventAsClassicLogText(event, formatTime=lambda w: formatTime(w, self._time_format))
        if not text:
            return None
        second = int(when // 1)
        if second != self._second:
            self._stamp = formatTime(when, self._time_format)
            self._second = second
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
        else:
            try:
                system = str(system)
            except Exception:
                system = "UNFORMATTABLE"
        return f"{self._stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


class LineThrottle:
    """
    At most one log line per key and interval, for lines a client can cause
    at will (a refused socket, a closed flooder): without it one address
    could write megabytes of log per second. Each line that is written says
    how many were held back since the last one.
    """

    def __init__(self, clock: Any, interval: float = 1.0) -> None:
        self._clock = clock
        self._interval = interval
        #: key -> (when the last line was written, lines held back since)
        self._state: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str) -> int | None:
        """None: do not write this line; else write it, noting the returned count held back."""
        now = self._clock.seconds()
        last, held = self._state.get(key, (-math.inf, 0))
        if now - last < self._interval:
            self._state[key] = (last, held + 1)
            return None
        self._state[key] = (now, 0)
        return held


def held_note(count: int) -> str:
    """What a throttled line says of the lines held back before it ("" when none were)."""
    return f" ({count} more not logged)" if count else ""
