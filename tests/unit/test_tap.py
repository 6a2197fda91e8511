"""
Tests for L{peatio_ws.tap} (C{twistd peatio-ws}): option parsing and its
one-line configuration errors, L{makeService}, the plugin, and one real
C{twistd -n peatio-ws} process (LOG_FORMAT=json lines, READY=1/STOPPING=1
to a fake systemd, 1001 to a connected client on SIGTERM).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet import reactor as _reactor
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import tap
from peatio_ws.testing import public_key_b64, rsa_key

reactor: Any = _reactor

WAIT = 20.0


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.environ = {"JWT_PUBLIC_KEY": public_key_b64(rsa_key())}
        # load_settings reads os.environ when it is called.
        self.patch(os, "environ", self.environ)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.config = self.write_config("WEBSOCKET_PORT: 9000\nMETRICS_PORT: 9100\n")

    def write_config(self, text: str, name: str = "application.yml") -> str:
        path = self.directory / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    def parse(self, *argv: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def assertConfigExit(self, key: str, *argv: str) -> str:
        """Parsing exits with status 2 and one stderr line naming C{key}."""
        error = self.assertRaises(SystemExit, self.parse, *argv)
        self.assertEqual(error.code, 2)
        output = self.stderr.getvalue()
        self.assertEqual(output.count("\n"), 1, output)
        self.assertTrue(output.startswith(f"peatio-ws: configuration error: {key}: "), output)
        self.assertNotIn("Traceback", output)
        return output

    def test_defaults(self) -> None:
        """No options: the packaged defaults."""
        settings = self.parse().settings
        self.assertEqual((settings.websocket_host, settings.websocket_port), ("0.0.0.0", 8080))
        self.assertEqual(settings.metrics_port, 8082)

    def test_config(self) -> None:
        """--config reads another file over the defaults."""
        settings = self.parse("--config", self.config).settings
        self.assertEqual((settings.websocket_port, settings.metrics_port), (9000, 9100))
        self.assertEqual(self.parse("-c", self.config).settings.websocket_port, 9000)

    def test_host_port_override(self) -> None:
        """--host and --port win over the file and the environment."""
        self.environ["WEBSOCKET_PORT"] = "9002"
        self.assertEqual(self.parse("--config", self.config).settings.websocket_port, 9002)
        settings = self.parse("--config", self.config, "--host", "127.0.0.1", "--port", "9001").settings
        self.assertEqual((settings.websocket_host, settings.websocket_port), ("127.0.0.1", 9001))
        self.assertEqual(self.parse("-p", "9003").settings.websocket_port, 9003)

    def test_bad_port_option(self) -> None:
        """A bad --port is one line naming WEBSOCKET_PORT."""
        self.assertConfigExit("WEBSOCKET_PORT", "--port", "notaport")

    def test_bad_value_in_file(self) -> None:
        """A bad value in the file names its key."""
        config = self.write_config("WEBSOCKET_AUTH_TIMEOUT: soon\n", "bad.yml")
        self.assertConfigExit("WEBSOCKET_AUTH_TIMEOUT", "--config", config)

    def test_bad_value_in_environment(self) -> None:
        """And so does a bad value in the environment."""
        self.environ["LOG_FORMAT"] = "xml"
        self.assertConfigExit("LOG_FORMAT")

    def test_missing_key(self) -> None:
        """The required JWT_PUBLIC_KEY missing is named."""
        del self.environ["JWT_PUBLIC_KEY"]
        self.assertConfigExit("JWT_PUBLIC_KEY")

    def test_missing_config_file(self) -> None:
        """A --config that cannot be read is one line too."""
        self.assertConfigExit("--config", "--config", str(self.directory / "nope.yml"))

    def test_tls_checked_at_start(self) -> None:
        """A key that does not match the certificate stops start-up before anything runs."""
        from peatio_ws.testing.pki import make_pki

        pki = make_pki(self.directory / "pki")
        self.environ["WEBSOCKET_SSL_KEY"] = str(pki.other_key)
        self.environ["WEBSOCKET_SSL_CERT"] = str(pki.cert)
        self.assertConfigExit("WEBSOCKET_SSL_KEY")
        self.environ["WEBSOCKET_SSL_KEY"] = str(pki.key)
        self.assertTrue(self.parse().settings.tls)


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "environ", {"JWT_PUBLIC_KEY": public_key_b64(rsa_key())})

    def test_built_not_started(self) -> None:
        """makeService returns a MultiService whose children are built but not started."""
        from peatio_ws.amqp import EventConsumer
        from peatio_ws.listen import bound_port
        from peatio_ws.redis import RevocationService
        from peatio_ws.service import Daemon

        options = tap.Options()
        options.parseOptions(["--host", "127.0.0.1", "--port", "0"])
        service = tap.makeService(options)
        self.assertIsInstance(service, MultiService)
        self.assertIsInstance(service, Daemon)
        children = list(service)  # type: ignore[call-overload]
        self.assertEqual(len(children), 4)
        self.assertIsInstance(children[1], RevocationService)
        self.assertIsInstance(children[2], EventConsumer)
        self.assertFalse(service.running)
        for child in children:
            self.assertFalse(child.running, child)
        daemon: Any = service
        self.assertIsNone(bound_port(daemon.listener))
        self.assertIsNone(bound_port(daemon.monitoring))


class PluginTests(SynchronousTestCase):
    def test_plugin_found(self) -> None:
        """twistd finds C{peatio-ws} from the checkout, with this module's Options."""
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("peatio-ws", makers)
        maker: Any = makers["peatio-ws"]
        self.assertIs(maker.options, tap.Options)
        self.assertTrue(maker.description)


# -- a real twistd process ---------------------------------------------------------------
