"""
Tests for the systemd units in C{systemd/}: the settings operations rely on
(parsed here, always) and C{systemd-analyze verify} (when it is installed;
the test says so when it is not).

C{systemd-analyze verify} also checks that C{ExecStart}'s program exists, and
C{/opt/peatio-ws/venv/bin/twistd} does not on a development machine, so it
verifies copies whose C{ExecStart} points at this virtualenv's C{twistd}
(or C{/bin/true}); every other line is verified as shipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.config import Settings
from peatio_ws.listen import BACKLOG
from peatio_ws.service import STOP_STEP_TIMEOUT
from tests.support.paths import REPO

UNITS = REPO / "systemd"
SERVICE = UNITS / "peatio-ws.service"
TEMPLATE = UNITS / "peatio-ws@.service"
SOCKET = UNITS / "peatio-ws.socket"
INSTALLED_TWISTD = "/opt/peatio-ws/venv/bin/twistd"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """
    Sections of a unit file as lists of (key, value), in order, repeated keys
    kept (systemd allows them; configparser does not).
    """
    sections: Unit = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}: expected one value, got {found}"
    return found[0]


def seconds(text: str) -> float:
    """A systemd time span such as C{30}, C{30s}, C{1min 30s}."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for part in text.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units.get(part[len(number) :] or "s", 1)
    return total


# The mixin is a TestCase for the type checker only; trial must not collect it.
_Base = SynchronousTestCase if TYPE_CHECKING else object


class UnitSettingsMixin(_Base):  # type: ignore[misc,valid-type]
    """Checks both units must pass."""

    path: Path
    handover_file: str
    tokens_file: str

    def unit(self) -> Unit:
        return parse_unit(self.path.read_text(encoding="utf-8"))

    def test_notify(self) -> None:
        """Type=notify with NotifyAccess=main: systemd waits for READY=1 from twistd itself."""
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "Type"), "notify")
        self.assertEqual(value(unit, "Service", "NotifyAccess"), "main")
        self.assertGreater(seconds(value(unit, "Service", "WatchdogSec")), 0)

    def test_exec_start(self) -> None:
        """twistd in the foreground, no pidfile, logs to stdout (no --logfile), the /etc config."""
        exec_start = value(self.unit(), "Service", "ExecStart")
        self.assertEqual(
            exec_start,
            f"{INSTALLED_TWISTD} --nodaemon --pidfile= peatio-ws --config /etc/peatio-ws/application.yml",
        )

    def test_reload(self) -> None:
        """`systemctl reload` sends the main process SIGUSR2: a restart in place."""
        self.assertEqual(value(self.unit(), "Service", "ExecReload"), "/bin/kill -USR2 $MAINPID")

    def test_user_and_secrets(self) -> None:
        """A dedicated user; secrets from an optional env file."""
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "User"), "peatio-ws")
        self.assertEqual(value(unit, "Service", "Group"), "peatio-ws")
        self.assertIn("-/etc/peatio-ws/peatio-ws.env", values(unit, "Service", "EnvironmentFile"))

    def test_restart(self) -> None:
        """Restarted on failure, but not for a configuration error (exit status 2)."""
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "Restart"), "on-failure")
        self.assertGreater(seconds(value(unit, "Service", "RestartSec")), 0)
        self.assertEqual(value(unit, "Service", "RestartPreventExitStatus"), "2")

    def test_stop(self) -> None:
        """
        SIGTERM, and TimeoutStopSec longer than the daemon's own worst-case
        stop (4 bounded steps plus the close handshake), so systemd never
        SIGKILLs a daemon that is still closing clients. twistd ends by
        re-raising SIGTERM: clean for systemd unless the type is oneshot.
        """
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "KillSignal"), "SIGTERM")
        worst = 4 * STOP_STEP_TIMEOUT + Settings().websocket_close_timeout + 1
        self.assertGreater(seconds(value(unit, "Service", "TimeoutStopSec")), worst + 5)
        self.assertNotEqual(value(unit, "Service", "Type"), "oneshot")

    def test_file_limit(self) -> None:
        """One descriptor per client: far more than the usual 1024."""
        limit = value(self.unit(), "Service", "LimitNOFILE")
        self.assertGreaterEqual(int(limit.split(":")[-1]), 65536)

    def test_hardening(self) -> None:
        """The hardening options are on."""
        unit = self.unit()
        expected = {
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "ProtectControlGroups": "yes",
            "RestrictNamespaces": "yes",
            "LockPersonality": "yes",
            "CapabilityBoundingSet": "",
        }
        for key, wanted in expected.items():
            self.assertEqual(value(unit, "Service", key), wanted, key)
        self.assertIn("@system-service", values(unit, "Service", "SystemCallFilter"))
        families = value(unit, "Service", "RestrictAddressFamilies").split()
        # AF_UNIX: the journal and the sd_notify socket.
        self.assertEqual(sorted(families), ["AF_INET", "AF_INET6", "AF_UNIX"])

    def test_no_memory_deny_write_execute(self) -> None:
        """Not set: it breaks in-process TLS (pyOpenSSL's callbacks need W+X memory)."""
        self.assertEqual(values(self.unit(), "Service", "MemoryDenyWriteExecute"), [])

    def test_install(self) -> None:
        self.assertEqual(value(self.unit(), "Install", "WantedBy"), "multi-user.target")

    def test_log_rate_limit(self) -> None:
        """journald keeps a restart's lines: 3 per client (close, open, login) for 100,000 clients fit."""
        unit = self.unit()
        self.assertEqual(seconds(value(unit, "Service", "LogRateLimitIntervalSec")), 30)
        self.assertGreaterEqual(int(value(unit, "Service", "LogRateLimitBurst")), 3 * 100_000)

    def test_handover_file(self) -> None:
        """A clean stop leaves the queue to the next start, in the state directory systemd makes writable."""
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "StateDirectory"), "peatio-ws")
        handover = [e for e in values(unit, "Service", "Environment") if e.startswith("RABBITMQ_HANDOVER_FILE=")]
        self.assertEqual(handover, [f"RABBITMQ_HANDOVER_FILE=%S/peatio-ws/{self.handover_file}"])

    def test_tokens_file(self) -> None:
        """
        A clean stop leaves the tokens it verified to the next start, one file
        per process, in a state directory only the service's user can enter.
        """
        unit = self.unit()
        self.assertEqual(value(unit, "Service", "StateDirectoryMode"), "0700")
        tokens = [e for e in values(unit, "Service", "Environment") if e.startswith("JWT_HANDOVER_FILE=")]
        self.assertEqual(tokens, [f"JWT_HANDOVER_FILE=%S/peatio-ws/{self.tokens_file}"])


