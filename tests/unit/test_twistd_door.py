"""
The door to twistd's internals (L{peatio_ws._twistd}, written against
Twisted 26.10.0): each name and behaviour it relies on, checked so an
upgrade that moves one fails here, naming it. Also: the fast text lines are
Twisted's own, byte for byte.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import io
from typing import Any, ClassVar

import twisted.logger
from twisted.application import app
from twisted.logger import ILogObserver, LogLevel, formatEventAsClassicLogText
from twisted.scripts import _twistd_unix
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import _twistd
from peatio_ws.logs import TextFormatter, TextLinesObserver

WRITTEN_AGAINST = "26.10.0"
INSTALLED = importlib.metadata.version("twisted")


class TwistdDoorTests(SynchronousTestCase):
    def test_loggers_build_the_text_observer_by_name(self) -> None:
        """twistd's loggers call logger.textFileLogObserver(logFile) on the twisted.logger module."""
        for cls in (_twistd_unix.UnixAppLogger, app.AppLogger):
            source = inspect.getsource(cls._getLogObserver)
            self.assertIn(
                "logger.textFileLogObserver(logFile)",
                source,
                f"{cls.__qualname__}._getLogObserver no longer builds its observer by that name "
                f"(Twisted {INSTALLED}; the door was written against {WRITTEN_AGAINST})",
            )
        self.assertIs(_twistd_unix.logger, twisted.logger)
        self.assertIs(app.logger, twisted.logger)

    def test_patch_builds_a_text_observer(self) -> None:
        """The replacement builds a TextLinesObserver around TextFormatter, with twistd's signature."""
        original = twisted.logger.textFileLogObserver
        self.addCleanup(setattr, twisted.logger, "textFileLogObserver", original)
        ours = inspect.signature(_twistd.fast_text_file_log_observer).parameters
        self.assertEqual(list(inspect.signature(original).parameters), list(ours))
        _twistd.use_fast_text_log()
        out = io.StringIO()
        observer = twisted.logger.textFileLogObserver(out)
        self.assertIsInstance(observer, TextLinesObserver)
        self.assertTrue(ILogObserver.providedBy(observer))
        observer({"log_format": "hello {who}", "who": "world", "log_time": 0.0, "log_namespace": "n",
                  "log_level": LogLevel.info})
        self.assertEqual(out.getvalue().split(" ", 1)[1], "[n#info] hello world\n")


class TextFormatterTests(SynchronousTestCase):
    """TextFormatter writes exactly what Twisted's classic text format writes."""

    BASE: ClassVar[dict[str, Any]] = {"log_time": 1_764_700_000.25, "log_namespace": "peatio_ws.protocol",
                            "log_level": LogLevel.info}
    EVENTS: ClassVar[list[dict[str, Any]]] = [
        {"log_format": "connection {conn_id} of {uid}: {code}{why}", "conn_id": "a-1", "uid": "ID1", "code": 1000,
         "why": ""},
        {"log_format": "two\nlines {x!r}", "x": "y\nz"},
        {"log_format": "spec {v:g} {v:.3f}", "v": 1.5},
        {"log_format": ""},
        {"log_format": "system", "log_system": "custom"},
        {"log_format": "missing {nope}"},
        {"log_format": "call {f()}", "f": lambda: "called"},
        {"log_format": "attribute {e.args} item {d[k]}", "e": ValueError("x"), "d": {"k": 2}},
        {"log_format": "no level", "log_level": None},
        {"log_format": "no time", "log_time": None},
        {"log_text": "legacy"},
    ]

    def test_same_lines(self) -> None:
        formatter = TextFormatter()
        for extra in self.EVENTS:
            event = {**self.BASE, **extra}
            with self.subTest(event=extra):
                self.assertEqual(formatter(dict(event)), formatEventAsClassicLogText(dict(event)))

    def test_time_cached_per_second_only(self) -> None:
        """The stamp is reused within a second, and changes with the second."""
        formatter = TextFormatter()
        lines = [formatter({**self.BASE, "log_format": "x", "log_time": t}) for t in (100.1, 100.9, 101.0, 99.5)]
        expected = [formatEventAsClassicLogText({**self.BASE, "log_format": "x", "log_time": t})
                    for t in (100.1, 100.9, 101.0, 99.5)]
        self.assertEqual(lines, expected)
