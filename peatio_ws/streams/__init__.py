"""
What a ranger client subscribes to (SPEC §7), apart from the WebSocket.

 - L{names}: stream names and public routing keys, as pure functions;
 - L{orderbook}: one market's order-book store, the rule that no client ever
   sees a sequence gap (pure: no I/O, no clock);
 - L{hub}: L{PublicHub}, who is subscribed to which public stream, the
   fan-out of public events (each framed once) and the order-book replay.

Private streams (C{order}, C{trade}, ...) are filtered by the registry
(L{peatio_ws.registry}); the hub holds the public ones.
"""

from peatio_ws.streams.hub import PublicHub
from peatio_ws.streams.names import Stream, parse_public_key, parse_stream

__all__ = ["PublicHub", "Stream", "parse_public_key", "parse_stream"]
