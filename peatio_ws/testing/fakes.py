"""Plain fakes of what the registry talks to: connections and membership observers."""

from __future__ import annotations

from typing import Any

__all__ = ["FakeConnection", "MembershipRecorder"]


class MembershipRecorder:
    """A registry observer that records members joining and leaving, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def member_joined(self, uid: str) -> None:
        self.events.append(("joined", uid))

    def member_left(self, uid: str) -> None:
        self.events.append(("left", uid))


class FakeConnection:
    """
    A connection as the registry sees it: records the frames it is sent and
    how often it was revoked. C{accept=False} refuses frames (a closing or
    slow connection); C{on_send} is called with each frame before it is kept.
    """

    def __init__(self, conn_id: str, accept: bool = True, on_send: Any = None) -> None:
        self.conn_id = conn_id
        self.frames: list[bytes] = []
        self.revoked = 0
        #: How often it was told that events may have been lost (1012).
        self.lost = 0
        self.accept = accept
        self.on_send = on_send

    def send_frame(self, frame: bytes) -> bool:
        if self.on_send is not None:
            self.on_send(frame)
        if self.accept:
            self.frames.append(frame)
        return self.accept

    def revoke(self) -> None:
        self.revoked += 1

    def events_lost(self) -> None:
        self.lost += 1
