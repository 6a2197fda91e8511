"""
The benchmark's events: ~300-byte order payloads that carry a per-member
sequence number and the publisher's clock, in a shape the clients can read
without decoding JSON.

The payload starts C{{"seq":<n>,"ts":<ns>,}}: the client finds both numbers
at fixed offsets after the C{{"order":} prefix the daemon adds. C{ts} is
C{time.monotonic_ns()} (CLOCK_MONOTONIC is one clock for every process on
the host, so publisher and clients compare directly).
"""

from __future__ import annotations

import time

EVENT = "order"

#: What follows seq and ts: a realistic Peatio order (decimals as strings).
_TAIL = (
    b',"id":%d,"side":"buy","ord_type":"limit","price":"9500.0","avg_price":"0.0",'
    b'"state":"wait","market":"btcusd","created_at":"2026-11-24T12:00:00+01:00",'
    b'"origin_volume":"0.5","remaining_volume":"0.5","executed_volume":"0.0",'
    b'"trades_count":0,"trades":[],"note":"peatio-ws benchmark event, padded to about 300 bytes"}'
)

#: The frame payload the client sees starts with this (daemon: {"<event>": payload}).
MESSAGE_PREFIX = b'{"' + EVENT.encode() + b'":{"seq":'
#: Offset of the seq digits in the message.
SEQ_AT = len(MESSAGE_PREFIX)
#: Between the end of seq and the ts digits.
TS_GAP = len(b',"ts":')


def body(seq: int, order_id: int, ts: int | None = None) -> bytes:
    """One event payload (UTF-8 JSON)."""
    if ts is None:
        ts = time.monotonic_ns()
    return b'{"seq":%d,"ts":%d' % (seq, ts) + _TAIL % order_id


def message(payload: bytes) -> bytes:
    """What the daemon sends for C{payload}: C{{"order":payload}}."""
    return b'{"' + EVENT.encode() + b'":' + payload + b"}"


def expected_counts(n_events: int, n_members: int) -> list[int]:
    """Events per member when C{n_events} go round-robin over C{n_members} from member 0."""
    base, extra = divmod(n_events, n_members)
    return [base + (1 if i < extra else 0) for i in range(n_members)]


SAMPLE_SIZE = len(body(123456, 1234567, 1_000_000_000_000_000))


# ---------------------------------------------------------------------------
# Public events (the ranger dialect's streams, SPEC §7)
#
# Every public event body starts C{{"sequence":<8 digits>,"ts":<16 digits>,}}
# and is padded to one fixed size per stream, so each of a stream's frames
# has the same length and both numbers sit at fixed offsets in it: a client
# counts and checks a whole read of frames from its first and last frame,
# without walking them one by one (L{bench.wsclient.PublicClient}).
# C{"sequence"} is what the daemon's order book follows for C{ob-inc}; the
# other streams carry it too, only for the client's order check.

#: The first sequence number a run uses: 8 digits up to 99,999,999.
SEQ0 = 10_000_000
SEQ_DIGITS = 8
#: Added to the publisher's C{time.monotonic_ns()}: 16 digits for 104 days of uptime.
TS_BASE = 10**15
TS_DIGITS = 16

#: An order-book increment (Peatio's shape: one price level changed).
OB_INC_TAIL = b',"asks":[["9500.5","0.2513"]],"bids":[]'
#: A global.tickers market entry (Peatio's shape); the event holds ten markets.
_TICKER = (
    b'"%s":{"name":"%s","base_unit":"%s","quote_unit":"usd","low":"9312.1","high":"9651.4",'
    b'"last":"9500.5","open":"9410.0","volume":"1284.5531","sell":"9500.6","buy":"9500.4",'
    b'"avg_price":"9488.27","price_change_percent":"+0.96%%","at":1795000000}'
)
_MARKETS = (b"btc", b"eth", b"ltc", b"xrp", b"bch", b"trx", b"eos", b"dash", b"zec", b"xmr")
TICKERS_TAIL = b"," + b",".join(_TICKER % (m + b"usd", m.upper() + b"/USD", m) for m in _MARKETS)


def public_body(seq: int, tail: bytes, size: int, ts: int | None = None) -> bytes:
    """
    One public event body of exactly C{size} bytes: sequence, the publisher's
    clock, C{tail} (JSON members), then a C{"pad"} string to the size.
    """
    if ts is None:
        ts = time.monotonic_ns()
    head = b'{"sequence":%d,"ts":%d' % (seq, TS_BASE + ts)
    pad = size - len(head) - len(tail) - len(b',"pad":""}')
    if pad < 0 or len(head) != len(b'{"sequence":,"ts":') + SEQ_DIGITS + TS_DIGITS:
        raise ValueError(f"public_body: size {size} too small, or seq {seq} not {SEQ_DIGITS} digits")
    return head + tail + b',"pad":"' + b"." * pad + b'"}'


def snapshot_body(seq: int, levels: int = 50) -> bytes:
    """An order-book snapshot (C{ob-snap}) at C{seq}: C{levels} asks and bids."""
    asks = b",".join(b'["%d.5","%d.25"]' % (9500 + i, 1 + i % 7) for i in range(levels))
    bids = b",".join(b'["%d.5","%d.75"]' % (9499 - i, 1 + i % 5) for i in range(levels))
    return b'{"asks":[%s],"bids":[%s],"sequence":%d}' % (asks, bids, seq)


class PublicLayout:
    """Where the numbers are in each frame of one public stream's bench events (all the same size)."""

    def __init__(self, stream: str, size: int) -> None:
        self.stream = stream
        self.size = size
        #: The message's start, up to the sequence digits: C{{"<stream>":{"sequence":}.
        self.prefix = b'{"' + stream.encode() + b'":{"sequence":'
        message = len(self.prefix) + size - len(b'{"sequence":') + 1
        header = 2 if message < 126 else 4 if message < 65536 else 10
        self.header = header
        #: The whole frame's length, and the bytes every frame starts with (header + prefix).
        self.frame = header + message
        self.head = bytes(_frame_header(message)) + self.prefix
        self.seq_at = len(self.head)
        self.ts_at = self.seq_at + SEQ_DIGITS + len(b',"ts":')


def _frame_header(n: int) -> bytes:
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big")
    return bytes((0x81, 127)) + n.to_bytes(8, "big")
