# -*- test-case-name: tests.unit.test_amqp_nodes -*-
"""
Several RabbitMQ nodes (RABBITMQ_HOST=host1:5672,host2:5672, SPEC §8),
tried in turn: each connection attempt goes to the node after the last one
tried, so losing the node we were on sends the next attempt elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from zope.interface import implementer

__all__ = ["NodeRotation"]


@implementer(IStreamClientEndpoint)
class NodeRotation:
    """An endpoint over several: C{(description, endpoint)} pairs, one per node, used in turn."""

    def __init__(self, nodes: Sequence[tuple[str, Any]]) -> None:
        if not nodes:
            raise ValueError("at least one node")
        self._nodes = tuple(nodes)
        self._next = 0

    @property
    def upcoming(self) -> str:
        """The node the next attempt goes to (for the log line before it)."""
        return self._nodes[self._next][0]

    def __len__(self) -> int:
        return len(self._nodes)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        _, endpoint = self._nodes[self._next]
        self._next = (self._next + 1) % len(self._nodes)
        d: Deferred[Any] = endpoint.connect(protocolFactory)
        return d
