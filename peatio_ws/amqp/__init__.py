# -*- test-case-name: tests.unit.test_amqp -*-
"""
Peatio's private events from RabbitMQ (SPEC §4, §8).

 - L{peatio_ws.amqp.routing}: the contract as pure functions (routing keys,
   bindings, event labels, what may be forwarded);
 - L{peatio_ws.amqp.bindings}: which bindings the queue should have, and when;
 - L{peatio_ws.amqp.consumer}: L{EventConsumer}, the daemon's consumer service;
 - L{peatio_ws.amqp.publisher}: L{Publisher}, one small publisher (the CLI's
   C{publish}, tests, benchmarks, the demo);
 - private: C{_wire} (the AMQP frames of the hot paths, pure),
   C{_txamqp} (the one door into txAMQP), C{_clientservice} (failed
   attempts made safe with Twisted's ClientService).

Existing code imports these names from here.
"""

from peatio_ws.amqp.consumer import (
    BIND_BATCH,
    CLEAN_CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    SETUP_TIMEOUT,
    STOP_TIMEOUT,
    EventConsumer,
)
from peatio_ws.amqp.publisher import Nacked, NotConnected, Publisher, PublisherError, Unconfirmed
from peatio_ws.amqp.routing import MAX_UID_BYTES, binding_key, event_label, parse_routing_key, valid_json, valid_uid

__all__ = [
    "BIND_BATCH",
    "CLEAN_CLOSE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "MAX_UID_BYTES",
    "SETUP_TIMEOUT",
    "STOP_TIMEOUT",
    "EventConsumer",
    "Nacked",
    "NotConnected",
    "Publisher",
    "PublisherError",
    "Unconfirmed",
    "binding_key",
    "event_label",
    "parse_routing_key",
    "valid_json",
    "valid_uid",
]
