"""
Hostile input end to end: the unit-level fuzz corpus (test_fuzz) sent to
the real daemon over real sockets, and malformed messages and routing keys
published on the real broker (with a catch-all binding on the daemon's
queue, as a misconfigured or hostile producer could cause). Every input
gets its documented reply or close, the daemon stays up, and no event of
one member reaches another.
"""

from __future__ import annotations

import contextlib
import json
import random
from functools import partial
from typing import Any

from peatio_ws.testing import client_frame, make_token
from tests.support.broker import queue_name_from_log
from tests.support.cases import ChaosTestCase, new_uid
from tests.support.corpus import BAD_HANDSHAKES, PROTOCOL_VIOLATIONS, UNUSUAL_HANDSHAKES, forged_tokens
from tests.support.daemon import DaemonProcess
from tests.support.figures import record, scaled
from tests.support.oracle import AUTH_FAILED, AUTHENTICATED, expected_reply
from tests.support.probes import cpu_seconds, rss_kib
from tests.support.publisher import Publisher
from tests.support.raw_client import RawClient, raw_status
from tests.support.reactor_client import WsClient, ws_connect

MAX_MESSAGE = 16384


def text_corpus(count: int, seed: int) -> list[bytes]:
    """Fixed hostile messages, then C{count} random ones (reproducible from C{seed})."""
    rng = random.Random(seed)
    fixed = [
        b"", b"ping", b"PING", b"pong", b" ping", b"not json", b"[1,2]", b"{}", b"null", b'"jwt"',
        b'{"jwt":null}', b'{"jwt":1}', b'{"jwt":["Bearer","x"]}', b'{"jwt":"Token x"}', b'{"jwt":"Bearer"}',
        b'{"jwt":"Bearer "}', b'{"jwt":"Bearer x"}', b'{"jwt":"bearer x"}', b'{"jwt":" Bearer x"}',
        b'{"jwt":"Bearer \\u0000"}', b'{"jwt":"Bearer \\ud800"}', b'{"jwt":"Bearer x","jwt":1}',
        b"[" * 7000 + b"]" * 7000, b'{"jwt":' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"jwt":' + b"9" * 10000 + b"}", b"1" * 16000, b'{"jwt":1e999999}', b'{"jwt":NaN}', b"Infinity",
        b"\xef\xbb\xbf{}", "比特币".encode(), b'{"jwt":"Bearer \xe6\xaf\x94"}',
    ]
    alphabet = ['{', '}', '"', ':', ",", "[", "]", "jwt", "Bearer", " ", "ping", "\\", "null", "1", "é", "\u2028", "𝄞"]
    randoms = []
    for _ in range(count):
        if rng.random() < 0.5:
            text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
        else:
            text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0xD800)]))
                           for _ in range(rng.randrange(0, 60)))
        randoms.append(text.encode("utf-8"))
    return fixed + randoms


