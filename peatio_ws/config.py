# -*- test-case-name: tests.unit.test_config -*-
"""
Load and validate the daemon's configuration.

The configuration is a flat map of upper-case keys (Peatio's convention), read
from a YAML file and overridden key by key from the environment. Every value is
parsed and checked here, once, into an immutable L{Settings}; a bad value
raises L{ConfigError} naming the key, so start-up can stop with one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from peatio_ws.auth import SecondsClock, TokenVerifier, check_algorithm_names, check_key_matches, load_public_key
from peatio_ws.collector import POLICIES as GC_POLICIES

__all__ = [
    "KEYS",
    "ConfigError",
    "RedisAddress",
    "Settings",
    "default_config_path",
    "load_settings",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(Exception):
    """
    A configuration value is missing or malformed.

    C{str(error)} is one line, naming the key and what is wrong with it.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def default_config_path() -> Path:
    """
    Where the default configuration lives.

    An installed package carries a copy of C{etc/application.yml} inside
    itself (setup.py puts it there), so the daemon runs on its defaults from
    any working directory; a checkout uses C{etc/application.yml} directly.
    """
    packaged = _PACKAGE_DIR / "application.yml"
    if packaged.is_file():
        return packaged
    return _PACKAGE_DIR.parent / "etc" / "application.yml"


@dataclass(frozen=True)
class RedisAddress:
    """A parsed C{redis://} URL."""

    host: str
    port: int
    db: int
    password: str | None = field(repr=False)
    tls: bool


# ---------------------------------------------------------------------------
# Value parsers. Each takes the raw value (str, int, bool or None from YAML or
# the environment) and returns the typed value or raises ValueError with a
# short, human reason.


def _text(raw: Any) -> str:
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, (str, int, float)):
        return str(raw).strip()
    raise ValueError(f"must be a plain value, got {type(raw).__name__}")


def _required(raw: Any) -> str:
    value = _text(raw)
    if not value:
        raise ValueError("is required but not set")
    return value


def _optional(raw: Any) -> str | None:
    return _text(raw) or None


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        value = _text(raw)
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"must be a whole number, got {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
            raise ValueError(f"must be a whole number {bound}, got {number}")
        return number

    return parse


def _seconds(raw: Any) -> float:
    value = _text(raw)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be a finite number of seconds >= 0, got {value!r}")
    return number


def _positive_seconds(raw: Any) -> float:
    number = _seconds(raw)
    if number <= 0:
        raise ValueError(f"must be more than 0 seconds, got {_text(raw)!r}")
    return number


def _optional_seconds(raw: Any) -> float | None:
    return _seconds(raw) if _text(raw) else None


def _flag(raw: Any) -> bool:
    value = _text(raw).lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {value!r}")


def _comma_list(raw: Any) -> tuple[str, ...]:
    return tuple(part.strip() for part in _text(raw).split(",") if part.strip())


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = _text(raw).lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _readable_file(raw: Any) -> str:
    value = _required(raw)
    try:
        with open(value, "rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read {value!r}: {e.strerror or e}") from None
    return value


def _optional_readable_file(raw: Any) -> str | None:
    return _readable_file(raw) if _text(raw) else None


def _handover_file(raw: Any) -> str | None:
    value = _text(raw)
    if not value:
        return None
    directory = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} does not exist or is not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write in {directory!r}")
    if os.path.isdir(value):
        raise ValueError(f"{value!r} is a directory; name a file in it")
    return value


def _exchange_name(raw: Any) -> str:
    value = _required(raw)
    if len(value.encode("utf-8")) > 255:
        raise ValueError("must be at most 255 bytes long")
    return value


