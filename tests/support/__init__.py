"""
What the suites (and the benchmark and the demo) share; never imports
them. One module a job:

 - paths: REPO, the checkout's root;
 - waiting: sleep, within, until (reactor) and until_blocking;
 - daemon: DaemonProcess, the one runner of ``twistd -n peatio-ws``; run_cli; stop_child,
   how a child process is stopped (by its PID, SIGKILL when it hangs);
 - servers: PrivateRedis, PrivateRabbit and PrivateRabbitCluster (three nodes joined), servers
   a test starts and faults itself;
 - broker: the machine's RabbitMQ (address, rabbitmqctl listings);
 - redis_helpers: the machine's Redis (address, redis-cli);
 - publisher: Publisher and ConfirmingPublisher (what became of every event);
 - reactor_client: WsClient, the WebSocket client on real sockets;
 - raw_client: RawClient, the raw blocking socket that misbehaves on purpose;
 - streams: steady numbered streams, what a client got, delivery figures; Member, a front end
   that reconnects and resyncs on 1012, and the silent-gap rule;
 - probes: RSS, CPU, descriptors of a process; one Prometheus sample;
 - figures: the quick/full mode and the figures each fault test records
   (``python -m tests.support.figures FILE`` prints them);
 - cases: DaemonTestCase, ChaosTestCase and ClusterFailoverCase, which start and clean up all of it;
 - corpus: hostile handshakes, frames and forged tokens;
 - oracle: the reference model of the daemon's replies.

The WebSocket codec, the in-memory client, keys, tokens and fakes are in
L{peatio_ws.testing}.
"""
