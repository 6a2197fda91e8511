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
