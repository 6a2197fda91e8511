"""The ``twistd peatio-ws`` plugin; all the work is in peatio_ws.tap."""

from twisted.application.service import ServiceMaker

peatio_ws = ServiceMaker("peatio-ws", "peatio_ws.tap", "Private WebSocket streaming daemon for Peatio", "peatio-ws")