def _redis_url(raw: Any) -> RedisAddress:
    value = _required(raw)
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"must be a redis:// or rediss:// URL, got {value!r}")
    try:
        port = parts.port if parts.port is not None else 6379
    except ValueError:
        raise ValueError(f"has a bad port in {value!r}") from None
    if port == 0:
        raise ValueError(f"has a bad port in {value!r}")
    path = parts.path.lstrip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"must name a database number after the host, got {path!r}") from None
    if db < 0:
        raise ValueError(f"must name a database number of at least 0, got {db}")
    return RedisAddress(
        host=parts.hostname or "localhost",
        port=port,
        db=db,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
    )


def parse_nodes(value: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """
    RabbitMQ nodes from C{host[:port]} entries separated by commas (an
    entry without a port uses C{default_port}).

    @raise ValueError: an empty entry, or a port that is not 1-65535.
    """
    nodes: list[tuple[str, int]] = []
    for entry in value.split(","):
        entry = entry.strip()
        host, colon, port_text = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if not host or not host.strip():
            raise ValueError(f"has an empty host in {value!r}")
        port = default_port
        if colon:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"has a bad port in {entry!r} (1-65535)")
            port = int(port_text)
        nodes.append((host.strip(), port))
    return tuple(nodes)


def _rabbitmq_hosts(raw: Any) -> str:
    value = _required(raw)
    parse_nodes(value, 5672)
    return value


def _public_key(raw: Any) -> Any:
    return load_public_key(_required(raw))


def _algorithms(raw: Any) -> tuple[str, ...]:
    return check_algorithm_names(_comma_list(raw))


# ---------------------------------------------------------------------------


#: Every configuration key, with its parser. Secrets are masked when shown.
KEYS: dict[str, Callable[[Any], Any]] = {
    "WEBSOCKET_HOST": _required,
    "WEBSOCKET_PORT": _integer(0, 65535),
    "WEBSOCKET_SSL_KEY": _optional_readable_file,
    "WEBSOCKET_SSL_CERT": _optional_readable_file,
    "WEBSOCKET_AUTH_TIMEOUT": _seconds,
    "WEBSOCKET_PING_INTERVAL": _seconds,
    "WEBSOCKET_MAX_MESSAGE_SIZE": _integer(64, 64 * 1024 * 1024),
    "WEBSOCKET_ALLOWED_ORIGINS": _comma_list,
    "WEBSOCKET_CLOSE_TIMEOUT": _positive_seconds,
    "WEBSOCKET_MAX_BUFFER": _integer(65536),
    "WEBSOCKET_REUSE_PORT": _flag,
    "WEBSOCKET_MAX_CONNECTIONS_PER_IP": _integer(0),
    "WEBSOCKET_AUTH_ATTEMPTS_PER_MINUTE": _integer(0),
    "WEBSOCKET_HANDSHAKE_TIMEOUT": _positive_seconds,
    "WEBSOCKET_MAX_HANDSHAKES": _integer(0),
    "WEBSOCKET_NEW_CONNECTIONS_PER_SECOND": _integer(0),
    "WEBSOCKET_INBOUND_FRAMES_PER_SECOND": _integer(0),
    "WEBSOCKET_INBOUND_BYTES_PER_SECOND": _integer(0),
    "RANGER_ORDERBOOK_MAX_INCREMENTS": _integer(0, 1_000_000),
    "RANGER_MAX_STREAMS": _integer(1, 10_000),
    "JWT_PUBLIC_KEY": _public_key,
    "JWT_ALGORITHM": _algorithms,
    "JWT_ISSUER": _optional,
    "JWT_AUDIENCE": _comma_list,
    "JWT_DEFAULT_LEEWAY": _optional_seconds,
    "JWT_ISSUED_AT_LEEWAY": _optional_seconds,
    "JWT_EXPIRATION_LEEWAY": _optional_seconds,
    "JWT_NOT_BEFORE_LEEWAY": _optional_seconds,
    "JWT_HANDOVER_FILE": _handover_file,
    "RABBITMQ_HOST": _rabbitmq_hosts,
    "RABBITMQ_PORT": _integer(1, 65535),
    "RABBITMQ_USER": _required,
    "RABBITMQ_PASSWORD": _text,
    "RABBITMQ_VHOST": _required,
    "RABBITMQ_EVENTS_EXCHANGE": _exchange_name,
    "RABBITMQ_HEARTBEAT": _integer(0, 65535),
    "RABBITMQ_PREFETCH": _integer(0, 65535),
    "RABBITMQ_QUEUE_EXPIRES": _positive_seconds,
    "RABBITMQ_UNBIND_DELAY": _seconds,
    "RABBITMQ_QUEUE_TYPE": _choice("classic", "quorum"),
    "RABBITMQ_PRIVATE_BINDING": _choice("member", "all"),
    "RABBITMQ_STORM_BINDING_AT": _integer(0, 1_000_000),
    "RABBITMQ_HANDOVER_FILE": _handover_file,
    "AMQP_SPEC": _readable_file,
    "REDIS_URL": _redis_url,
    "REDIS_REVOCATION_WHEN_DOWN": _choice("allow", "deny"),
    "METRICS_HOST": _required,
    "METRICS_PORT": _integer(0, 65535),
    "HEALTH_PROBE_INTERVAL": _positive_seconds,
    "HEALTH_PROBE_TIMEOUT": _positive_seconds,
    "LOG_FORMAT": _choice("text", "json"),
    "GC_POLICY": _choice(*GC_POLICIES),
}