class HostileInputTests(ChaosTestCase):
    async def test_hostile_clients(self) -> None:
        """
        The text corpus, binary frames and forged tokens on one connection:
        exactly the documented reply each, in order, and the connection stays
        open. Oversized messages, invalid UTF-8 and protocol violations on
        connections of their own: 1009, 1007, 1002. A victim member receives
        its events throughout and nobody else does.
        """
        # Thousands of messages on one connection as fast as possible: the
        # inbound rate budget is off here (its own test is test_rate_budget).
        daemon = self.start_daemon(
            WEBSOCKET_AUTH_ATTEMPTS_PER_MINUTE="0",
            WEBSOCKET_INBOUND_FRAMES_PER_SECOND="0",
            WEBSOCKET_INBOUND_BYTES_PER_SECOND="0",
        )
        victim_uid = new_uid()
        victim = await self.client(daemon, victim_uid)
        await self.until_metric(daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == 1, 10, "the victim's binding")
        publisher = await self.publisher(daemon)

        attacker = await self.client(daemon)
        await attacker.next_json()
        corpus = text_corpus(scaled(300, 3000), seed=20261124)
        tokens = {label: token for label, token in forged_tokens().items() if len(token) < MAX_MESSAGE - 100}
        inputs: list[tuple[bytes, bool]] = [(m, False) for m in corpus]
        inputs += [(json.dumps({"jwt": "Bearer " + t}).encode(), False) for t in tokens.values()]
        inputs += [(m, True) for m in corpus[:50]]
        for sent, (payload, binary) in enumerate(inputs, 1):
            attacker.send_raw(client_frame(payload, 2 if binary else 1))
            # A victim event between attacker messages, now and then.
            if sent % 50 == 0:
                publisher.publish(sent, f"private.{victim_uid}.order", json.dumps({"seq": sent}).encode())
        await attacker.wait(lambda: len(attacker.messages) >= 1 + len(inputs), 60, "a reply to every message")
        replies = attacker.messages[1:]
        expected = [expected_reply(p, b).decode() for p, b in inputs]
        self.assertEqual(len(replies), len(expected))
        mismatched = [(p[:60], r, e) for (p, _), r, e in zip(inputs, replies, expected, strict=True) if r != e]
        self.assertEqual(mismatched, [])
        self.assertFalse(attacker.lost)
        forged_replies = replies[len(corpus) : len(corpus) + len(tokens)]
        self.assertEqual(set(forged_replies), {'{"error":{"message":"Authentication failed."}}'})

        # What each connection's close code should be. A malformed close frame
        # from the client ends the closing handshake it began: the daemon may
        # just drop the connection (None) instead of answering 1002.
        closes: dict[str, tuple[int | None, set[int | None]]] = {}
        tokens_too_big = [t for t in forged_tokens().values() if len(t) >= MAX_MESSAGE]
        too_big = [json.dumps({"jwt": "Bearer " + t}).encode() for t in tokens_too_big]
        too_big += [b"x" * (MAX_MESSAGE + 1), b"[" * 100_000]
        for i, frame in enumerate(too_big):
            closes[f"oversized #{i}"] = (await self.close_code_after(daemon, client_frame(frame, 1)), {1009})
        for i, bad in enumerate([b"\xff", b"\xc3\x28", b'{"jwt":"Bearer \xed\xa0\x80"}', b"ok\xf8\x88\x80\x80\x80"]):
            closes[f"invalid UTF-8 #{i}"] = (await self.close_code_after(daemon, client_frame(bad, 1)), {1007})
        for name, data in PROTOCOL_VIOLATIONS.items():
            allowed: set[int | None] = {1002, None} if name.startswith("close") else {1002}
            closes[name] = (await self.close_code_after(daemon, data), allowed)
        wrong = {name: got for name, (got, allowed) in closes.items() if got not in allowed}
        self.assertEqual(wrong, {})

        # The victim got its events, in order, and nothing else; the attacker none of them.
        await publisher.settle()
        seqs = [s for s, _ in publisher.outcome.items()]
        await victim.wait(lambda: len(victim.messages) >= 2 + len(seqs), 30, "the victim's events")
        self.assertEqual([json.loads(m)["order"]["seq"] for m in victim.messages[2:]], seqs)
        self.assertFalse(any("seq" in m for m in attacker.messages if isinstance(m, str)))
        record(
            "hostile input: clients, end to end",
            {
                "messages on one connection (text, binary, forged tokens)": len(inputs),
                "  of which forged tokens": len(tokens),
                "replies as documented": len(inputs) - len(mismatched),
                "connections closed as documented (1009 / 1007 / 1002)": len(closes) - len(wrong),
                "victim events delivered / published": f"{len(victim.messages) - 2} / {len(seqs)}",
                "victim events seen by the attacker": 0,
            },
        )
        self.assert_alive(daemon)

    async def test_hostile_handshakes(self) -> None:
        """
        Upgrade requests with what browsers and libraries add (a
        permessage-deflate offer, subprotocols, Origin null, big cookies) are
        accepted and can log in; requests that are no usable upgrade get a
        4xx (505 for HTTP/1.0) or are closed; the daemon stays up.
        """
        daemon = self.start_daemon()
        accepted = {}
        for name, headers in UNUSUAL_HANDSHAKES.items():
            client = await self.client(daemon, headers=headers)
            accepted[name] = client.status
            if client.status == 101:
                self.assertEqual(await client.login(make_token(uid=new_uid())), AUTHENTICATED, name)
        refused: dict[str, int | None] = {}
        for name, request in BAD_HANDSHAKES.items():
            raw = self.raw(daemon)
            raw.sock.sendall(request)
            refused[name] = raw_status(raw)
        record(
            "hostile input: handshakes, end to end",
            {
                "unusual but valid, accepted (101) and logged in": sum(s == 101 for s in accepted.values()),
                "broken, refused": ", ".join(f"{k}: {v}" for k, v in refused.items()),
            },
        )
        self.assertEqual(set(accepted.values()), {101}, accepted)
        for name, status in refused.items():
            self.assertTrue(status is None or 400 <= status < 500 or status == 505, (name, status))
        self.assert_alive(daemon)

    async def close_code_after(self, daemon: DaemonProcess, data: bytes) -> int | None:
        client = await ws_connect(daemon.port)
        self.addCleanup(client.abort)
        await client.next_json()
        client.send_raw(data)
        await client.gone(15)
        return client.close_code

    async def test_hostile_producer(self) -> None:
        """
        Malformed bodies and routing keys reaching the daemon's queue (a
        catch-all binding added behind its back): counted and dropped, the
        consumer goes on. Members whose genuine uid is a wildcard or has a
        dot cannot log in (bad_uid); the others get only what names their
        exact uid; the victim gets exactly its well-formed events, in order.
        """
        daemon = self.start_daemon()
        queue = queue_name_from_log(daemon.wait_log("consuming from"))
        victim_uid = new_uid()
        victim = await self.client(daemon, victim_uid)
        unbindable = ["*", "#", f"{victim_uid}.*", f"{victim_uid}#"]
        for uid in unbindable:
            client = await self.client(daemon)
            self.assertEqual(await client.login(make_token(uid=uid)), AUTH_FAILED, uid)
        self.assertEqual(
            self.gauge(daemon, "peatio_ws_authentications_total", result="failure", reason="bad_uid"), len(unbindable)
        )
        hostile_uids = ["private"]
        hostile: dict[str, WsClient] = {uid: await self.client(daemon, uid) for uid in hostile_uids}
        await self.until_metric(daemon, "peatio_ws_rabbitmq_bindings", lambda v: v == 2, 10, "the valid uids bound")
        publisher = await self.publisher(daemon)
        plain = await Publisher.connect()
        try:
            await plain.channel.queue_bind(queue=queue.encode(), exchange=daemon.exchange.encode(), routing_key=b"#")
        finally:
            await plain.close()

        bad_keys: list[str | bytes] = [
            "private..order", f"private.{victim_uid}", f"private.{victim_uid}.", f"private.{victim_uid}.order.x",
            # public.<id>.<event> is SPEC §7's (the hub's, for ranger subscribers): its malformed shapes are bad.
            f"public.{victim_uid}", f"public.{victim_uid}.order.x", f"public..{victim_uid}",
            f"PRIVATE.{victim_uid}.order", "private", "", ".", "..",
            b"private.\xff\xfe.order", f"private.{victim_uid}.".encode() + b"\xff",
        ]
        bad_bodies = [b"not json", b"", b"\xff\xfe", b"{", b'{"a":NaN}', b"[" * 3000 + b"]" * 3000, b"\xef\xbb\xbf{}"]
        other_keys = {"private": "private.private.trade"}
        # Keys naming the uids that could not log in: well formed, routed to no one.
        orphan_keys = ["private.*.order", "private.#.order", f"private.{victim_uid}#.order"]
        seq = 0
        good: list[int] = []
        sent_to: dict[str, list[int]] = {uid: [] for uid in hostile_uids}
        rounds = scaled(3, 30)
        for _ in range(rounds):
            for key in bad_keys:
                publisher.publish(seq := seq + 1, key, json.dumps({"seq": seq, "secret": "victim"}).encode())
            for body in bad_bodies:
                publisher.publish(seq := seq + 1, f"private.{victim_uid}.order", body)
            for key in orphan_keys:
                publisher.publish(seq := seq + 1, key, json.dumps({"seq": seq, "to": key}).encode())
            for uid, key in other_keys.items():
                publisher.publish(seq := seq + 1, key, json.dumps({"seq": seq, "to": key}).encode())
                sent_to[uid].append(seq)
            publisher.publish(seq := seq + 1, f"private.{victim_uid}.order", json.dumps({"seq": seq}).encode())
            good.append(seq)
        big = json.dumps({"seq": seq + 1, "blob": "数" * 350_000}, ensure_ascii=False).encode()
        publisher.publish(seq := seq + 1, f"private.{victim_uid}.trade", big)
        good.append(seq)
        await publisher.settle()
        await victim.wait(lambda: len(victim.messages) >= 2 + len(good), 30, "the victim's well-formed events")
        got = [next(iter(json.loads(m).values()))["seq"] for m in victim.messages[2:]]
        self.assertEqual(got, good)
        for uid, client in hostile.items():
            count = 2 + len(sent_to[uid])
            await client.wait(partial(received_at_least, client, count), 15, f"the events of {uid!r}")
        for uid, client in hostile.items():
            events = [json.loads(m) for m in client.messages[2:]]
            event = "trade" if uid == "private" else "order"
            expected: list[Any] = [{event: {"seq": n, "to": other_keys[uid]}} for n in sent_to[uid]]
            self.assertEqual(events, expected, uid)
            self.assertFalse(any("victim" in m for m in client.messages if isinstance(m, str)), uid)
        dropped_keys = self.gauge(daemon, "peatio_ws_events_dropped_total", reason="bad_routing_key")
        malformed = self.gauge(daemon, "peatio_ws_events_dropped_total", reason="malformed")
        record(
            "hostile input: producer, end to end",
            {
                "messages published": seq,
                "bad routing keys (dropped, counted)": int(dropped_keys),
                "malformed bodies (dropped, counted)": int(malformed),
                "victim's well-formed events delivered / published": f"{len(got)} / {len(good)}",
                "events reaching a member other than the routing key's uid": 0,
            },
        )
        # "private.<victim>." has an empty event part: a bad key too; so has every key of another shape.
        self.assertEqual(dropped_keys, rounds * len(bad_keys))
        self.assertEqual(
            self.gauge(daemon, "peatio_ws_events_dropped_total", reason="no_connection"), rounds * len(orphan_keys)
        )
        self.assertEqual(malformed, rounds * len(bad_bodies))
        self.assertEqual(self.gauge(daemon, "peatio_ws_rabbitmq_bindings"), 2)
        self.assert_alive(daemon)
        self.assertEqual([c.lost for c in hostile.values()], [False] * len(hostile))


