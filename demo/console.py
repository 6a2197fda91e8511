"""The demo's one way of talking to the person at the terminal."""

from __future__ import annotations

import sys


def say(text: str) -> None:
    """One line for the person at the terminal."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
