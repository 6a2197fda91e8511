"""
Tests for L{peatio_ws.logs}' escaping: a client-supplied string in a log
field can neither forge a line nor make an observer fail, in the text format
and in JSON lines, whoever logged it.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from peatio_ws import logs, tap
from peatio_ws.logs import JSONLinesObserver, LineThrottle, escape, escape_fields, logger, protect_process_logging
from peatio_ws.testing import public_key_b64, rsa_key

FORGED = "bob\nINFO forged"


def strict_utf8() -> tuple[io.BytesIO, io.TextIOWrapper]:
    """A text stream like stdout under a UTF-8 locale: encoding errors raise."""
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)


@implementer(ILogObserver)
class Recorder:
    """An observer keeping the events it sees."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class EscapeTests(SynchronousTestCase):
    def test_table(self) -> None:
        """Each non-printable character becomes its visible Python escape; printable text is untouched."""
        cases = [
            ("ID1A2B3C4D5E", "ID1A2B3C4D5E"),
            ("a b", "a b"),
            ("比特币 Ünïcødé 😀", "比特币 Ünïcødé 😀"),
            ("a\\nb", "a\\nb"),  # a literal backslash is printable and stays
            (FORGED, "bob\\nINFO forged"),
            ("a\r\n", "a\\r\\n"),
            ("\t", "\\t"),
            ("\x00", "\\x00"),
            ("\x1b[31m", "\\x1b[31m"),
            ("\x7f", "\\x7f"),
            ("\x85", "\\x85"),
            ("\ud800", "\\ud800"),
            ("x\udfffy", "x\\udfffy"),
            ("\u2028\u2029", "\\u2028\\u2029"),
            ("\u202eevil", "\\u202eevil"),
            ("\U000e0001", "\\U000e0001"),
        ]
        self.assertEqual([(text, escape(text)) for text, _ in cases], cases)

    def test_printable_is_same_object(self) -> None:
        """The fast path returns the very string it was given."""
        text = "ID1A2B3C4D5E"
        self.assertIs(escape(text), text)

    def test_keep(self) -> None:
        """Characters in C{keep} stay as they are, others are still escaped."""
        self.assertEqual(escape("a\nb\x00", keep="\n"), "a\nb\\x00")


class EscapeFieldsTests(SynchronousTestCase):
    def test_fields_escaped_bookkeeping_not(self) -> None:
        """str fields and str items of tuple/list fields are escaped; log_ keys and other objects are not."""
        items = ["ok", "x\ny"]
        marker = object()
        event: dict[str, Any] = {
            "uid": FORGED,
            "plain": "ID1",
            "items": items,
            "pair": ("a\x00", 1),
            "number": 5,
            "obj": marker,
            "log_format": "line1\nline2 {uid}",
            "log_namespace": "n\x00",
        }
        escape_fields(event)
        self.assertEqual(
            event,
            {
                "uid": "bob\\nINFO forged",
                "plain": "ID1",
                "items": ["ok", "x\\ny"],
                "pair": ("a\\x00", 1),
                "number": 5,
                "obj": marker,
                "log_format": "line1\nline2 {uid}",
                "log_namespace": "n\x00",
            },
        )
        self.assertEqual(items, ["ok", "x\ny"], "the caller's list is not mutated")

    def test_printable_event_untouched(self) -> None:
        """An event with nothing to escape keeps its very values."""
        uid = "ID1A2B3C4D5E"
        items = ["a"]
        event: dict[str, Any] = {"uid": uid, "items": items, "log_format": "{uid}"}
        escape_fields(event)
        self.assertIs(event["uid"], uid)
        self.assertIs(event["items"], items)