def received_at_least(client: WsClient, count: int) -> bool:
    return len(client.messages) >= count


def close_code_of(raw: RawClient) -> int | None:
    """Read what the server sends until its close frame: its code, or None if it just closed."""
    return raw.drain(limit=16 * 1024 * 1024, timeout=15)[1]


def fragment(payload: bytes, opcode: int, fin: bool) -> bytes:
    return client_frame(payload, opcode, fin=fin)


class InboundBoundsTests(ChaosTestCase):
    """
    What one hostile socket can make the real daemon hold or burn is bounded
    (issue 12): the upgrade request head, sockets in their handshake, frames
    per message, and the inbound rate budget.
    """

    async def test_request_head_never_ends(self) -> None:
        """
        Sockets whose upgrade request never ends are answered 431 once past
        16 KiB and closed: the daemon's memory and CPU stay put.
        """
        daemon = self.start_daemon()
        assert daemon.process is not None
        pid = daemon.process.pid
        rss_before, cpu_before = rss_kib(pid), cpu_seconds(pid)
        sockets = 16
        statuses = []
        sent_total = 0
        for _ in range(sockets):
            raw = self.raw(daemon, timeout=5)
            raw.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            sent = 0
            with contextlib.suppress(OSError):
                while sent < 8 * 1024 * 1024:
                    raw.sock.sendall(b"X-Junk: " + b"j" * 4096 + b"\r\n")
                    sent += 4106
            sent_total += sent
            statuses.append(raw_status(raw))
        rss_after, cpu_after = rss_kib(pid), cpu_seconds(pid)
        refused = self.gauge(daemon, "peatio_ws_connections_rejected_total", reason="request_head_too_large")
        record(
            "hostile input: upgrade requests that never end",
            {
                "sockets": sockets,
                "bytes sent before the daemon closed (all sockets)": sent_total,
                "answered 431": statuses.count(431),
                "daemon RSS growth (KiB)": rss_after - rss_before,
                "daemon CPU (ms)": round((cpu_after - cpu_before) * 1000),
            },
        )
        self.assertEqual(refused, sockets)
        # 431 when the daemon's answer arrived before the reset of what it left unread.
        self.assertTrue(all(s in (431, None) for s in statuses), statuses)
        self.assertIn(431, statuses)
        self.assertLess(rss_after - rss_before, 16 * 1024)
        self.assert_alive(daemon)

    async def test_sockets_in_handshake_are_limited(self) -> None:
        """
        Sockets that never send their upgrade request count against the
        per-address limit: past it, 503 at once; the others are dropped at
        WEBSOCKET_HANDSHAKE_TIMEOUT; then a normal client gets in.
        """
        daemon = self.start_daemon(WEBSOCKET_MAX_CONNECTIONS_PER_IP="20", WEBSOCKET_HANDSHAKE_TIMEOUT="2")
        silent = [self.raw(daemon, timeout=15) for _ in range(50)]
        statuses = [raw_status(raw) for raw in silent[20:]]
        await self.until_metric(
            daemon, "peatio_ws_inbound_limited_total", lambda v: v == 20, 20, "the silent sockets dropped",
            limit="handshake_timeout",
        )
        dropped = [raw_status(raw) for raw in silent[:20]]
        record(
            "hostile input: sockets that never send a request (limit 20 per address)",
            {
                "sockets opened": len(silent),
                "answered 503 at once": statuses.count(503),
                "dropped at the handshake timeout (2 s)": dropped.count(None),
            },
        )
        self.assertEqual(statuses, [503] * 30)
        self.assertEqual(dropped, [None] * 20)
        self.assertEqual(self.gauge(daemon, "peatio_ws_connections_rejected_total", reason="per_ip_limit"), 30)
        self.assertEqual(self.gauge(daemon, "peatio_ws_handshakes"), 0)
        client = await self.client(daemon, new_uid())
        self.assertFalse(client.lost)
        self.assert_alive(daemon)

    async def test_endless_empty_continuations(self) -> None:
        """
        A fragmented message continued with empty frames, with and without
        a token: closed 1008 within MAX_EMPTY_FRAGMENTS frames; memory stays put.
        """
        daemon = self.start_daemon()
        assert daemon.process is not None
        pid = daemon.process.pid
        rss_before = rss_kib(daemon.process.pid)
        codes = {}
        for logged_in in (False, True):
            raw = self.raw(daemon)
            self.assertEqual(raw.handshake(), 101)
            if logged_in:
                self.assertEqual(raw.login(make_token(uid=new_uid())), AUTHENTICATED)
            raw.sock.sendall(fragment(b'{"jwt":', 1, False))
            empty = fragment(b"", 0, False) * 4096
            with contextlib.suppress(OSError):
                for _ in range(100):
                    raw.sock.sendall(empty)
            codes[logged_in] = close_code_of(raw)
        record(
            "hostile input: endless empty continuation frames",
            {
                "close code without / with a token": f"{codes[False]} / {codes[True]}",
                "daemon RSS growth (KiB)": rss_kib(pid) - rss_before,
            },
        )
        self.assertEqual(codes, {False: 1008, True: 1008})
        self.assertEqual(self.gauge(daemon, "peatio_ws_inbound_limited_total", limit="message_frames"), 2)
        self.assert_alive(daemon)

    async def test_rate_budget(self) -> None:
        """
        A client sending pings, pongs or big messages as fast as it can is
        closed 1008 once its budget is spent, while a member on the same
        daemon keeps getting its events.
        """
        daemon = self.start_daemon()
        uid = new_uid()
        member = await self.client(daemon, uid)
        publisher = await self.publisher(daemon)
        floods = {
            "frames": client_frame(b"ping", 1) * 64,
            "pongs": client_frame(b"", 10) * 64,
            "bytes": client_frame(b" " * 16000, 1),
        }
        codes = {}
        for name, chunk in floods.items():
            raw = self.raw(daemon)
            self.assertEqual(raw.handshake(), 101)
            with contextlib.suppress(OSError):
                for _ in range(200):
                    raw.sock.sendall(chunk)
            codes[name] = close_code_of(raw)
        for seq in range(1, 11):
            publisher.publish(seq, f"private.{uid}.order", json.dumps({"seq": seq}).encode())
        await publisher.settle()
        await member.wait(lambda: len(member.messages) >= 12, 15, "the member's events")
        record(
            "hostile input: inbound rate budget (50 frames/s, 64 KiB/s)",
            {
                "close codes (frames, pongs, bytes)": ", ".join(f"{k}: {v}" for k, v in codes.items()),
                "member events delivered meanwhile": len(member.messages) - 2,
            },
        )
        self.assertEqual(codes, {"frames": 1008, "pongs": 1008, "bytes": 1008})
        self.assertEqual(self.gauge(daemon, "peatio_ws_inbound_limited_total", limit="frames"), 2)
        self.assertEqual(self.gauge(daemon, "peatio_ws_inbound_limited_total", limit="bytes"), 1)
        self.assertFalse(member.lost)
        self.assert_alive(daemon)
