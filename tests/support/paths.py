"""Where things are: the one constant for the checkout's root directory."""

from __future__ import annotations

from pathlib import Path

#: The root of this checkout (the working directory and PYTHONPATH of child processes).
REPO = Path(__file__).resolve().parents[2]
