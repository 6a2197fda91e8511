# -*- test-case-name: tests.unit.test_websocket_doors -*-
"""
The one door to Autobahn's internals. Written against autobahn 26.11.1;
L{tests.unit.test_websocket_doors} fails, naming what changed, when an
upgrade moves anything relied on here.

L{BoundedServerProtocol} is Autobahn's server protocol with what it lacks
for clients on the open internet: the bytes not yet parsed are looked at
before Autobahn buffers them, the upgrade request's end is searched only in
bytes not searched yet and the head is capped, and frames are counted per
message. The policy (limits, metrics, logs) is the subclass's, through the
C{inbound_*} and C{*_too_*} hooks; this module holds only the mechanism.

A well-formed upgrade request of the usual shape (what browsers and client
libraries send) is read by the door's own parser (L{BoundedServerProtocol}'s
C{_quick_upgrade}): one regular expression checks the whole head against a
grammar narrower than Autobahn's, and the result is what Autobahn's
C{processHandshake} would have found, then Autobahn's C{succeedHandshake}
answers it. Anything else (a header twice, a fragment, an Origin it
refuses, an extension offer it would parse, any malformed request) goes to
Autobahn's own C{processHandshake}, which accepts or refuses it as always.

What Autobahn writes itself (the 101, refusals, pongs, close frames) goes
through the protocol's C{write}, so the subclass can send it as directly as
its own frames; the 101 is held until the dialect's first message joins it
(one send, not two; C{succeedHandshake}).

L{BucketTimer} replaces the factory's C{_batched_timer} (txaio's), which
keeps each bucket's calls in a list and cancels one with C{list.remove}: a
shutdown's 15,000 closing-handshake timers land in one bucket, and each
client's answer cancels one, so the cancels cost O(n) each (in process, 19
µs a connection's close at 2,000 connections, 47 at 15,000, 83 at 30,000).

L{unfinished} and L{open_carried} are the two ends of a connection carried
across a restart in place (L{peatio_ws.websocket.handoff}): whether
Autobahn is between frames with nothing of its own waiting, and a new
protocol put straight into the state C{succeedHandshake} leaves, without
a handshake (the previous program did it).

L{bake_options} puts Autobahn's options on the protocol class once per
factory instead of on every connection; L{quiet_debug_arguments} stops the
arguments of Autobahn's debug lines being formatted when no debug line is
written; L{use_small_frame_masker} unmasks small frames (a token, a
subscription, a ping, a close) without the per-frame CFFI allocations of
Autobahn's NVX masker.

Relied on: C{WebSocketProtocol._dataReceived}, C{data}, C{processHandshake},
C{failHandshake} (replaced: what it did, C{wasNotCleanReason}, C{sendHttpErrorResponse},
C{wasClean}, C{dropConnection}), C{onFrameBegin}, C{current_frame.fin}, C{failedByMe},
C{_fail_connection}, C{closedByMe}/C{localCloseCode}/C{localCloseReason}
(set by C{sendCloseFrame}), C{onMessageBegin}, C{onMessageFrameBegin},
C{state}, C{inside_message},
C{current_frame}, C{_perMessageCompress}, C{closedByMe} (L{unfinished}), what
C{succeedHandshake} sets after its response (C{websocket_version},
C{websocket_protocol_in_use}, C{websocket_extensions_in_use}, C{state},
C{openHandshakeTimeoutCall}, C{inside_message}, C{current_frame}, C{is_open};
L{open_carried}), C{sendData}'s parameters and C{send_queue}/C{logOctets} (L{BoundedServerProtocol.sendData}),
C{http_request_data}/C{http_response_data}/C{http_headers}, what
C{processHandshake} sets before C{onConnect} (C{http_status_line},
C{http_request_uri}/C{_path}/C{_params}/C{_host}, C{websocket_version}/
C{_protocols}/C{_origin}/C{_extensions}, C{_wskey}, C{data}) and how it
checks the Origin (C{_url_to_origin}, C{_is_same_origin},
C{allowedOriginsPatterns}, C{allowNullOrigin}), C{succeedHandshake}, C{CONFIG_ATTRS}
and C{WebSocketServerFactory.setProtocolOptions}/C{resetProtocolOptions};
the factory's C{_batched_timer}, of which Autobahn calls only
C{call_later(delay, func)} and the result's C{cancel()};
the module globals C{hltype}, C{hlval} (both modules below) and C{pformat}
(C{autobahn.websocket.protocol}), used only for log lines' arguments;
the module global C{create_xor_masker(mask, length)} of
C{autobahn.websocket.protocol} and what Autobahn asks of its maskers
(C{process(data)}, once per piece of a frame's payload, C{pointer()}, C{reset()}).
"""

