"""peatio-ws: the private WebSocket streaming daemon of a Peatio exchange."""

__version__ = "0.1.0"
