"""
Tests for L{bench.storm.classify}, which shares a storm's profile out into
the groups docs/benchmarks.md reports: a sample put in the wrong group
sends the next optimisation after the wrong code.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench import storm
from bench.storm import StormOptions, _node, build_parser, classify, options_from

SP = "/work/.venv/lib/python3.11/site-packages/"
PW = "/work/peatio_ws/"
LOOP = [
    f"run ({SP}twisted/application/app.py:674)",
    f"ReactorBase.mainLoop ({SP}twisted/internet/base.py:697)",
    f"ReactorBase.runUntilCurrent ({SP}twisted/internet/base.py:1094)",
]
REDIS_ANSWER = [
    f"LineReceiver.dataReceived ({SP}txredisapi.py:180)",
    f"Deferred.callback ({SP}twisted/internet/defer.py:881)",
    f"RevocationService._run_checks ({PW}redis/service.py:240)",
    f"_answer ({PW}redis/service.py:250)",
    f"LegacyDialect._authenticate.<locals>.<lambda> ({PW}websocket/legacy.py:130)",
    f"LegacyDialect._say_authenticated ({PW}websocket/legacy.py:150)",
]


class ClassifyTests(SynchronousTestCase):
    def test_redis_request(self) -> None:
        """Asking Redis (txredisapi's code innermost) is the Redis check."""
        stack = [*LOOP, f"RevocationService._run_checks ({PW}redis/service.py:236)",
                 f"BaseRedisProtocol.execute_command ({SP}txredisapi.py:400)"]
        self.assertEqual(classify(stack), "Redis check")

    def test_reply_after_redis_answered(self) -> None:
        """The reply sent when Redis answered is the login's work, not Redis'."""
        stack = [*LOOP, *REDIS_ANSWER, f"StreamProtocol.reply ({PW}websocket/connection.py:597)",
                 f"write ({PW}websocket/_transport.py:48)"]
        self.assertEqual(classify(stack), "auth message (JSON, dialect, registry)")

    def test_log_line_after_redis_answered(self) -> None:
        """The log line written then is logging."""
        stack = [*LOOP, *REDIS_ANSWER, f"StreamProtocol.log_line ({PW}websocket/connection.py:179)",
                 f"Logger.emit ({SP}twisted/logger/_logger.py:226)"]
        self.assertEqual(classify(stack), "logging")

    def test_jwt(self) -> None:
        """RS256 under the token check is JWT, though the connection's code is further out."""
        stack = [*LOOP, f"check_token ({PW}websocket/tokens.py:80)",
                 f"RSAAlgorithm.verify ({SP}jwt/algorithms.py:500)"]
        self.assertEqual(classify(stack), "JWT (RS256 verify, claims)")


class OptionsTests(SynchronousTestCase):
    """The storm's options: combinations that cannot be run are refused before anything starts."""

    def options(self, *argv: str) -> StormOptions:
        return options_from(build_parser().parse_args(list(argv)))

    def test_surge_with_one_process(self) -> None:
        """A blue-green restart of a one-process node: the replacement on the port with SO_REUSEPORT."""
        o = self.options("--surge")
        self.assertEqual((o.surge, o.processes), (True, 1))

    def test_held_socket_not_with_surge(self) -> None:
        """Holding the socket is a restart in place: not with a replacement started first."""
        self.assertRaises(SystemExit, self.options, "--surge", "--held-socket")
        self.assertRaises(SystemExit, self.options, "--processes", "2", "--held-socket")

    def test_pin_the_daemon_only(self) -> None:
        """The baseline bridge is not pinned (it is not the daemon the option describes)."""
        self.assertRaises(SystemExit, self.options, "--pin", "--baseline")

    def test_pin_needs_two_cpus(self) -> None:
        """Pinning needs CPU 0 for the daemon and another for everything else."""
        self.patch(storm.os, "sched_getaffinity", lambda pid: {0})
        self.assertRaises(SystemExit, self.options, "--pin")
        self.patch(storm.os, "sched_getaffinity", lambda pid: {1, 2})
        self.assertRaises(SystemExit, self.options, "--pin")
        self.patch(storm.os, "sched_getaffinity", lambda pid: {0, 1})
        self.assertTrue(self.options("--pin").pin)


class NodeTests(SynchronousTestCase):
    """How a storm's row says what was restarted, and how."""

    def test_one_process_in_place(self) -> None:
        self.assertEqual(_node({"processes": 1}), "")
        self.assertEqual(_node({"processes": 1, "held_socket": True}), " (socket held)")

    def test_blue_green(self) -> None:
        self.assertEqual(
            _node({"processes": 1, "surge": True, "pinned": True}),
            " (blue-green: the new one started first; daemon on a CPU of its own)",
        )

    def test_rolling(self) -> None:
        row = {"processes": 2, "surge": True, "moved": 7000, "cpu": {"moved_life_us_storm": 300.4}}
        self.assertEqual(
            _node(row), " (2 processes, the new one started first: 7,000 moved, 300 µs of the node's CPU each)"
        )
