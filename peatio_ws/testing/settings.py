"""Ready-made L{Settings} for tests."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from peatio_ws.config import Settings
from peatio_ws.testing.keys import rsa_key

__all__ = ["settings_for_tests"]


def settings_for_tests(**overrides: Any) -> Settings:
    """
    L{Settings} with its defaults, the public half of L{rsa_key} as
    C{jwt_public_key}, and C{overrides} (lower-case attribute names, already
    typed values: C{jwt_algorithm=("ES256",)}, not C{"ES256"}) applied.
    Nothing is validated.
    """
    settings = Settings(jwt_public_key=rsa_key().public_key())
    return replace(settings, **overrides) if overrides else settings