class LoggerTests(SynchronousTestCase):
    def test_text_forged_line(self) -> None:
        """A uid ending a line and starting a forged one is written as one text line, \\n visible."""
        out = io.StringIO()
        log = logger("peatio_ws.protocol", observer=textFileLogObserver(out))
        log.info("connection {conn_id} authenticated as {uid}", conn_id="c1", uid=FORGED)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].endswith("connection c1 authenticated as bob\\nINFO forged"), lines)
        self.assertFalse(any(line.startswith("INFO forged") for line in lines))

    def test_format_event(self) -> None:
        """formatEvent on the event the observer receives gives the escaped message."""
        seen = Recorder()
        logger("t", observer=seen).info("as {uid}", uid=FORGED)
        self.assertEqual(formatEvent(seen.events[0]), "as bob\\nINFO forged")

    def test_json_forged_line(self) -> None:
        """In JSON lines the same uid gives exactly one line that parses, the value escaped."""
        out = io.StringIO()
        logger("peatio_ws.protocol", observer=JSONLinesObserver(out)).info("as {uid}", uid=FORGED)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        line = json.loads(lines[0])
        self.assertEqual(line["uid"], "bob\\nINFO forged")
        self.assertEqual(line["message"], "as bob\\nINFO forged")

    def test_nul(self) -> None:
        """NUL never reaches the output raw, in either format; it shows as \\x00."""
        text, js = io.StringIO(), io.StringIO()
        for observer in (textFileLogObserver(text), JSONLinesObserver(js)):
            logger("t", observer=observer).info("as {uid}", uid="ID\x00X")
        self.assertNotIn("\x00", text.getvalue() + js.getvalue())
        self.assertIn("as ID\\x00X", text.getvalue())
        self.assertEqual(json.loads(js.getvalue())["uid"], "ID\\x00X")

    def test_lone_surrogate_written(self) -> None:
        """A lone surrogate does not make a strict UTF-8 text observer raise: the line is written."""
        raw, stream = strict_utf8()
        logger("t", observer=textFileLogObserver(stream)).info("as {uid}", uid="ID\ud800")
        self.assertIn(b"as ID\\ud800\n", raw.getvalue())

    def test_unescaped_surrogate_would_raise(self) -> None:
        """The failure the escaping prevents: a plain Logger's surrogate makes the same observer raise."""
        _, stream = strict_utf8()
        plain = Logger(namespace="t", observer=textFileLogObserver(stream))
        self.assertRaises(UnicodeEncodeError, plain.info, "as {uid}", uid="ID\ud800")

    def test_printable_non_ascii_kept(self) -> None:
        """Chinese and other printable non-ASCII text stays as it is, in text and in JSON."""
        text, js = io.StringIO(), io.StringIO()
        for observer in (textFileLogObserver(text), JSONLinesObserver(js)):
            logger("t", observer=observer).info("as {uid}", uid="比特币-Ü")
        self.assertIn("as 比特币-Ü", text.getvalue())
        self.assertIn("比特币-Ü", js.getvalue())
        self.assertEqual(json.loads(js.getvalue())["uid"], "比特币-Ü")

    def test_default_observer_is_global(self) -> None:
        """Without an observer, events go to the global publisher, escaped."""
        seen = Recorder()
        globalLogPublisher.addObserver(seen)
        self.addCleanup(globalLogPublisher.removeObserver, seen)
        logger("peatio_ws.test_logs").info("as {uid}", uid=FORGED)
        [event] = [e for e in seen.events if e.get("log_namespace") == "peatio_ws.test_logs"]
        self.assertEqual(event["uid"], "bob\\nINFO forged")

    def test_class_attribute(self) -> None:
        """As a class attribute (Logger's descriptor) it keeps escaping, with the class namespace."""
        seen = Recorder()

        class Thing:
            log = logger("x", observer=seen)

        Thing().log.info("{uid}", uid=FORGED)
        self.assertEqual(seen.events[0]["uid"], "bob\\nINFO forged")
        self.assertTrue(seen.events[0]["log_namespace"].endswith("Thing"))

    def test_failure_kept(self) -> None:
        """log.failure still carries the Failure (it is not a string and is not touched)."""
        seen = Recorder()
        try:
            raise ValueError("boom")
        except ValueError:
            logger("t", observer=seen).failure("handling {uid}", uid=FORGED)
        event = seen.events[0]
        self.assertTrue(event["log_failure"].check(ValueError))
        self.assertEqual(event["uid"], "bob\\nINFO forged")


class JSONRobustnessTests(SynchronousTestCase):
    """The JSON observer is safe on its own, for events no one escaped (other libraries' loggers)."""

    def emit(self, write: Any) -> tuple[bytes, list[dict[str, Any]]]:
        raw, stream = strict_utf8()
        write(Logger(namespace="library", observer=JSONLinesObserver(stream)))
        data = raw.getvalue()
        return data, [json.loads(line) for line in data.decode("utf-8").splitlines()]

    def test_forged_line_from_plain_logger(self) -> None:
        """A newline in a field of an unescaped event still gives one line, escaped."""
        data, [line] = self.emit(lambda log: log.info("as {uid}", uid=FORGED, items=["a\nb"]))
        self.assertEqual(data.count(b"\n"), 1)
        self.assertEqual(line["uid"], "bob\\nINFO forged")
        self.assertEqual(line["items"], ["a\\nb"])
        self.assertEqual(line["message"], "as bob\\nINFO forged")

    def test_surrogates_everywhere(self) -> None:
        """Lone surrogates in a field, the message and the failure text: the line is still written."""

        def write(log: Logger) -> None:
            try:
                raise ValueError("bad \ud800 value")
            except ValueError:
                log.failure("handling {uid} \udfff", uid="ID\ud800")

        _, [line] = self.emit(write)
        self.assertEqual(line["uid"], "ID\\ud800")
        self.assertEqual(line["message"], "handling ID\\ud800 \\udfff")
        self.assertIn("bad \\ud800 value", line["failure"])
        self.assertEqual(line["error"], "bad \\ud800 value")
        self.assertIn("\n", line["failure"], "the traceback keeps its line breaks")

    def test_odd_field_name(self) -> None:
        """Even a field name JSON would carry raw (U+2028) cannot break the line: it falls back to ASCII JSON."""
        data, [line] = self.emit(lambda log: log.info("x", **{"we\u2028ird": "v\u2029"}))
        self.assertTrue(data.isascii())
        self.assertEqual(line["we\u2028ird"], "v\\u2029")


