# -*- test-case-name: tests.unit.test_amqp -*-
"""
Work-arounds for txAMQP 0.8.2 (unmaintained since 2018, pinned exactly).

 - Body frames are decoded "opportunistically" as UTF-8 text, and the reader
   then counts characters against the byte size in the content header: a
   non-ASCII UTF-8 body never completes and desynchronises the connection.
   L{install} makes body decoding return the raw bytes, always.
 - The package ships no AMQP spec file; L{load_spec} loads the one the
   Debian package C{amqp-specs} installs (AMQP_SPEC) and fails with one
   clear line naming the key.
 - txAMQP still calls the deprecated C{returnValue}; its warnings are
   silenced (for txAMQP's own modules only).

Publishing C{str} is broken too (the length is counted in characters):
only ever publish C{bytes}. Our own code does.
"""

from __future__ import annotations

import warnings
from typing import Any

from txamqp import spec as _spec
from txamqp.connection import Body

from peatio_ws.config import ConfigError

__all__ = ["install", "installed", "load_spec"]

_installed = False


def _decode_body(spec: Any, dec: Any) -> Any:
    """Decode a body frame's payload as the raw bytes it is."""
    return Body(dec.decode_longbytes())


def install() -> None:
    """Apply the work-arounds; safe to call any number of times."""
    global _installed
    if _installed:
        return
    Body.decode = staticmethod(_decode_body)
    warnings.filterwarnings(
        "ignore",
        message=r".*returnValue was deprecated",
        category=DeprecationWarning,
        module=r"txamqp(\.|$)",
    )
    _installed = True


def installed() -> bool:
    """Whether L{install} has run (and the body decoder is ours)."""
    return bool(Body.decode is _decode_body)


def load_spec(path: str) -> Any:
    """
    Load an AMQP 0-9-1 spec file.

    @raise ConfigError: naming AMQP_SPEC, when the file is missing, not a
        spec, or the spec of another protocol version (the consumer speaks
        0-9-1, what RabbitMQ and Peatio use).
    """
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError("AMQP_SPEC", f"cannot read {path!r}: {e.strerror or e}") from None
    try:
        loaded = _spec.load(path)
    except Exception as e:
        raise ConfigError("AMQP_SPEC", f"{path!r} is not an AMQP spec file ({type(e).__name__})") from None
    if (loaded.major, loaded.minor) != (0, 9):
        raise ConfigError(
            "AMQP_SPEC",
            f"{path!r} is the AMQP {loaded.major}-{loaded.minor} spec; the 0-9-1 spec is needed "
            "(/usr/share/amqp/specs/0-9-1/amqp0-9-1.stripped.xml from the amqp-specs package)",
        )
    try:
        loaded.classes.byname["basic"].methods.byname["deliver"]
    except KeyError:
        raise ConfigError("AMQP_SPEC", f"{path!r} lacks basic.deliver; is it a complete 0-9-1 spec?") from None
    return loaded
