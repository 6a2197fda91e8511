"""
Tests for L{bench.storm.classify}, which shares a storm's profile out into
the groups docs/benchmarks.md reports: a sample put in the wrong group
sends the next optimisation after the wrong code.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench.storm import classify

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