from __future__ import annotations

import math
import re
from functools import partial
from types import FunctionType, ModuleType
from typing import Any
from urllib.parse import parse_qs

import autobahn.twisted.websocket
import autobahn.websocket.protocol
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from peatio_ws.logs import logger
from peatio_ws.websocket.limits import MAX_EMPTY_FRAGMENTS, MAX_FRAMES_PER_MESSAGE, MAX_REQUEST_HEAD

__all__ = [
    "SMALL_FRAME",
    "BoundedServerProtocol",
    "BucketTimer",
    "bake_options",
    "open_carried",
    "quiet_debug_arguments",
    "unfinished",
    "use_bucket_timer",
    "use_small_frame_masker",
]

_END_OF_HEAD = b"\r\n\r\n"

#: The heads the quick upgrade reads: GET of an origin-form path (no ";"
#: parameters, no fragment, not "//") with an optional query, HTTP/1.1, and
#: header lines of a token name and a value of visible ASCII and inner
#: spaces. Narrower than what Autobahn accepts (RFC 9112's strict reading):
#: a head outside it goes to Autobahn. Every repetition is possessive (no
#: character it takes could start what follows), so a head that does not
#: match fails in one pass: ~20 µs for 16 KiB, where backtracking took 300.
_QUICK_HEAD = re.compile(
    rb"GET (/(?!/)[-A-Za-z0-9._~!$&'()*+,=:@%/]*+)(?:\?([-A-Za-z0-9._~!$&'()*+,;=:@%/?]*+))? HTTP/1\.1\r\n"
    rb"((?:[-!#$%&'*+.^_`|~0-9A-Za-z]++:[ \t]*+[\x21-\x7e][\x20-\x7e]*+[ \t]*+\r\n)++)\r\n"
)
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")
_PORT = re.compile(r"[0-9]+")
#: Extension offers the quick upgrade reads, as Autobahn parses them (what
#: Chrome and Firefox offer); Autobahn's C{succeedHandshake} answers them.
_DEFLATE_OFFERS: dict[str, tuple[str, dict[str, list[Any]]]] = {
    "permessage-deflate": ("permessage-deflate", {}),
    "permessage-deflate; client_max_window_bits": ("permessage-deflate", {"client_max_window_bits": [True]}),
}

_log = logger("peatio_ws.protocol")