class ProtectProcessLoggingTests(SynchronousTestCase):
    """What the daemon does under twistd for observers it does not own (twistd's text observer)."""

    def test_fields_escaped_for_later_observers(self) -> None:
        """Escaping goes first on the publisher: an observer added later (twistd's) sees escaped fields."""
        publisher = LogPublisher()
        _, stream = strict_utf8()
        protect_process_logging(publisher, stream)
        out = io.StringIO()
        publisher.addObserver(textFileLogObserver(out))
        Logger(namespace="autobahn", observer=publisher).info("reason {reason}", reason="x\nINFO forged\x00")
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].endswith("reason x\\nINFO forged\\x00"), lines)

    def test_surrogate_in_traceback_written(self) -> None:
        """A lone surrogate outside the fields (a library's failure text) is written as an escape, not lost."""
        publisher = LogPublisher()
        raw, stream = strict_utf8()
        protect_process_logging(publisher, stream)
        publisher.addObserver(textFileLogObserver(stream))
        # LogPublisher reports a failing observer to the *others*; with one
        # observer, a raise would just lose the line, so record it instead.
        reports = Recorder()
        publisher.addObserver(reports)
        try:
            raise ValueError("bad \ud800 value")
        except ValueError:
            Logger(namespace="library", observer=publisher).failure("oops")
        self.assertEqual([e for e in reports.events if "observer" in e], [])
        self.assertIn(b"bad \\ud800 value", raw.getvalue())

    def test_idempotent(self) -> None:
        """Calling it twice neither doubles the escaping observer nor changes the stream again."""
        publisher = LogPublisher()
        _, stream = strict_utf8()
        protect_process_logging(publisher, stream)
        protect_process_logging(publisher, stream)
        self.assertEqual(publisher._observers.count(escape_fields), 1)
        self.assertEqual(stream.errors, "backslashreplace")
        self.assertTrue(ILogObserver.providedBy(escape_fields))

    def test_other_streams_left_alone(self) -> None:
        """A stream that is not a TextIOWrapper (a StringIO, a test double) is not touched."""
        stream = io.StringIO()
        protect_process_logging(LogPublisher(), stream)
        self.assertEqual(stream.getvalue(), "")


class TwistdWiringTests(SynchronousTestCase):
    """L{tap.makeService} protects the process's logging only when twistd runs it."""

    def setUp(self) -> None:
        self.patch(os, "environ", {"JWT_PUBLIC_KEY": public_key_b64(rsa_key())})
        self.calls: list[tuple[Any, ...]] = []
        self.patch(logs, "protect_process_logging", lambda *a: self.calls.append(a))

    def test_under_twistd(self) -> None:
        """With a parent (twistd's ServerOptions), makeService protects logging before twistd's observers."""
        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "0"])
        options.parent = usage.Options()
        tap.makeService(options)
        self.assertEqual(self.calls, [()])

    def test_not_from_tests(self) -> None:
        """Called directly (tests, tools), it leaves process-wide logging alone."""
        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "0"])
        tap.makeService(options)
        self.assertEqual(self.calls, [])


class LineThrottleTests(SynchronousTestCase):
    """L{LineThrottle}: one line per key and interval, and the count held back."""

    def test_one_line_per_interval(self) -> None:
        clock = Clock()
        throttle = LineThrottle(clock, interval=1.0)
        self.assertEqual(throttle("refused"), 0)
        self.assertEqual([throttle("refused") for _ in range(5)], [None] * 5)
        self.assertEqual(throttle("other"), 0)
        clock.advance(0.999)
        self.assertIsNone(throttle("refused"))
        clock.advance(0.001)
        self.assertEqual(throttle("refused"), 6)
        self.assertIsNone(throttle("refused"))


