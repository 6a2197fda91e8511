"""
The client-facing WebSocket side.

 - L{factory}: builds connections, holds what they share, keep-alive, shutdown;
 - L{admission}: who may open a socket, and the handshake deadline;
 - L{connection}: one connection, whatever its dialect (limits, auth state,
   back-pressure, closes);
 - L{legacy}: the legacy dialect (SPEC §3), one front door; a second dialect
   is a module beside it, chosen by L{factory.StreamFactory.dialect_for};
 - L{tokens}: checking a token (signature, claims, revocation);
 - L{replies}, L{limits}, L{origins}: the exact texts, the bounds, the origins;
 - L{_autobahn}, L{_transport}: the only modules touching Autobahn's and
   Twisted's internals.
"""

from peatio_ws.websocket.connection import StreamProtocol
from peatio_ws.websocket.factory import StreamFactory
from peatio_ws.websocket.replies import CloseCode, Reply

__all__ = ["CloseCode", "Reply", "StreamFactory", "StreamProtocol"]
