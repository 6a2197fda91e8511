# -*- test-case-name: tests.unit.test_twistd_door -*-
"""
The one door to twistd's internals. Written against Twisted 26.10.0;
L{tests.unit.test_twistd_door} fails, naming what changed, when an upgrade
moves what is relied on here.

twistd builds its text log observer, wherever it writes (stdout under
C{-n}, C{--logfile}, C{twistd.log}), with C{twisted.logger.textFileLogObserver(
logFile)}, looked up on the module when its logger starts (after
C{makeService}). L{use_fast_text_log} replaces that name with one that
builds an observer like C{FileLogObserver} around L{peatio_ws.logs.TextFormatter}
(L{peatio_ws.logs.TextLinesObserver}, which flushes in batches):
the same lines, much cheaper (docs/benchmarks.md), and every twistd option
about where the log goes still honoured.

Relied on: C{twisted.scripts._twistd_unix.UnixAppLogger._getLogObserver}
and C{twisted.application.app.AppLogger._getLogObserver} calling
C{logger.textFileLogObserver(logFile)} on the C{twisted.logger} module.
"""

from __future__ import annotations

from typing import IO, Any

import twisted.logger
from twisted.logger import timeFormatRFC3339

from peatio_ws.logs import TextFormatter, TextLinesObserver

__all__ = ["fast_text_file_log_observer", "use_fast_text_log"]


def fast_text_file_log_observer(outFile: IO[Any], timeFormat: str | None = timeFormatRFC3339) -> TextLinesObserver:
    """C{twisted.logger.textFileLogObserver}, with L{TextFormatter}, flushed in batches."""
    return TextLinesObserver(outFile, TextFormatter(timeFormat))


def use_fast_text_log() -> None:
    """Make twistd's text log observer ours (idempotent; process-wide: twistd only, never in tests)."""
    # twistd only calls what it builds, as any ILogObserver: it needs no FileLogObserver.
    twisted.logger.textFileLogObserver = fast_text_file_log_observer  # type: ignore[assignment]
