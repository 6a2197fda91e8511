"""
Tests written to kill the mutants that survived the stream and dialect
tests (docs/testing.md, `make mutation`): what L{peatio_ws.streams.names},
L{peatio_ws.streams.orderbook} and L{peatio_ws.websocket.legacy} do that no
other test pinned.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.streams.names import MAX_PART, Stream, parse_stream


class _Watched(str):
    """A name that records being split, to see whether the parser looked inside it."""

    partitions: list[str]

    def partition(self, sep: Any) -> tuple[str, str, str]:
        self.partitions.append(sep)
        return super().partition(sep)


def watched(text: str) -> _Watched:
    name = _Watched(text)
    name.partitions = []
    return name


class StreamNameBoundTests(SynchronousTestCase):
    def test_longest_name(self) -> None:
        """The longest valid name is two full parts and their dot: 2 * MAX_PART + 1 = 129 characters."""
        longest = "a" * MAX_PART + "." + "b" * MAX_PART
        self.assertEqual(len(longest), 129)
        self.assertEqual(parse_stream(longest), Stream(longest, "a" * MAX_PART, "b" * MAX_PART))

    def test_longer_names_refused_unread(self) -> None:
        """
        A name longer than any valid one is refused before it is split or
        matched (a hostile client's huge name costs one length check),
        from one character past the longest valid name on.
        """
        for size in (2 * MAX_PART + 2, 3 * MAX_PART + 1, 3 * MAX_PART + 2, 100_000):
            name = watched("a" * MAX_PART + "." + "b" * (size - MAX_PART - 1))
            self.assertIsNone(parse_stream(name), size)
            self.assertEqual(name.partitions, [], size)

    def test_valid_lengths_are_read(self) -> None:
        """Up to the longest valid name, a name is split at its dot."""
        name = watched("a" * MAX_PART + "." + "b" * MAX_PART)
        self.assertIsNotNone(parse_stream(name))
        self.assertEqual(name.partitions, ["."])
