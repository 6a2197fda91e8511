# -*- test-case-name: tests.unit.test_amqp -*-
"""
Peatio's private events from RabbitMQ (SPEC §4, §8).

 - L{peatio_ws.amqp.routing}: the contract as pure functions (routing keys,
   bindings, event labels, what may be forwarded);
 - L{peatio_ws.amqp.consumer}: L{EventConsumer}, the daemon's consumer service;
 - private: C{_txamqp} (the txAMQP work-arounds).

Existing code imports these names from here.
"""

from peatio_ws.amqp.consumer import BIND_BATCH, CONNECT_TIMEOUT, SETUP_TIMEOUT, STOP_TIMEOUT, EventConsumer
from peatio_ws.amqp.routing import MAX_UID_BYTES, binding_key, event_label, parse_routing_key, valid_json, valid_uid

__all__ = [
    "BIND_BATCH",
    "CONNECT_TIMEOUT",
    "MAX_UID_BYTES",
    "SETUP_TIMEOUT",
    "STOP_TIMEOUT",
    "EventConsumer",
    "binding_key",
    "event_label",
    "parse_routing_key",
    "valid_json",
    "valid_uid",
]
