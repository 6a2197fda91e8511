"""
The peatio-ws benchmark: C{make bench}, or C{python -m bench [SCENARIO ...]}.

It runs the real daemon (C{twistd -n peatio-ws}) against the real RabbitMQ,
drives it from separate load-generating processes (a minimal asyncio
WebSocket client of our own, a raw-socket AMQP publisher), compares it with
a websockets + aio-pika bridge and with plain TCP sockets, and prints the
figures next to the goals. See docs/benchmarks.md.
"""
