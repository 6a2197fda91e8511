/*
 * peatio-ws example client: connect, authenticate with a Barong JWT, receive
 * private events, refresh the token before it expires, detect dead
 * connections, and reconnect with exponential backoff and jitter.
 * See docs/protocol.md for the protocol this implements.
 *
 * Browser:  <script src="client.js"></script>  then  new PeatioStream({...}).start()
 * Node.js:  const { PeatioStream } = require("./client.js")
 *           (Node 22+ has a global WebSocket; on older versions `npm install ws`,
 *           or run Node 20/21 with --experimental-websocket)
 * Command line (Node):
 *   PEATIO_WS_URL=wss://ws.example.com/ PEATIO_JWT=eyJ... node examples/client.js
 *
 * No dependencies; plain ES2020.
 */
"use strict";

(function (root) {
  const SERVER_MESSAGES = new Set(["challenge", "success", "error"]);

  /** The JWT's claims, or {} when the token cannot be decoded (never verified here). */
  function jwtClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      const binary =
        typeof atob === "function" ? atob(padded) : Buffer.from(padded, "base64").toString("binary");
      const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (e) {
      return {};
    }
  }

  function defaultWebSocket() {
    if (typeof WebSocket !== "undefined") return WebSocket;
    if (typeof require === "function") return require("ws"); // Node before 22
    throw new Error("no WebSocket implementation: use Node 22+, or install the 'ws' package");
  }

  class PeatioStream {
    /**
     * @param {object} options
     * @param {string} options.url              wss://… (the legacy dialect: any path but one ending
     *                                          in /public or /private, no stream= query and no
     *                                          Authorization header, which choose ranger)
     * @param {() => (string|Promise<string>)} options.getToken
     *        a fresh Barong session JWT (with or without "Bearer "), called on every
     *        connect and before the current token expires
     * @param {(name: string, payload: any) => void} options.onEvent   "order", "trade", …
     * @param {(status: string, detail?: any) => void} [options.onStatus]
     *        connecting | authenticated | refreshed | disconnected | waiting | revoked |
     *        unauthorized | stopped
     */
    constructor(options) {
      this.url = options.url;
      this.getToken = options.getToken;
      this.onEvent = options.onEvent || (() => {});
      this.onStatus = options.onStatus || (() => {});
      this.WebSocket = options.WebSocket || defaultWebSocket();
      this.baseDelay = options.baseDelay ?? 1000; // ms
      this.maxDelay = options.maxDelay ?? 30000; // ms
      this.refreshMargin = options.refreshMargin ?? 60000; // ms before exp
      this.heartbeatEvery = options.heartbeatEvery ?? 20000; // ms between "ping"s
      this.heartbeatTimeout = options.heartbeatTimeout ?? 10000; // ms to wait for anything
      this.stableAfter = options.stableAfter ?? 30000; // ms authenticated before backoff resets
      this.ws = null;
      this.attempt = 0;
      this.failures = 0;
      this.stopped = true;
      this.timers = {};
    }

    start() {
      this.stopped = false;
      this.connect();
    }

    stop() {
      this.stopped = true;
      this.clearTimers();
      if (this.ws) {
        const ws = this.ws;
        this.detach();
        ws.close(1000, "client stopped");
      }
      this.onStatus("stopped");
    }

    // -- connection ----------------------------------------------------------

    connect() {
      this.clearTimers();
      this.onStatus("connecting", { attempt: this.attempt });
      let ws;
      try {
        ws = new this.WebSocket(this.url);
      } catch (e) {
        this.scheduleReconnect(this.backoff(), e);
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.authenticate(false);
        this.startHeartbeat();
      };
      ws.onmessage = (event) => this.received(event.data);
      ws.onclose = (event) => this.closed(event.code, event.reason);
      ws.onerror = () => {}; // onclose follows with the details
    }

    detach() {
      if (!this.ws) return;
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      this.ws = null;
    }

    async authenticate(refresh) {
      let token;
      try {
        token = String(await this.getToken()).replace(/^Bearer\s+/, "");
      } catch (e) {
        this.onStatus("unauthorized", e);
        this.stop();
        return;
      }
      if (!this.ws || this.ws.readyState !== 1) return;
      this.refreshing = refresh;
      this.ws.send(JSON.stringify({ jwt: "Bearer " + token }));
      // Refresh before exp: same connection, no event lost.
      const exp = jwtClaims(token).exp;
      clearTimeout(this.timers.refresh);
      if (typeof exp === "number") {
        const wait = Math.max(exp * 1000 - Date.now() - this.refreshMargin, 5000);
        this.timers.refresh = setTimeout(() => this.authenticate(true), wait);
      }
    }

    received(data) {
      this.lastMessage = Date.now();
      if (typeof data !== "string") data = String(data);
      if (data === "pong") return;
      let message;
      try {
        message = JSON.parse(data);
      } catch (e) {
        return;
      }
      const name = Object.keys(message)[0];
      const payload = message[name];
      if (!SERVER_MESSAGES.has(name)) {
        this.onEvent(name, payload);
      } else if (name === "success") {
        this.failures = 0;
        this.onStatus(this.refreshing ? "refreshed" : "authenticated");
        clearTimeout(this.timers.stable);
        this.timers.stable = setTimeout(() => (this.attempt = 0), this.stableAfter);
      } else if (name === "error") {
        const text = payload && payload.message;
        if (text === "Authentication failed.") {
          // Once may be a token that just expired; twice in a row means log in again.
          this.failures += 1;
          if (this.failures >= 2) {
            this.onStatus("unauthorized", text);
            this.stop();
          } else {
            this.authenticate(false);
          }
        }
        // "Token expired." and "Too many authentication attempts." are followed by a close.
      }
    }

    closed(code, reason) {
      this.detach();
      this.clearTimers();
      if (this.stopped) return;
      this.onStatus("disconnected", { code, reason });
      if (code === 4003) {
        // Revoked: this session is over; the user has to log in again.
        this.onStatus("revoked");
        this.stop();
        return;
      }
      let delay;
      if (code === 1001) delay = Math.random() * 5000; // server restarting: spread the herd
      else if (code === 4001) delay = 0; // expired: a fresh token is fetched on connect
      else if (code === 4029) delay = 60000 + Math.random() * 30000;
      else delay = this.backoff();
      this.scheduleReconnect(delay);
    }

    /** Full jitter: random(0, min(max, base * 2^attempt)). */
    backoff() {
      const ceiling = Math.min(this.maxDelay, this.baseDelay * 2 ** this.attempt);
      this.attempt += 1;
      return Math.random() * ceiling;
    }

    scheduleReconnect(delay, detail) {
      this.onStatus("waiting", { delay: Math.round(delay), detail });
      this.timers.reconnect = setTimeout(() => this.connect(), delay);
    }

    // -- keep-alive: the text frame "ping" is answered with "pong" ---------------

    startHeartbeat() {
      this.lastMessage = Date.now();
      this.timers.heartbeat = setInterval(() => {
        if (!this.ws) return;
        if (Date.now() - this.lastMessage > this.heartbeatEvery + this.heartbeatTimeout) {
          // Nothing for too long: the connection is dead even if the socket says open.
          const ws = this.ws;
          this.detach();
          try {
            ws.close(4000, "no pong");
          } catch (e) {
            /* already closing */
          }
          this.closed(1006, "no pong");
          return;
        }
        this.ws.send("ping");
      }, this.heartbeatEvery);
    }

    clearTimers() {
      clearTimeout(this.timers.refresh);
      clearTimeout(this.timers.stable);
      clearTimeout(this.timers.reconnect);
      clearInterval(this.timers.heartbeat);
      this.timers = {};
    }
  }

  if (typeof module !== "undefined" && module.exports) {
    module.exports = { PeatioStream, jwtClaims };
  } else {
    root.PeatioStream = PeatioStream;
  }

  // Command line: print events as JSON lines.
  if (typeof require === "function" && typeof module !== "undefined" && require.main === module) {
    const url = process.env.PEATIO_WS_URL || "ws://127.0.0.1:8080/";
    const token = process.env.PEATIO_JWT;
    if (!token) {
      console.error("set PEATIO_JWT to a Barong session token (and PEATIO_WS_URL)");
      process.exit(2);
    }
    const stream = new PeatioStream({
      url,
      getToken: () => token,
      onEvent: (name, payload) => console.log(JSON.stringify({ [name]: payload })),
      onStatus: (status, detail) => console.error(status, detail === undefined ? "" : JSON.stringify(detail)),
    });
    process.on("SIGINT", () => {
      stream.stop();
      process.exit(0);
    });
    stream.start();
  }
})(typeof globalThis !== "undefined" ? globalThis : this);