class ServiceUnitTests(UnitSettingsMixin, SynchronousTestCase):
    path = SERVICE
    handover_file = "queue.json"
    tokens_file = "tokens.json"

    def test_no_reuse_port(self) -> None:
        """The single-process unit leaves WEBSOCKET_REUSE_PORT to the configuration (it sets the two handover files)."""
        environment = values(self.unit(), "Service", "Environment")
        self.assertEqual(
            environment,
            ["RABBITMQ_HANDOVER_FILE=%S/peatio-ws/queue.json", "JWT_HANDOVER_FILE=%S/peatio-ws/tokens.json"],
        )


class TemplateUnitTests(UnitSettingsMixin, SynchronousTestCase):
    path = TEMPLATE
    #: One per instance: two processes must never take the same queue.
    handover_file = "queue@%i.json"
    tokens_file = "tokens@%i.json"

    def test_instances_share_port(self) -> None:
        """Every instance listens with SO_REUSEPORT; the instance name is its METRICS_PORT."""
        environment = values(self.unit(), "Service", "Environment")
        self.assertIn("WEBSOCKET_REUSE_PORT=true", environment)
        self.assertIn("METRICS_PORT=%i", environment)

    def test_env_files(self) -> None:
        """The shared env file, then an optional per-instance one."""
        self.assertEqual(
            values(self.unit(), "Service", "EnvironmentFile"),
            ["-/etc/peatio-ws/peatio-ws.env", "-/etc/peatio-ws/peatio-ws@%i.env"],
        )

    def test_same_as_service(self) -> None:
        """Apart from the instance lines, the template is the single unit: they cannot drift."""
        instance_only = {"Environment", "EnvironmentFile", "SyslogIdentifier", "Description"}
        single = parse_unit(SERVICE.read_text(encoding="utf-8"))
        template = self.unit()
        for section in ("Unit", "Service", "Install"):
            self.assertEqual(
                [kv for kv in template[section] if kv[0] not in instance_only],
                [kv for kv in single[section] if kv[0] not in instance_only],
                section,
            )


