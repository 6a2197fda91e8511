# -*- test-case-name: tests.unit.test_tap -*-
"""
C{twistd peatio-ws}: command-line options and L{makeService}.

Configuration errors stop start-up here, before the reactor runs, with one
line on stderr naming the key and a non-zero exit status: never a traceback,
and never twistd's whole usage text for a bad value in a file.
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, NoReturn

from twisted.application.service import IService
from twisted.python import usage

from peatio_ws.config import ConfigError, Settings, load_settings

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """Options of C{twistd peatio-ws}; everything else is in the configuration file."""

    synopsis = "[--config PATH] [--host HOST] [--port PORT]"
    longdesc = (
        "Serve Peatio's private WebSocket stream. Settings come from the packaged defaults, "
        "then --config, then environment variables of the same names, then --host/--port."
    )
    optParameters: ClassVar[list[list[Any]]] = [
        ["config", "c", None, "YAML configuration file (flat map of upper-case keys)"],
        ["host", None, None, "Listen address (overrides WEBSOCKET_HOST)"],
        ["port", "p", None, "Listen port (overrides WEBSOCKET_PORT)"],
    ]

    settings: Settings

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {}
        if self["host"] is not None:
            overrides["WEBSOCKET_HOST"] = self["host"]
        if self["port"] is not None:
            overrides["WEBSOCKET_PORT"] = self["port"]
        try:
            self.settings = load_settings(self["config"], overrides=overrides)
            if self.settings.tls:
                # Load the key and certificate now: a bad pair is a
                # configuration error, not a failure on the first connection.
                from peatio_ws.listen import tls_options

                tls_options(self.settings)
        except ConfigError as e:
            _config_error(e)


def _config_error(error: ConfigError) -> NoReturn:
    """One line on stderr, then exit 2: SystemExit passes through twistd untouched."""
    sys.stderr.write(f"peatio-ws: configuration error: {error}\n")
    raise SystemExit(2) from None


def makeService(options: Options) -> IService:
    """Build the daemon's service tree (not started: twistd starts it)."""
    from twisted.internet import reactor

    from peatio_ws import _twistd, logs
    from peatio_ws.service import Daemon, restart_in_place_on_signal, stop_once_on_signals

    if options.parent is not None:
        # Run by twistd (or twist), which adds its log observers once this
        # returns: put the escaping first, for what other libraries log;
        # make its text observer the fast one (same lines, wherever they
        # go); and the reactor, not running yet, takes its signal handlers later.
        logs.protect_process_logging()
        _twistd.use_fast_text_log()
        stop_once_on_signals(reactor)
    try:
        # Run by twistd: this process may be a restart in place of itself, with connections to take.
        daemon = Daemon(options.settings, reactor, carried=options.parent is not None)
    except ConfigError as e:
        _config_error(e)
    if options.parent is not None:
        # Process-wide, so only for the process twistd runs, once it is built.
        restart_in_place_on_signal(reactor, daemon)
        from peatio_ws import collector

        frozen = collector.apply(options.settings.gc_policy)
        if frozen is not None:
            logs.logger(__name__).info(
                "garbage collector: {frozen} start-up objects frozen, thresholds {thresholds} (GC_POLICY=tuned)",
                frozen=frozen,
                thresholds=collector.THRESHOLDS,
            )
    return daemon
