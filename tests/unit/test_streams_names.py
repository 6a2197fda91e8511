"""
Tests for L{peatio_ws.streams.names}: stream names (SPEC §7) and the public
routing key, as pure functions. A name that a topic binding, a log line or a
metric label would read differently must never parse.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from peatio_ws.streams.names import (
    MAX_PART,
    PUBLIC_BINDING,
    Stream,
    family,
    is_order_book,
    parse_public_key,
    parse_stream,
)


class ParseStreamTests(SynchronousTestCase):
    def test_private(self) -> None:
        """A name without a dot is private: no ident, the event is the name."""
        for name in ("order", "trade", "deposit_address", "balances", "p2p", "Weird-Name_2"):
            stream = parse_stream(name)
            self.assertEqual(stream, Stream(name, None, name), name)
            assert stream is not None
            self.assertFalse(stream.public)

    def test_public(self) -> None:
        """C{<id>.<event>} is public, split at the dot."""
        for name, ident, event in (
            ("btcusd.trades", "btcusd", "trades"),
            ("btcusd.ob-inc", "btcusd", "ob-inc"),
            ("btcusd.ob-snap", "btcusd", "ob-snap"),
            ("btcusd.kline-1m", "btcusd", "kline-1m"),
            ("global.tickers", "global", "tickers"),
            ("eth_usdt.update", "eth_usdt", "update"),
        ):
            stream = parse_stream(name)
            self.assertEqual(stream, Stream(name, ident, event), name)
            assert stream is not None
            self.assertTrue(stream.public)

    def test_invalid(self) -> None:
        """Wildcards, a second dot, empty parts, spaces, control characters, non-ASCII: not a stream."""
        for name in (
            "", ".", "btcusd.", ".trades", "a.b.c", "btcusd..trades",
            "*", "#", "btcusd.*", "*.trades", "btcusd.#", "btc*usd.trades", "order#",
            "btc usd.trades", " order", "order ", "order\n", "order\x00", "\x7f", "btcusd.trades\r",
            "ordér", "比特币.trades", "btcusd/trades", "btcusd:trades", "order,trade", "'order'",
        ):
            self.assertIsNone(parse_stream(name), repr(name))

    def test_not_a_string(self) -> None:
        """Only a str can be a stream name."""
        for value in (None, 1, 1.5, True, b"order", ["order"], {"order": 1}):
            self.assertIsNone(parse_stream(value), repr(value))

    def test_part_length_boundary(self) -> None:
        """Each part may be MAX_PART (64) characters; one more is refused, private or public."""
        self.assertEqual(MAX_PART, 64)
        at, over = "a" * MAX_PART, "a" * (MAX_PART + 1)
        self.assertIsNotNone(parse_stream(at))
        self.assertIsNone(parse_stream(over))
        self.assertIsNotNone(parse_stream(at + "." + at))
        self.assertIsNone(parse_stream(over + "." + "b"))
        self.assertIsNone(parse_stream("b." + over))
        self.assertIsNone(parse_stream(at + "." + over))
        self.assertIsNone(parse_stream("a" * 10_000))

    def test_one_character_parts(self) -> None:
        """The shortest parts (one character) are fine."""
        self.assertEqual(parse_stream("a.b"), Stream("a.b", "a", "b"))
        self.assertEqual(parse_stream("x"), Stream("x", None, "x"))


class PublicKeyTests(SynchronousTestCase):
    def test_binding(self) -> None:
        """The process queue's binding for every public event."""
        self.assertEqual(PUBLIC_BINDING, b"public.*.*")

    def test_parsed(self) -> None:
        """C{public.<id>.<event>} gives (id, event) as str."""
        self.assertEqual(parse_public_key(b"public.btcusd.trades"), ("btcusd", "trades"))
        self.assertEqual(parse_public_key(b"public.global.tickers"), ("global", "tickers"))
        self.assertEqual(parse_public_key(b"public.btcusd.kline-1m"), ("btcusd", "kline-1m"))
        self.assertEqual(parse_public_key(b"public.a.b"), ("a", "b"))

    def test_other_shapes(self) -> None:
        """Too few or too many parts, empty parts, another prefix, odd bytes: None."""
        for key in (
            b"", b"public", b"public.", b"public.btcusd", b"public.btcusd.", b"public..trades",
            b"public.btcusd.trades.x", b"public.a.b.c.d", b"private.ID1.order", b"Public.btcusd.trades",
            b"publicx.btcusd.trades", b"global.tickers", b"public.btc*usd.trades", b"public.btcusd.#",
            b"public.\xff.trades", b"public.btcusd.tr\xc3\xa9des", b"public.btc usd.trades",
            b"public.btcusd.trades\n",
        ):
            self.assertIsNone(parse_public_key(key), key)

    def test_part_length_boundary(self) -> None:
        """Parts of a routing key follow the stream name's bound: MAX_PART accepted, one more not."""
        at, over = b"a" * MAX_PART, b"a" * (MAX_PART + 1)
        self.assertEqual(parse_public_key(b"public." + at + b"." + at), (at.decode(), at.decode()))
        self.assertIsNone(parse_public_key(b"public." + over + b".trades"))
        self.assertIsNone(parse_public_key(b"public.btcusd." + over))

    def test_agrees_with_parse_stream(self) -> None:
        """Every public key that parses names a stream that parses, with the same id and event."""
        for key in (b"public.btcusd.trades", b"public.x_y.ob-inc", b"public." + b"z" * 64 + b".k"):
            parsed = parse_public_key(key)
            assert parsed is not None
            stream = parse_stream(parsed[0] + "." + parsed[1])
            self.assertEqual(stream, Stream(parsed[0] + "." + parsed[1], parsed[0], parsed[1]))


class FamilyTests(SynchronousTestCase):
    def test_known(self) -> None:
        """Known event families are their own label."""
        for event in ("trades", "ob-inc", "ob-snap", "tickers", "update", "order", "trade", "deposit_address",
                      "balances", "p2p", "kline-1m", "kline-15m", "kline-1h", "kline-4h", "kline-1d", "kline-1w"):
            self.assertEqual(family(event), event)

    def test_other(self) -> None:
        """Anything else is "other", so a client cannot grow the label set."""
        for event in ("made-up", "orders", "Order", "trades2", "kline-1y", "kline-100m", "kline-m", "ob-inc-x",
                      "xtrades", "", "p2p.event"):
            self.assertEqual(family(event), "other", event)

    def test_is_order_book(self) -> None:
        self.assertTrue(is_order_book("ob-inc"))
        self.assertTrue(is_order_book("ob-snap"))
        for event in ("trades", "ob", "ob-incr", "OB-INC", "update"):
            self.assertFalse(is_order_book(event), event)
