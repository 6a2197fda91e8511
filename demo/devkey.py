"""
The demo's development key pair: made once in ``.dev/`` (the same files
``make dev-key`` writes, so ``make run`` trusts the demo's tokens too) and
reused; tokens signed with it for any uid.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from demo.console import say
from peatio_ws.testing import algorithm_for, generate_rsa_key, make_token, private_key_pem, public_key_b64


@dataclass
class DevKey:
    """The development private key, its JWS algorithm and JWT_PUBLIC_KEY value."""

    private: Any
    algorithm: str
    public_b64: str
    path: Path

    def token(self, uid: str, lifetime: int) -> tuple[str, int]:
        """A Barong-shaped session token for C{uid}; returns (token, exp)."""
        now = int(time.time())
        email = f"{uid.lower()}@example.com"
        token = make_token(self.private, algorithm=self.algorithm, now=now, lifetime=lifetime, uid=uid, email=email)
        return token, now + lifetime


def load_or_create_key(path: Path) -> tuple[DevKey, bool]:
    """Load the PEM private key at C{path}, or make an RSA one there; (key, created)."""
    created = False
    if path.exists():
        private: Any = serialization.load_pem_private_key(path.read_bytes(), password=None)
    else:
        private = generate_rsa_key()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_pem(private).encode("ascii"))
        created = True
    # Peatio's convention: URL-safe base64 of the PEM text.
    return DevKey(private, algorithm_for(private), public_key_b64(private), path), created


def sync_env_file(key: DevKey, created: bool) -> None:
    """Keep ``jwt.env`` beside the key (what ``make run`` reads) in step with it."""
    env_file = key.path.with_name("jwt.env")
    line = f"JWT_PUBLIC_KEY={key.public_b64}\n"
    if created or not env_file.exists():
        env_file.write_text(line, encoding="ascii")
    elif env_file.read_text(encoding="ascii", errors="replace").strip() != line.strip():
        say(f"note: {env_file} holds another public key than {key.path}; `make run` will not trust demo tokens")