def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """
    Read a YAML configuration file into a dict of raw values.

    @raise ConfigError: the file is missing, unreadable, not YAML, or not a
        flat map of known upper-case keys.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {str(path)!r}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("--config", f"{str(path)!r} is not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise ConfigError("--config", f"{str(path)!r} is not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{str(path)!r} must be a map of KEY: value")
    for key, value in data.items():
        if not isinstance(key, str) or key not in KEYS:
            name = str(key) if str(key).isprintable() else repr(key)  # keep the message one line
            raise ConfigError(name, f"unknown configuration key in {str(path)!r}")
        if isinstance(value, (dict, list)):
            raise ConfigError(key, "must be a plain value, not a map or list")
    return data


def _default_values() -> dict[str, Any]:
    """
    The defaults file's values, parsed: the defaults of L{Settings}. Keys
    whose check needs the machine (a file to read, a key to load) keep their
    text here and are checked when settings are loaded.
    """
    raw = read_config_file(default_config_path())
    unchecked: dict[str, Callable[[Any], Any]] = {
        "JWT_PUBLIC_KEY": _optional,
        "AMQP_SPEC": _text,
        "WEBSOCKET_SSL_KEY": _optional,
        "WEBSOCKET_SSL_CERT": _optional,
    }
    return {key.lower(): unchecked.get(key, parse)(raw.get(key)) for key, parse in KEYS.items()}


_DEFAULTS = _default_values()



@dataclass(frozen=True)
class Settings:
    """
    The validated configuration. Attribute names are the lower-case keys;
    C{jwt_public_key} is the loaded key object, not its text. The defaults
    are those of C{etc/application.yml}, read once when this module is
    imported: they are written nowhere else.
    """

    websocket_host: str = _DEFAULTS["websocket_host"]
    websocket_port: int = _DEFAULTS["websocket_port"]
    websocket_ssl_key: str | None = _DEFAULTS["websocket_ssl_key"]
    websocket_ssl_cert: str | None = _DEFAULTS["websocket_ssl_cert"]
    websocket_auth_timeout: float = _DEFAULTS["websocket_auth_timeout"]
    websocket_ping_interval: float = _DEFAULTS["websocket_ping_interval"]
    websocket_max_message_size: int = _DEFAULTS["websocket_max_message_size"]
    websocket_allowed_origins: tuple[str, ...] = _DEFAULTS["websocket_allowed_origins"]
    websocket_close_timeout: float = _DEFAULTS["websocket_close_timeout"]
    websocket_max_buffer: int = _DEFAULTS["websocket_max_buffer"]
    websocket_reuse_port: bool = _DEFAULTS["websocket_reuse_port"]
    websocket_max_connections_per_ip: int = _DEFAULTS["websocket_max_connections_per_ip"]
    websocket_auth_attempts_per_minute: int = _DEFAULTS["websocket_auth_attempts_per_minute"]
    websocket_handshake_timeout: float = _DEFAULTS["websocket_handshake_timeout"]
    websocket_max_handshakes: int = _DEFAULTS["websocket_max_handshakes"]
    websocket_new_connections_per_second: int = _DEFAULTS["websocket_new_connections_per_second"]
    websocket_inbound_frames_per_second: int = _DEFAULTS["websocket_inbound_frames_per_second"]
    websocket_inbound_bytes_per_second: int = _DEFAULTS["websocket_inbound_bytes_per_second"]
    ranger_orderbook_max_increments: int = _DEFAULTS["ranger_orderbook_max_increments"]
    ranger_max_streams: int = _DEFAULTS["ranger_max_streams"]

    jwt_public_key: Any = None
    jwt_algorithm: tuple[str, ...] = _DEFAULTS["jwt_algorithm"]
    jwt_issuer: str | None = _DEFAULTS["jwt_issuer"]
    jwt_audience: tuple[str, ...] = _DEFAULTS["jwt_audience"]
    jwt_default_leeway: float | None = _DEFAULTS["jwt_default_leeway"]
    jwt_issued_at_leeway: float | None = _DEFAULTS["jwt_issued_at_leeway"]
    jwt_expiration_leeway: float | None = _DEFAULTS["jwt_expiration_leeway"]
    jwt_not_before_leeway: float | None = _DEFAULTS["jwt_not_before_leeway"]
    jwt_handover_file: str | None = _DEFAULTS["jwt_handover_file"]

    rabbitmq_host: str = _DEFAULTS["rabbitmq_host"]
    rabbitmq_port: int = _DEFAULTS["rabbitmq_port"]
    rabbitmq_user: str = _DEFAULTS["rabbitmq_user"]
    rabbitmq_password: str = field(default=_DEFAULTS["rabbitmq_password"], repr=False)
    rabbitmq_vhost: str = _DEFAULTS["rabbitmq_vhost"]
    rabbitmq_events_exchange: str = _DEFAULTS["rabbitmq_events_exchange"]
    rabbitmq_heartbeat: int = _DEFAULTS["rabbitmq_heartbeat"]
    rabbitmq_prefetch: int = _DEFAULTS["rabbitmq_prefetch"]
    rabbitmq_queue_expires: float = _DEFAULTS["rabbitmq_queue_expires"]
    rabbitmq_unbind_delay: float = _DEFAULTS["rabbitmq_unbind_delay"]
    rabbitmq_queue_type: str = _DEFAULTS["rabbitmq_queue_type"]
    rabbitmq_private_binding: str = _DEFAULTS["rabbitmq_private_binding"]
    rabbitmq_storm_binding_at: int = _DEFAULTS["rabbitmq_storm_binding_at"]
    rabbitmq_handover_file: str | None = _DEFAULTS["rabbitmq_handover_file"]
    amqp_spec: str = _DEFAULTS["amqp_spec"]

    redis_url: RedisAddress = _DEFAULTS["redis_url"]
    redis_revocation_when_down: str = _DEFAULTS["redis_revocation_when_down"]

    metrics_host: str = _DEFAULTS["metrics_host"]
    metrics_port: int = _DEFAULTS["metrics_port"]
    health_probe_interval: float = _DEFAULTS["health_probe_interval"]
    health_probe_timeout: float = _DEFAULTS["health_probe_timeout"]
    log_format: str = _DEFAULTS["log_format"]
    gc_policy: str = _DEFAULTS["gc_policy"]

    @property
    def rabbitmq_nodes(self) -> tuple[tuple[str, int], ...]:
        """The RabbitMQ nodes to try in turn: RABBITMQ_HOST's entries, RABBITMQ_PORT where one has no port."""
        return parse_nodes(self.rabbitmq_host, self.rabbitmq_port)

    @property
    def tls(self) -> bool:
        """Serve wss:// when both the key and the certificate are set."""
        return bool(self.websocket_ssl_key and self.websocket_ssl_cert)

    def leeway(self, claim: str) -> float:
        """
        Seconds of clock leeway for C{exp}, C{nbf} or C{iat}: the claim's own
        key when set, else JWT_DEFAULT_LEEWAY, else none.
        """
        own = {
            "exp": self.jwt_expiration_leeway,
            "nbf": self.jwt_not_before_leeway,
            "iat": self.jwt_issued_at_leeway,
        }[claim]
        if own is not None:
            return own
        return self.jwt_default_leeway or 0.0

    def token_verifier(self, clock: SecondsClock) -> TokenVerifier:
        """The JWT verifier these settings describe (JWT_* keys)."""
        return TokenVerifier(
            self.jwt_public_key,
            self.jwt_algorithm,
            clock,
            issuer=self.jwt_issuer,
            audience=self.jwt_audience,
            leeways={claim: self.leeway(claim) for claim in ("exp", "nbf", "iat")},
        )


