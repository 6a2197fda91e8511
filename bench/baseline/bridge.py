"""
The baseline: the same job done the obvious way in Python.

A C{websockets} server and an C{aio-pika} consumer in one asyncio process:
challenge, C{{"jwt":"Bearer …"}} verified with PyJWT (RS256), one queue bound
with C{private.<uid>.*} per connected member, and for each message a JSON
check, C{{"<event>": payload}} and C{await ws.send()} to each connection of
the member, then the ack (C{message.process()}). No Redis revocation check,
no metrics, no back-pressure limit: it does less than peatio-ws, which only
flatters the baseline.

Run: C{python -m bench.baseline.bridge --port P --exchange X --public-key B64};
it prints C{READY} when it consumes and listens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import secrets
import signal
import sys
from typing import Any

import aio_pika  # type: ignore[import-not-found, unused-ignore]
import jwt
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SUCCESS = '{"success":{"message":"Authenticated."}}'
TOKEN_TYPE = '{"error":{"message":"Token type is not provided or invalid."}}'
AUTH_FAILED = '{"error":{"message":"Authentication failed."}}'
HANDLING_ERROR = '{"error":{"message":"Error while handling message."}}'


class Bridge:
    def __init__(self, public_key: Any, queue: Any, exchange: Any) -> None:
        self.key = public_key
        self.queue = queue
        self.exchange = exchange
        self.members: dict[str, set[ServerConnection]] = {}

    async def join(self, uid: str, ws: ServerConnection) -> None:
        conns = self.members.setdefault(uid, set())
        first = not conns
        conns.add(ws)
        if first:
            await self.queue.bind(self.exchange, routing_key=f"private.{uid}.*")

    async def leave(self, uid: str, ws: ServerConnection) -> None:
        conns = self.members.get(uid)
        if conns is None:
            return
        conns.discard(ws)
        if not conns:
            del self.members[uid]
            await self.queue.unbind(self.exchange, routing_key=f"private.{uid}.*")

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send(json.dumps({"challenge": secrets.token_urlsafe(40)}))
        uid: str | None = None
        try:
            async for msg in ws:
                if isinstance(msg, bytes):
                    await ws.send(HANDLING_ERROR)
                    continue
                if msg == "ping":
                    await ws.send("pong")
                    continue
                try:
                    value = json.loads(msg)["jwt"]
                except (ValueError, KeyError, TypeError):
                    await ws.send(HANDLING_ERROR)
                    continue
                if not isinstance(value, str) or not value.startswith("Bearer "):
                    await ws.send(TOKEN_TYPE)
                    continue
                try:
                    claims = jwt.decode(value[7:], self.key, algorithms=["RS256"], audience="peatio", leeway=180)
                    new = claims["uid"]
                except (jwt.PyJWTError, KeyError):
                    await ws.send(AUTH_FAILED)
                    continue
                if new != uid:
                    if uid is not None:
                        await self.leave(uid, ws)
                    uid = new
                    await self.join(uid, ws)
                await ws.send(SUCCESS)
        except ConnectionClosed:
            pass
        finally:
            if uid is not None:
                await self.leave(uid, ws)

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            parts = (message.routing_key or "").split(".")
            if len(parts) != 3 or parts[0] != "private":
                return
            try:
                json.loads(message.body)
            except ValueError:
                return
            text = '{"%s":%s}' % (parts[2], message.body.decode("utf-8"))  # noqa: UP031
            for ws in list(self.members.get(parts[1], ())):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(text)


async def main(args: argparse.Namespace) -> None:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(base64.urlsafe_b64decode(args.public_key + "=" * (-len(args.public_key) % 4)))
    connection = await aio_pika.connect(host="127.0.0.1", port=args.amqp_port)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2000)
    exchange = await channel.declare_exchange(args.exchange, aio_pika.ExchangeType.TOPIC, durable=False)
    queue = await channel.declare_queue(f"baseline.{secrets.token_hex(8)}", exclusive=True)
    bridge = Bridge(key, queue, exchange)
    await queue.consume(bridge.on_message)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(bridge.handler, "127.0.0.1", args.port, max_size=16384, compression=None):
        print("READY", flush=True)
        await stop
    await connection.close()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.baseline.bridge", description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--public-key", required=True, help="URL-safe base64 of the PEM (as JWT_PUBLIC_KEY)")
    p.add_argument("--amqp-port", type=int, default=5672)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