class Stream(io.StringIO):
    """A text stream that records each write and each flush (with what had been written by then)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushed: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushed.append(self.getvalue())
        super().flush()


class BatchedWriterTests(SynchronousTestCase):
    """
    The log observers write their lines in batches, FLUSH_INTERVAL after the
    first at most; warnings, and lines without a running reactor, at once.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.running = True
        self.out = Stream()

    def event(self, text: str, level: LogLevel = LogLevel.info) -> dict[str, Any]:
        return {"log_format": text, "log_level": level, "log_time": 0.0, "log_namespace": "t"}

    def observers(self) -> list[Any]:
        return [
            logs.TextLinesObserver(self.out, lambda e: formatEvent(e) + "\n", self.reactor),
            JSONLinesObserver(self.out, self.reactor),
        ]

    def test_one_write_per_interval(self) -> None:
        """Lines are kept and written in one write, flushed, FLUSH_INTERVAL after the first, not before."""
        for n in range(2):
            self.out = Stream()
            observer = self.observers()[n]
            observer(self.event("line 0"))
            self.reactor.advance(logs.FLUSH_INTERVAL * 0.5)
            observer(self.event("line 1"))
            observer(self.event("line 2"))
            self.reactor.advance(logs.FLUSH_INTERVAL * 0.49)
            self.assertEqual((self.out.writes, self.out.flushed), ([], []))
            self.reactor.advance(logs.FLUSH_INTERVAL * 0.02)
            [batch] = self.out.writes
            self.assertEqual(batch.count("line"), 3)
            self.assertEqual(self.out.flushed, [batch])
            observer(self.event("later"))
            self.reactor.advance(logs.FLUSH_INTERVAL)
            self.assertEqual(len(self.out.writes), 2)
            self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_exact_lines(self) -> None:
        """A batch is the lines one after the other, exactly as written one by one."""
        [text, _] = self.observers()
        for n in range(5):
            text(self.event(f"n={n}"))
        self.reactor.advance(logs.FLUSH_INTERVAL)
        self.assertEqual(self.out.getvalue(), "".join(f"n={n}\n" for n in range(5)))

    def test_warnings_at_once(self) -> None:
        """A warning (or worse) is written when logged, after what waited; nothing stays scheduled."""
        for level in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            self.out = Stream()
            [text, _] = self.observers()
            text(self.event("info first"))
            text(self.event("then bad", level))
            self.assertEqual(self.out.writes, ["info first\nthen bad\n"])
            self.assertEqual(len(self.out.flushed), 1)
            self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_size_bound(self) -> None:
        """Past FLUSH_SIZE characters waiting, the batch is written at once."""
        [text, _] = self.observers()
        line = "x" * 999
        for _ in range(logs.FLUSH_SIZE // 1000 - 1):
            text(self.event(line))
        self.assertEqual(self.out.writes, [])
        text(self.event(line))
        text(self.event(line))
        [batch] = self.out.writes
        self.assertEqual(len(batch), 1000 * (logs.FLUSH_SIZE // 1000 + 1))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_reactor_running(self) -> None:
        """Before the reactor runs and after it stopped, every line is written at once."""
        self.reactor.running = False
        [text, json_lines] = self.observers()
        text(self.event("a"))
        json_lines(self.event("b"))
        self.assertEqual(len(self.out.writes), 2)
        self.assertEqual(len(self.out.flushed), 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_written_at_shutdown(self) -> None:
        """What waits is written after the reactor's shutdown, the trigger added once."""
        [text, _] = self.observers()
        text(self.event("last"))
        self.reactor.advance(logs.FLUSH_INTERVAL)
        text(self.event("very last"))
        self.assertEqual(list(self.reactor.triggers), ["after"])
        [(flush, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        flush(*args, **kwargs)
        self.assertEqual(self.out.writes, ["last\n", "very last\n"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failed_write(self) -> None:
        """A stream that fails raises from the write, and what it failed to take is not kept."""
        [text, _] = self.observers()
        text(self.event("lost"))
        self.patch(self.out, "write", lambda text: 1 / 0)
        self.assertRaises(ZeroDivisionError, text, self.event("bad", LogLevel.error))
        del self.out.write
        text(self.event("after", LogLevel.error))
        self.assertEqual(self.out.writes, ["after\n"])

    def test_installed_reactor_by_default(self) -> None:
        """Without a reactor given, the one installed is used; with none installed, lines are written at once."""
        writer = logs.BatchedWriter(self.out)
        self.patch(sys, "modules", {**sys.modules, "twisted.internet.reactor": self.reactor})
        writer.write("x\n", self.event("x"))
        self.assertEqual(self.out.writes, [])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.patch(sys, "modules", {k: v for k, v in sys.modules.items() if k != "twisted.internet.reactor"})
        logs.BatchedWriter(self.out).write("y\n", self.event("y"))
        self.assertEqual(self.out.writes, ["y\n"])