#: Keys whose values are never printed.
SECRET_KEYS = frozenset({"RABBITMQ_PASSWORD", "REDIS_URL"})

assert {f.name.upper() for f in fields(Settings)} == set(KEYS), "KEYS and Settings disagree"


def raw_values(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """
    The raw value of every key: the defaults file, then C{path} (if any),
    then the environment.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    values.update(read_config_file(default_config_path()))
    if path is not None:
        values.update(read_config_file(path))
    for key in KEYS:
        if key in environ:
            values[key] = environ[key]
    return values


def parse_values(values: Mapping[str, Any]) -> Settings:
    """
    Parse raw values into L{Settings}; the first bad key raises L{ConfigError}.
    """
    parsed: dict[str, Any] = {}
    for key, parse in KEYS.items():
        try:
            parsed[key.lower()] = parse(values.get(key))
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
    settings = Settings(**parsed)
    if bool(settings.websocket_ssl_key) != bool(settings.websocket_ssl_cert):
        missing = "WEBSOCKET_SSL_CERT" if settings.websocket_ssl_key else "WEBSOCKET_SSL_KEY"
        raise ConfigError(missing, "must be set too: TLS needs both WEBSOCKET_SSL_KEY and WEBSOCKET_SSL_CERT")
    try:
        check_key_matches(settings.jwt_public_key, settings.jwt_algorithm)
    except ValueError as e:
        raise ConfigError("JWT_ALGORITHM", str(e)) from None
    return settings


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """
    Load the configuration: defaults, file, environment, then explicit
    C{overrides} (command-line options), and validate it.
    """
    values = raw_values(path, environ)
    if overrides:
        values.update(overrides)
    return parse_values(values)


def _mask_url(text: str) -> str:
    """
    C{text} with any credentials replaced by C{****}: C{redis://:****@host:port/db},
    C{redis://user:****@host:port/db}. A URL too broken to parse is masked whole.
    """
    try:
        parts = urlsplit(text)
    except ValueError:
        return "********"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return text
    user, colon, _password = userinfo.partition(":")
    # Without a colon the whole userinfo might be a password written wrongly: mask it too.
    masked = f"{user}:****" if colon else "****"
    return parts._replace(netloc=f"{masked}@{hostport}").geturl()


def describe(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The effective raw values as (key, text) pairs, secrets masked."""
    shown = []
    for key in KEYS:
        text = _text(values.get(key))
        if key in SECRET_KEYS and text:
            text = _mask_url(text) if key == "REDIS_URL" else "********"
        elif key == "JWT_PUBLIC_KEY" and len(text) > 24:
            text = text[:12] + "…" + text[-8:]
        shown.append((key, text))
    return shown