class BoundedServerProtocol(WebSocketServerProtocol):
    """Autobahn's server protocol, with every inbound byte and frame seen and bounded first."""

    # Class-level defaults, written per connection only when they change:
    # each instance attribute costs memory on every idle connection.
    #: How far the upgrade request has been searched for its end.
    _head_scanned = 0
    #: Frames, and empty non-final frames, of the message being received:
    #: one attribute, not two (see L{connection.StreamProtocol}'s budget).
    _fragments = (0, 0)
    #: Set once the server refused what the client sent: nothing more is read.
    muted = False
    #: Set by the subclass when it has counted and logged the refusal it is
    #: about to make (an HTTP error it raises as C{ConnectionDeny} included).
    refusal_counted = False
    # Autobahn's options read here (on the class: L{bake_options}).
    trustXForwardedFor: int
    maxConnections: int
    logOctets: bool
    allowedOriginsPatterns: list[Any]
    #: While Autobahn answers an upgrade (L{succeedHandshake}): C{b""}, then
    #: the 101 it wrote, until the next write takes it along.
    _corked: bytes | None = None
    #: Whether usual upgrade requests are read by the door's parser (False:
    #: Autobahn reads every one; the door's tests compare the two).
    quick_upgrade = True

    # -- hooks: the subclass's policy ------------------------------------------------

    def inbound_bytes(self, size: int) -> bool:
        """C{size} bytes arrived; False to drop them (the subclass closed the connection)."""
        return True

    def inbound_frame(self) -> None:
        """A frame (control frames too) began, within Autobahn's own limits."""

    def request_head_too_large(self) -> None:
        """The upgrade request is over L{MAX_REQUEST_HEAD}; the subclass refuses it."""

    def too_many_frames(self) -> None:
        """A message is over L{MAX_FRAMES_PER_MESSAGE} frames or L{MAX_EMPTY_FRAGMENTS} empty ones."""

    def handshake_failed(self, code: int, reason: str) -> None:
        """Autobahn refused the upgrade request (HTTP C{code}): the subclass counts and logs it."""

    def refusal_headers(self, code: int) -> list[tuple[str, str]] | None:
        """Headers for a refusal with HTTP C{code} made through C{ConnectionDeny} (which carries none)."""
        return None

    # -- mechanism -----------------------------------------------------------------------

    @property
    def failing(self) -> bool:
        """Whether the server has already failed this connection (what arrives is skipped)."""
        return bool(self.failedByMe)

    def mute(self) -> None:
        """Stop reading from this client: nothing it sends from now on is looked at."""
        self.muted = True
        self.data = b""
        transport: Any = self.transport
        if transport is not None and not transport.disconnecting:
            transport.pauseProducing()

    def refuse(self, code: int, text: str, headers: list[tuple[str, str]] | None = None) -> None:
        """Answer the upgrade request with HTTP C{code} (and C{headers}) and close; read nothing more."""
        self.mute()
        self._refuse_quietly(code, text, headers)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        """
        Autobahn refusing a request, its own way (a malformed one) or for the
        subclass (a C{ConnectionDeny}): L{handshake_failed} says so unless
        the subclass did (L{refusal_counted}), then as L{refuse}.
        """
        self.mute()
        if not self.refusal_counted:
            self.handshake_failed(code, reason)
        if responseHeaders is None:
            responseHeaders = self.refusal_headers(code)
        self._refuse_quietly(code, reason, responseHeaders)

    def _refuse_quietly(self, code: int, reason: str, headers: Any) -> None:
        """
        What Autobahn's C{failHandshake} does, without its two lines per
        refusal (an info line, then C{dropConnection}'s warning for a drop
        that is not clean): any client can cause any number of them, so a
        refusal is logged by the subclass, throttled. C{wasClean} is only
        read for connections that opened, which a refused one never did.
        """
        self.wasNotCleanReason = reason
        self.sendHttpErrorResponse(code, reason, headers)
        self.wasClean = True
        self.dropConnection(abort=False)

    def fail(self, code: int, reason: str) -> None:
        """Close with C{code} (any code, 1008 included, which sendClose refuses), then read nothing more."""
        self._fail_connection(code, reason)
        self.mute()

    def close_sent(self) -> tuple[int, str] | None:
        """The code and reason of the close frame this server sent first (not a reply to the client's), or None."""
        if not self.closedByMe or self.localCloseCode is None:
            return None
        reason: Any = self.localCloseReason
        text = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason or "")
        return int(self.localCloseCode), text

    def forget_handshake(self) -> None:
        """
        Drop the raw upgrade request and response and the parsed headers that
        Autobahn keeps for its own test suite: nothing reads them once the
        connection is open, and they cost ~1.2 KB per connection.
        """
        self.http_request_data = b""
        self.http_response_data = ""
        self.http_headers = {}

    def write(self, data: bytes) -> None:
        """Write bytes ready for the wire, after the 101 when it is still held (L{succeedHandshake})."""
        corked = self._corked
        if corked is not None:
            del self._corked
            data = corked + data
        self.write_now(data)

    def write_now(self, data: bytes) -> None:
        """Write bytes at once; the subclass may write more directly than C{transport.write}."""
        transport: Any = self.transport
        transport.write(data)

    def _uncork(self) -> None:
        corked = self._corked
        if corked is not None:
            del self._corked
            if corked:
                self.write_now(corked)

    # -- Autobahn's internals, overridden ------------------------------------------------

    def succeedHandshake(self, res: Any) -> None:
        """
        Autobahn's answer to an accepted upgrade, with its 101 held until the
        next write (what the dialect says on opening: the challenge), so both
        leave in one send; written at the end in any case.
        """
        self._corked = b""
        try:
            super().succeedHandshake(res)
        finally:
            self._uncork()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        What Autobahn writes itself (the 101 response, a refusal, a pong, a
        close frame) goes through L{write}, as the subclass's own frames do;
        Autobahn's trickling (C{sync}, C{chopsize}, a queue already waiting)
        and octet logging are left to it. Autobahn's C{trafficStats} are not
        kept for these writes (nothing here reads them).
        """
        if sync or chopsize or self.send_queue or self.logOctets:
            self._uncork()
            super().sendData(data, sync, chopsize)
        elif self._corked == b"":
            self._corked = data  # the 101 (L{succeedHandshake})
        else:
            self.write(data)

    def _dataReceived(self, data: bytes) -> None:
        if self.muted or not self.inbound_bytes(len(data)):
            return
        super()._dataReceived(data)

    def processHandshake(self) -> None:
        data = self.data
        scanned = self._head_scanned
        end = data.find(_END_OF_HEAD, scanned - 3 if scanned > 3 else 0)
        if end < 0:
            if len(data) > MAX_REQUEST_HEAD:
                self.request_head_too_large()
            else:
                self._head_scanned = len(data)
            return
        if end + len(_END_OF_HEAD) > MAX_REQUEST_HEAD:
            self.request_head_too_large()
            return
        if not (self.quick_upgrade and self._quick_upgrade(end + len(_END_OF_HEAD))):
            super().processHandshake()

    def _quick_upgrade(self, size: int) -> bool:
        """
        Read the first C{size} bytes of C{data}, the upgrade request's head,
        if it is of the usual shape and Autobahn would accept it as it is;
        then ask C{onConnect} and answer as Autobahn does. False (nothing
        changed) for any other head: Autobahn reads it.
        """
        head = self.data[:size]
        match = _QUICK_HEAD.fullmatch(head)
        if match is None:
            return False
        headers: dict[str, str] = {}
        for line in match.group(3).decode("ascii").split("\r\n")[:-1]:
            name, _, value = line.partition(":")
            key = name.lower()
            if key in headers:
                return False
            headers[key] = value.strip(" \t")
        host = headers.get("host")
        upgrade = headers.get("upgrade")
        connection = headers.get("connection")
        key = headers.get("sec-websocket-key")
        if (
            host is None
            or upgrade is None
            or connection is None
            or key is None
            or headers.get("sec-websocket-version") != "13"
            or _KEY.fullmatch(key) is None
            or "websocket" not in [u.strip().lower() for u in upgrade.split(",")]
            or "upgrade" not in [c.strip().lower() for c in connection.split(",")]
            or (self.trustXForwardedFor and "x-forwarded-for" in headers)
            or (self.maxConnections > 0 and self.factory.countConnections > self.maxConnections)
        ):
            return False
        if ":" in host and not host.endswith("]"):
            host, port = host.rsplit(":", 1)
            if _PORT.fullmatch(port) is None or (self.factory.externalPort and int(port) != self.factory.externalPort):
                return False
        protocols: list[str] = []
        if "sec-websocket-protocol" in headers:
            protocols = [p.strip() for p in headers["sec-websocket-protocol"].split(",")]
            if len(set(protocols)) != len(protocols):
                return False
        extensions: list[tuple[str, dict[str, list[Any]]]] = []
        if "sec-websocket-extensions" in headers:
            for offer in headers["sec-websocket-extensions"].split(","):
                parsed = _DEFLATE_OFFERS.get(offer.strip())
                if parsed is None:
                    return False
                extensions.append((parsed[0], {k: list(v) for k, v in parsed[1].items()}))
        origin = headers.get("origin", "")
        if origin and not self._origin_allowed(origin):
            return False

        # The request line is what precedes the header lines the match found.
        request_line = head[: match.start(3) - 2].decode("ascii")
        query = match.group(2)
        self.http_request_data = head
        self.http_status_line = request_line
        self.http_headers = headers
        self.http_request_uri = request_line[4:-9]
        self.http_request_path = match.group(1).decode("ascii")
        self.http_request_params = parse_qs(query.decode("ascii")) if query else {}
        self.http_request_host = host
        self.websocket_version = 13
        self.websocket_protocols = protocols
        self.websocket_origin = origin
        self.websocket_extensions = extensions
        self.data = self.data[size:]
        self._wskey = key
        request = ConnectionRequest(
            self.peer,
            headers,
            self.http_request_host,
            self.http_request_path,
            self.http_request_params,
            13,
            origin,
            protocols,
            extensions,
        )
        try:
            answer = self.onConnect(request)
        except Exception:
            self._connect_refused(Failure())
            return True
        if isinstance(answer, Deferred):
            answer.addCallbacks(self.succeedHandshake, self._connect_refused)
        else:
            self.succeedHandshake(answer)
        return True

    def _origin_allowed(self, origin: str) -> bool:
        """Whether Autobahn would let C{origin} through (False too when it would find it malformed)."""
        try:
            parsed = _url_to_origin(origin)
        except ValueError:
            return False
        factory = self.factory
        if parsed == "null" and factory.allowNullOrigin:
            return True
        scheme = "https" if factory.isSecure else "http"
        return bool(_is_same_origin(parsed, scheme, factory.externalPort or factory.port, self.allowedOriginsPatterns))

    def _connect_refused(self, failure: Failure) -> None:
        """C{onConnect} refused the upgrade (C{ConnectionDeny}) or failed: the HTTP error, as Autobahn answers it."""
        if isinstance(failure.value, ConnectionDeny):
            self.failHandshake(str(failure.value.reason), failure.value.code)
            return
        _log.failure("onConnect failed: the upgrade is refused with HTTP 500", failure)
        self.failHandshake(f"Internal server error: {failure.value}", ConnectionDeny.INTERNAL_SERVER_ERROR)

    def onFrameBegin(self) -> None:
        # Autobahn's frame state is set up first either way, so that the rest
        # of a refused frame is skipped the usual way (failedByMe).
        super().onFrameBegin()
        if not self.failedByMe:
            self.inbound_frame()

    def onMessageBegin(self, isBinary: bool) -> None:
        self._fragments = (0, 0)
        super().onMessageBegin(isBinary)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        if self.failedByMe:
            return
        frames, empty = self._fragments
        frames += 1
        if length == 0 and not self.current_frame.fin:
            empty += 1
        self._fragments = (frames, empty)
        if frames > MAX_FRAMES_PER_MESSAGE or empty > MAX_EMPTY_FRAGMENTS:
            self.too_many_frames()


def unfinished(proto: WebSocketServerProtocol) -> str | None:
    """
    Why C{proto} cannot be carried across a restart as it is (a few words),
    or None: open, between messages, nothing read and not parsed, nothing of
    Autobahn's waiting to be sent, no compression context.
    """
    if proto.state != WebSocketServerProtocol.STATE_OPEN or proto.closedByMe:
        return "not open"
    if proto.data or proto.current_frame is not None or proto.inside_message:
        return "in the middle of a message"
    if proto.send_queue:
        return "a write of Autobahn's waiting"
    if proto._perMessageCompress is not None:
        return "compressed"
    return None


def open_carried(proto: WebSocketServerProtocol) -> None:
    """
    Put C{proto}, just connected (C{connectionMade} done) on a socket whose
    handshake an earlier program answered, into the state Autobahn's
    C{succeedHandshake} leaves: open, version 13, no subprotocol, no
    extension, between messages. Nothing is written and C{onOpen} is not
    called: the caller restores what the connection had.
    """
    proto.websocket_version = 13
    proto.websocket_protocol_in_use = None
    proto.websocket_extensions_in_use = []
    proto.state = WebSocketServerProtocol.STATE_OPEN
    if proto.openHandshakeTimeoutCall is not None:
        proto.openHandshakeTimeoutCall.cancel()
        proto.openHandshakeTimeoutCall = None
    proto.inside_message = False
    proto.current_frame = None  # type: ignore[assignment]
    # txaio's futures are Deferreds under Twisted.
    if not proto.is_open.called:
        proto.is_open.callback(None)


def bake_options(base: type[BoundedServerProtocol], factory: Any) -> type[BoundedServerProtocol]:
    """
    A subclass of C{base} with C{factory}'s Autobahn options as class
    attributes. Autobahn's C{_connectionMade} otherwise copies the ~45
    options (C{CONFIG_ATTRS}) from the factory into every new connection and
    pretty-prints them all for a debug log line even when debug is off:
    ~40% of the CPU of a handshake plus authentication, and 45 instance
    attributes per connection. With the options on the class and
    C{CONFIG_ATTRS} empty, the copy and the C{pformat} do nothing.
    """
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    # A function-valued option (perMessageCompressionAccept) would become a
    # method on the class and get the connection as an extra argument.
    options = {k: staticmethod(v) if isinstance(v, FunctionType) else v for k, v in options.items()}
    return type(base.__name__, (base,), {**options, "CONFIG_ATTRS": (), "__module__": base.__module__})


#: The modules whose debug lines' argument helpers L{quiet_debug_arguments} replaces, and those helpers.
DEBUG_ARGUMENT_HELPERS: dict[ModuleType, tuple[str, ...]] = {
    autobahn.websocket.protocol: ("hltype", "hlval", "pformat"),
    autobahn.twisted.websocket: ("hltype", "hlval"),
}


def _as_is(value: Any, *args: Any, **kwargs: Any) -> Any:
    """The value itself: a log line that is written formats it with C{str}."""
    return value


def quiet_debug_arguments() -> None:
    """
    Autobahn computes the arguments of its debug lines before its logger
    drops them (the daemon never writes Autobahn's debug lines): ten
    C{hltype}/C{hlval} calls a connection's life (~1.5 µs each: a qualified
    name split, joined and coloured), a C{pformat} of the options at every
    accept, and at every close C{hlval(reason)}, which formats the
    Failure's whole traceback. Those helpers, in the two modules a server
    connection runs, become the identity (C{pformat} becomes C{repr}, since
    one caller returns it as a string): a debug line written anyway shows
    the plain value instead of the coloured one. Idempotent; for the whole
    process.
    """
    for module, names in DEBUG_ARGUMENT_HELPERS.items():
        for name in names:
            setattr(module, name, repr if name == "pformat" else _as_is)


#: Payloads shorter than this (bytes) are unmasked by L{IntMasker}; longer ones by
#: Autobahn's own masker, whose SIMD loop wins from about 1.5 KiB on.
SMALL_FRAME = 1024

#: Autobahn's masker factory, as this module found it.
_autobahn_masker = autobahn.websocket.protocol.create_xor_masker


class IntMasker:
    """
    RFC 6455 section 5.3 masking of one frame's payload, by XOR of two
    Python integers. Autobahn's NVX masker allocates through CFFI for every
    frame (a mask buffer, a C object with a finalizer, a copy of the data):
    4-5 µs a frame whatever its size, where this takes 1-3 µs up to
    L{SMALL_FRAME}. Autobahn hands it the payload in pieces as they are read;
    C{pointer()} is how much it has done.
    """

    __slots__ = ("_mask", "_ptr")

    def __init__(self, mask: bytes) -> None:
        self._mask = bytes(mask)
        self._ptr = 0

    def pointer(self) -> int:
        return self._ptr

    def reset(self) -> None:
        self._ptr = 0

    def process(self, data: bytes) -> bytes:
        n = len(data)
        mask = self._mask
        shift = self._ptr & 3
        if shift:
            mask = mask[shift:] + mask[:shift]
        self._ptr += n
        key = (mask * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def small_frame_masker(mask: bytes, length: int | None = None) -> Any:
    """Autobahn's C{create_xor_masker}: L{IntMasker} for a payload under L{SMALL_FRAME}, else Autobahn's."""
    if length is not None and length < SMALL_FRAME:
        return IntMasker(mask)
    return _autobahn_masker(mask, length)


def use_small_frame_masker() -> None:
    """Autobahn unmasks through L{small_frame_masker} from now on. Idempotent; for the whole process."""
    autobahn.websocket.protocol.create_xor_masker = small_frame_masker


class _Timed:
    """One call of a L{BucketTimer}: C{cancel()} takes it out of its bucket (O(1))."""

    __slots__ = ("_slot", "_timer", "call")

    def __init__(self, timer: BucketTimer, slot: int, call: Any) -> None:
        self._timer: BucketTimer | None = timer
        self._slot = slot
        self.call = call

    def cancel(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer._cancel(self._slot, self)

    def fired(self) -> None:
        self._timer = None


class BucketTimer:
    """
    What Autobahn asks of a factory's C{_batched_timer} (the closing
    handshake's timeout, the keep-alive's, the opening handshake's):
    C{call_later} and a C{cancel()} on what it returns. Calls due in the same
    C{bucket} seconds share one timer of C{clock}, cancelled with the last of
    them; each fires at the end of its bucket, never early (at most
    C{bucket} late), in the order made. A bucket is an insertion-ordered
    dict, so a cancel costs the same whatever the number of calls. On the
    injected clock, unlike txaio's (the global reactor's).
    """

    def __init__(self, clock: Any, bucket: float = 0.2) -> None:
        self._clock = clock
        self._bucket = bucket
        #: slot -> (the clock's call, the calls due then).
        self._buckets: dict[int, tuple[Any, dict[_Timed, None]]] = {}

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> _Timed:
        now = self._clock.seconds()
        slot = math.ceil((now + delay) / self._bucket)
        entry = self._buckets.get(slot)
        if entry is None:
            entry = self._buckets[slot] = (
                self._clock.callLater(max(0.0, slot * self._bucket - now), self._fire, slot),
                {},
            )
        timed = _Timed(self, slot, partial(func, *args, **kwargs) if args or kwargs else func)
        entry[1][timed] = None
        return timed

    def _cancel(self, slot: int, timed: _Timed) -> None:
        entry = self._buckets.get(slot)
        if entry is None:
            return
        calls = entry[1]
        calls.pop(timed, None)
        if not calls:
            del self._buckets[slot]
            entry[0].cancel()

    def _fire(self, slot: int) -> None:
        entry = self._buckets.pop(slot, None)
        if entry is None:
            return
        for timed in list(entry[1]):
            timed.fired()
            try:
                timed.call()
            except Exception:
                _log.failure("a timed call of a connection failed", Failure())

    def pending(self) -> int:
        """Calls made and neither fired nor cancelled."""
        return sum(len(calls) for _, calls in self._buckets.values())


def use_bucket_timer(factory: Any, clock: Any) -> None:
    """Give C{factory} (an Autobahn factory) a L{BucketTimer} on C{clock} for its connections' timers."""
    factory._batched_timer = BucketTimer(clock)