class SocketUnitTests(SynchronousTestCase):
    """C{peatio-ws.socket}: what the daemon's socket activation looks for (peatio_ws.listen.inherited_listener)."""

    def test_socket(self) -> None:
        """The port the service listens on by default, named websocket, its queue as long as BACKLOG."""
        unit = parse_unit(SOCKET.read_text(encoding="utf-8"))
        self.assertEqual(value(unit, "Socket", "ListenStream"), str(Settings().websocket_port))
        self.assertEqual(value(unit, "Socket", "FileDescriptorName"), "websocket")
        self.assertEqual(value(unit, "Socket", "Backlog"), str(BACKLOG))
        self.assertEqual(value(unit, "Socket", "Service"), SERVICE.name)
        self.assertEqual(value(unit, "Install", "WantedBy"), "sockets.target")


class VerifyTests(SynchronousTestCase):
    """C{systemd-analyze verify} on both units."""

    def setUp(self) -> None:
        self.analyze = shutil.which("systemd-analyze")
        if self.analyze is None:
            message = (
                "systemd-analyze not found: install Debian's 'systemd' package to verify the units "
                "(the settings are still checked by ServiceUnitTests and TemplateUnitTests)"
            )
            if os.environ.get("PEATIO_WS_MAKE_TEST") == "1":
                # Under make test (which installs it) a missing tool fails, never skips.
                self.fail(message)
            raise self.skipTest(message)
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def runnable_twistd(self) -> str:
        candidate = Path(sys.executable).parent / "twistd"
        return str(candidate) if candidate.exists() else "/bin/true"

    def copy(self, source: Path, name: str, *replacements: tuple[str, str]) -> Path:
        text = source.read_text(encoding="utf-8")
        self.assertIn(INSTALLED_TWISTD, text)
        text = text.replace(INSTALLED_TWISTD, self.runnable_twistd())
        for old, new in replacements:
            text = text.replace(old, new)
        target = self.directory / name
        target.write_text(text, encoding="utf-8")
        return target

    def verify(self, unit: Path) -> tuple[int, list[str]]:
        """Exit status and the lines that are about C{unit} (not other units on this machine)."""
        assert self.analyze is not None
        result = subprocess.run(
            [self.analyze, "verify", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        stem = unit.name.split("@")[0]
        lines = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if str(self.directory) in line or line.startswith(stem)
        ]
        return result.returncode, lines

    def test_service(self) -> None:
        """The single-process unit verifies without a complaint."""
        self.assertEqual(self.verify(self.copy(SERVICE, "peatio-ws.service")), (0, []))

    def test_template_instance(self) -> None:
        """An instance of the template (peatio-ws@9101) verifies without a complaint."""
        self.assertEqual(self.verify(self.copy(TEMPLATE, "peatio-ws@9101.service")), (0, []))

    def test_socket(self) -> None:
        """The socket unit (with its service beside it) verifies without a complaint."""
        self.copy(SERVICE, "peatio-ws.service")
        socket_unit = self.directory / "peatio-ws.socket"
        socket_unit.write_text(SOCKET.read_text(encoding="utf-8"), encoding="utf-8")
        self.assertEqual(self.verify(socket_unit), (0, []))

    def test_verify_catches_mistakes(self) -> None:
        """The check above would see a mistake: a bad value is reported."""
        _status, lines = self.verify(self.copy(SERVICE, "broken.service", ("Type=notify", "Type=notifyy")))
        self.assertTrue(lines, "systemd-analyze said nothing about Type=notifyy")
        self.assertIn("notifyy", "\n".join(lines))
