"""
Tests for L{peatio_ws.config}: the defaults file, precedence of file,
environment and overrides, value validation and L{describe}.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.trial.unittest import SynchronousTestCase

from peatio_ws import config
from peatio_ws.config import (
    KEYS,
    ConfigError,
    RedisAddress,
    Settings,
    default_config_path,
    describe,
    load_settings,
    parse_values,
    raw_values,
    read_config_file,
)
from peatio_ws.testing import (
    generate_ec_key,
    generate_ed25519_key,
    generate_rsa_key,
    private_key_pem,
    public_key_b64,
    rsa_key,
    settings_for_tests,
)

#: etc/application.yml of this checkout.
ETC_APPLICATION_YML = Path(config.__file__).resolve().parent.parent / "etc" / "application.yml"


def good_env(**values: str) -> dict[str, str]:
    """An environment with a usable JWT_PUBLIC_KEY plus C{values}."""
    return {"JWT_PUBLIC_KEY": public_key_b64(rsa_key()), **values}


class ConfigTestCase(SynchronousTestCase):
    """Helpers shared by the configuration tests."""

    def write(self, text: str | bytes) -> str:
        """Write C{text} to a fresh temporary file and return its path."""
        path = self.mktemp()
        data = text.encode("utf-8") if isinstance(text, str) else text
        with open(path, "wb") as f:
            f.write(data)
        return path

    def assertConfigError(self, key: str, f: Callable[..., Any], *args: Any, **kwargs: Any) -> ConfigError:
        """C{f} raises a one-line L{ConfigError} that starts with C{key}."""
        error = self.assertRaises(ConfigError, f, *args, **kwargs)
        self.assertEqual(error.key, key)
        self.assertTrue(str(error).startswith(key + ": "), str(error))
        self.assertNotIn("\n", str(error))
        self.assertNotIn("\r", str(error))
        self.assertTrue(error.problem)
        return error


class DefaultsFileTests(ConfigTestCase):
    """etc/application.yml holds every key, and loads to the documented defaults."""

    def test_default_config_path(self) -> None:
        """In a checkout default_config_path is etc/application.yml (or a packaged copy identical to it)."""
        path = default_config_path()
        if path.resolve() != ETC_APPLICATION_YML:
            self.assertEqual(path.name, "application.yml")
            self.assertEqual(path.read_bytes(), ETC_APPLICATION_YML.read_bytes())
        self.assertTrue(ETC_APPLICATION_YML.is_file())

    def test_header(self) -> None:
        """The file has the `# WebSocket Streaming API settings` comment header."""
        lines = ETC_APPLICATION_YML.read_text(encoding="utf-8").splitlines()
        self.assertIn("# WebSocket Streaming API settings", lines)

    def test_every_file_key_is_known(self) -> None:
        """Every key in etc/application.yml is a known configuration key."""
        data = yaml.safe_load(ETC_APPLICATION_YML.read_text(encoding="utf-8"))
        self.assertIsInstance(data, dict)
        self.assertEqual(sorted(set(data) - set(KEYS)), [])

    def test_every_known_key_is_in_file(self) -> None:
        """Every KEYS entry appears in etc/application.yml, so the file stays complete."""
        data = yaml.safe_load(ETC_APPLICATION_YML.read_text(encoding="utf-8"))
        self.assertEqual(sorted(set(KEYS) - set(data)), [])

    def test_read_config_file_accepts_defaults(self) -> None:
        """read_config_file reads the defaults file without complaint, all keys included."""
        self.assertEqual(set(read_config_file(ETC_APPLICATION_YML)), set(KEYS))

    def test_defaults_written_once(self) -> None:
        """config.py spells no default value: every Settings default is read from etc/application.yml."""
        source = Path(config.__file__).read_text(encoding="utf-8")
        body = source[source.index("class Settings:") : source.index("def tls(self)")]
        for line in body.splitlines():
            if ": " in line and " = " in line and not line.strip().startswith(("#", '"')):
                self.assertRegex(line, r'= (None|_DEFAULTS\["\w+"\]|field\(default=_DEFAULTS\["\w+"\], repr=False\))$')

    def test_defaults_equal_settings_defaults(self) -> None:
        """Loading the file with only a key set gives Settings' own defaults for every other field."""
        settings = load_settings(environ=good_env())
        defaults = Settings()
        for f in dataclasses.fields(Settings):
            if f.name != "jwt_public_key":
                self.assertEqual(getattr(settings, f.name), getattr(defaults, f.name), f.name)

    def test_documented_defaults(self) -> None:
        """The loaded defaults are those of the SPEC's configuration table."""
        s = load_settings(environ=good_env())
        self.assertEqual((s.websocket_host, s.websocket_port), ("0.0.0.0", 8080))
        self.assertEqual((s.websocket_ssl_key, s.websocket_ssl_cert, s.tls), (None, None, False))
        self.assertEqual((s.websocket_auth_timeout, s.websocket_ping_interval), (60.0, 10.0))
        self.assertEqual((s.websocket_max_message_size, s.websocket_allowed_origins), (16384, ()))
        self.assertEqual((s.jwt_algorithm, s.jwt_issuer, s.jwt_audience), (("RS256",), None, ("peatio",)))
        self.assertEqual(
            (s.jwt_default_leeway, s.jwt_issued_at_leeway, s.jwt_expiration_leeway, s.jwt_not_before_leeway),
            (None, 180.0, None, None),
        )
        self.assertEqual(
            (s.rabbitmq_host, s.rabbitmq_port, s.rabbitmq_user, s.rabbitmq_password, s.rabbitmq_vhost),
            ("localhost", 5672, "guest", "guest", "/"),
        )
        self.assertEqual(s.rabbitmq_events_exchange, "peatio.events.ranger")
        self.assertEqual(s.redis_url, RedisAddress("localhost", 6379, 0, None, False))
        self.assertEqual((s.metrics_host, s.metrics_port), ("0.0.0.0", 8082))
        self.assertIsInstance(s.jwt_public_key, rsa.RSAPublicKey)

    def test_public_key_required(self) -> None:
        """With no JWT_PUBLIC_KEY anywhere, loading stops naming JWT_PUBLIC_KEY."""
        error = self.assertConfigError("JWT_PUBLIC_KEY", load_settings, environ={})
        self.assertIn("required", str(error))


class PrecedenceTests(ConfigTestCase):
    """Defaults < --config file < environment < explicit overrides."""

    def test_environment_overrides_defaults(self) -> None:
        """An environment variable replaces the default file's value."""
        self.assertEqual(load_settings(environ=good_env(WEBSOCKET_PORT="9000")).websocket_port, 9000)

    def test_config_file_overrides_defaults(self) -> None:
        """A --config file replaces the defaults it names and keeps the rest."""
        path = self.write("WEBSOCKET_PORT: 9001\nJWT_ISSUER: barong\n")
        settings = load_settings(path, environ=good_env())
        self.assertEqual((settings.websocket_port, settings.jwt_issuer), (9001, "barong"))
        self.assertEqual(settings.metrics_port, 8082)

    def test_config_file_may_hold_the_key(self) -> None:
        """JWT_PUBLIC_KEY can come from the --config file."""
        path = self.write(f"JWT_PUBLIC_KEY: {public_key_b64(rsa_key())}\n")
        self.assertIsInstance(load_settings(path, environ={}).jwt_public_key, rsa.RSAPublicKey)

    def test_environment_overrides_config_file(self) -> None:
        """The environment wins over the --config file."""
        path = self.write("WEBSOCKET_PORT: 9001\n")
        self.assertEqual(load_settings(path, environ=good_env(WEBSOCKET_PORT="9002")).websocket_port, 9002)

    def test_overrides_win_over_environment(self) -> None:
        """The overrides mapping (command-line options) wins over the environment."""
        path = self.write("WEBSOCKET_PORT: 9001\n")
        settings = load_settings(path, environ=good_env(WEBSOCKET_PORT="9002"), overrides={"WEBSOCKET_PORT": "9003"})
        self.assertEqual(settings.websocket_port, 9003)

    def test_empty_environment_value_unsets(self) -> None:
        """An empty environment value unsets an optional key the file set."""
        path = self.write("JWT_ISSUER: barong\n")
        self.assertIsNone(load_settings(path, environ=good_env(JWT_ISSUER="")).jwt_issuer)

    def test_unrelated_environment_ignored(self) -> None:
        """Environment variables that are not keys (or are lower-case) are ignored."""
        env = good_env(HOME="/root", websocket_port="1", WEBSOCKET_PROT="1")
        values = raw_values(environ=env)
        self.assertEqual(set(values), set(KEYS))
        self.assertEqual(load_settings(environ=env).websocket_port, 8080)

    def test_os_environ_by_default(self) -> None:
        """Without an explicit environ, os.environ is read."""
        self.patch(os, "environ", good_env(WEBSOCKET_PORT="9004"))
        self.assertEqual(load_settings().websocket_port, 9004)

    def test_raw_values_order(self) -> None:
        """raw_values layers defaults, then the file, then the environment."""
        path = self.write("WEBSOCKET_PORT: 9001\nMETRICS_PORT: 9100\n")
        values = raw_values(path, environ={"METRICS_PORT": "9200"})
        shown = (values["WEBSOCKET_PORT"], values["METRICS_PORT"], values["WEBSOCKET_HOST"])
        self.assertEqual(shown, (9001, "9200", "0.0.0.0"))

    def test_empty_config_file(self) -> None:
        """An empty --config file changes nothing."""
        path = self.write("# nothing here\n")
        self.assertEqual(read_config_file(path), {})
        self.assertEqual(load_settings(path, environ=good_env()).websocket_port, 8080)


# (key, raw value, a substring of the problem)
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("WEBSOCKET_HOST", "", "required"),
    ("WEBSOCKET_PORT", "abc", "whole number"),
    ("WEBSOCKET_PORT", "70000", "from 0 to 65535"),
    ("WEBSOCKET_PORT", "-1", "from 0 to 65535"),
    ("WEBSOCKET_PORT", "80.5", "whole number"),
    ("WEBSOCKET_PORT", "", "whole number"),
    ("WEBSOCKET_PORT", True, "whole number"),
    ("WEBSOCKET_PORT", ["8080"], "plain value"),
    ("WEBSOCKET_AUTH_TIMEOUT", "-5", ">= 0"),
    ("WEBSOCKET_AUTH_TIMEOUT", "nan", "finite"),
    ("WEBSOCKET_AUTH_TIMEOUT", "inf", "finite"),
    ("WEBSOCKET_AUTH_TIMEOUT", "-inf", "finite"),
    ("WEBSOCKET_AUTH_TIMEOUT", "1e400", "finite"),
    ("WEBSOCKET_AUTH_TIMEOUT", "soon", "number of seconds"),
    ("WEBSOCKET_PING_INTERVAL", "-1", ">= 0"),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", "1", "from 64"),
    ("WEBSOCKET_MAX_MESSAGE_SIZE", str(10**9), "from 64"),
    ("WEBSOCKET_CLOSE_TIMEOUT", "0", "more than 0"),
    ("WEBSOCKET_MAX_BUFFER", "100", "at least 65536"),
    ("WEBSOCKET_REUSE_PORT", "maybe", "true or false"),
    ("WEBSOCKET_SSL_KEY", "/nonexistent/peatio-ws/key.pem", "cannot read"),
    ("JWT_PUBLIC_KEY", "", "required"),
    ("JWT_PUBLIC_KEY", "   ", "required"),
    ("JWT_PUBLIC_KEY", "garbage", "PEM public key"),
    ("JWT_PUBLIC_KEY", base64.urlsafe_b64encode(b"not a pem").decode(), "PEM public key"),
    ("JWT_ALGORITHM", "none", "'none' is never allowed"),
    ("JWT_ALGORITHM", "RS256,none", "'none' is never allowed"),
    ("JWT_ALGORITHM", "HS256", "HMAC"),
    ("JWT_ALGORITHM", "RS256, HS512", "HMAC"),
    ("JWT_ALGORITHM", "RS1", "unknown algorithm"),
    ("JWT_ALGORITHM", "", "at least one algorithm"),
    ("JWT_ALGORITHM", " , ", "at least one algorithm"),
    ("JWT_ALGORITHM", "ES256", "does not fit"),
    ("JWT_ALGORITHM", "RS256,ES256", "ES256 does not fit"),
    ("JWT_ALGORITHM", "EdDSA", "does not fit"),
    ("JWT_DEFAULT_LEEWAY", "-1", ">= 0"),
    ("JWT_ISSUED_AT_LEEWAY", "abc", "number of seconds"),
    ("JWT_EXPIRATION_LEEWAY", "nan", "finite"),
    ("JWT_NOT_BEFORE_LEEWAY", "inf", "finite"),
    ("RABBITMQ_HOST", "", "required"),
    ("RABBITMQ_PORT", "0", "from 1 to 65535"),
    ("RABBITMQ_USER", "", "required"),
    ("RABBITMQ_VHOST", "", "required"),
    ("RABBITMQ_EVENTS_EXCHANGE", "x" * 256, "255 bytes"),
    ("RABBITMQ_HEARTBEAT", "-1", "from 0"),
    ("RABBITMQ_QUEUE_EXPIRES", "0", "more than 0"),
    ("AMQP_SPEC", "/nonexistent/amqp0-9-1.xml", "cannot read"),
    ("AMQP_SPEC", "", "required"),
    ("REDIS_URL", "http://x", "redis:// or rediss://"),
    ("REDIS_URL", "localhost:6379", "redis:// or rediss://"),
    ("REDIS_URL", "redis://h:port/abc", "bad port"),
    ("REDIS_URL", "redis://h:99999/0", "bad port"),
    ("REDIS_URL", "redis://h:0/0", "bad port"),
    ("REDIS_URL", "redis://h:6379/abc", "database number"),
    ("REDIS_URL", "redis://h:6379/-1", "database number"),
    ("REDIS_URL", "", "required"),
    ("REDIS_REVOCATION_WHEN_DOWN", "maybe", "allow, deny"),
    ("LOG_FORMAT", "xml", "text, json"),
    ("METRICS_PORT", "65536", "from 0 to 65535"),
    ("METRICS_HOST", "", "required"),
]


class BadValueTests(ConfigTestCase):
    """Every malformed value stops loading with one line naming its key."""

    def test_bad_values(self) -> None:
        """Each row of the bad-value table raises a one-line ConfigError naming the key and the problem."""
        failures = []
        for key, value, problem in BAD_VALUES:
            values = raw_values(environ=good_env())
            values[key] = value
            try:
                parse_values(values)
            except ConfigError as error:
                one_line = "\n" not in str(error) and str(error).startswith(key + ": ")
                if error.key != key or problem not in error.problem or not one_line:
                    failures.append(f"{key}={value!r}: {error}")
            else:
                failures.append(f"{key}={value!r}: accepted")
        self.assertEqual(failures, [])

    def test_bad_value_from_environment(self) -> None:
        """A bad environment value is reported against its key by load_settings."""
        error = self.assertConfigError("WEBSOCKET_PORT", load_settings, environ=good_env(WEBSOCKET_PORT="abc"))
        self.assertEqual(str(error), "WEBSOCKET_PORT: must be a whole number, got 'abc'")

    def test_value_with_newline_stays_one_line(self) -> None:
        """A value with a newline in it is quoted, keeping the message one line."""
        self.assertConfigError("LOG_FORMAT", load_settings, environ=good_env(LOG_FORMAT="xml\nrm -rf /"))
        self.assertConfigError("AMQP_SPEC", load_settings, environ=good_env(AMQP_SPEC="/no\nfile"))

    def test_private_key_refused(self) -> None:
        """A private key as JWT_PUBLIC_KEY is refused, saying it is a private key."""
        text = base64.urlsafe_b64encode(private_key_pem(rsa_key()).encode()).decode()
        error = self.assertConfigError("JWT_PUBLIC_KEY", load_settings, environ=good_env(JWT_PUBLIC_KEY=text))
        self.assertIn("private key", str(error))
        self.assertNotIn("PRIVATE", str(error))

    def test_short_rsa_key_refused(self) -> None:
        """A 1024-bit RSA JWT_PUBLIC_KEY is refused."""
        env = good_env(JWT_PUBLIC_KEY=public_key_b64(generate_rsa_key(1024)))
        self.assertIn("2048", str(self.assertConfigError("JWT_PUBLIC_KEY", load_settings, environ=env)))

    def test_ssl_key_without_cert(self) -> None:
        """WEBSOCKET_SSL_KEY without WEBSOCKET_SSL_CERT names the missing CERT."""
        key = self.write("key")
        error = self.assertConfigError("WEBSOCKET_SSL_CERT", load_settings, environ=good_env(WEBSOCKET_SSL_KEY=key))
        self.assertIn("TLS needs both", str(error))

    def test_ssl_cert_without_key(self) -> None:
        """WEBSOCKET_SSL_CERT without WEBSOCKET_SSL_KEY names the missing KEY."""
        cert = self.write("cert")
        self.assertConfigError("WEBSOCKET_SSL_KEY", load_settings, environ=good_env(WEBSOCKET_SSL_CERT=cert))

    def test_ssl_unreadable_directory(self) -> None:
        """A directory given as WEBSOCKET_SSL_CERT is unreadable."""
        directory = self.mktemp()
        os.mkdir(directory)
        env = good_env(WEBSOCKET_SSL_CERT=directory)
        error = self.assertConfigError("WEBSOCKET_SSL_CERT", load_settings, environ=env)
        self.assertIn("cannot read", str(error))

    def test_first_bad_key_reported(self) -> None:
        """With several bad keys, one ConfigError (for the first in KEYS order) is raised."""
        env = good_env(LOG_FORMAT="xml", WEBSOCKET_PORT="abc")
        self.assertConfigError("WEBSOCKET_PORT", load_settings, environ=env)


class GoodValueTests(ConfigTestCase):
    """Valid values parse into the right types."""

    def load(self, **env: str) -> Settings:
        return load_settings(environ=good_env(**env))

    def test_tls(self) -> None:
        """Both WEBSOCKET_SSL_KEY and WEBSOCKET_SSL_CERT set turns TLS on."""
        key, cert = self.write("key"), self.write("cert")
        settings = self.load(WEBSOCKET_SSL_KEY=key, WEBSOCKET_SSL_CERT=cert)
        self.assertEqual((settings.websocket_ssl_key, settings.websocket_ssl_cert, settings.tls), (key, cert, True))

    def test_comma_lists(self) -> None:
        """Comma lists are split and stripped, empty items dropped."""
        origins = " https://a.example, https://b.example ,"
        settings = self.load(WEBSOCKET_ALLOWED_ORIGINS=origins, JWT_AUDIENCE="peatio, barong")
        self.assertEqual(settings.websocket_allowed_origins, ("https://a.example", "https://b.example"))
        self.assertEqual(settings.jwt_audience, ("peatio", "barong"))
        self.assertEqual(self.load(JWT_AUDIENCE="").jwt_audience, ())

    def test_rsa_algorithm_list(self) -> None:
        """Several RSA algorithms may be configured with an RSA key."""
        self.assertEqual(self.load(JWT_ALGORITHM="RS256, PS256,RS512").jwt_algorithm, ("RS256", "PS256", "RS512"))

    def test_es256_key(self) -> None:
        """JWT_ALGORITHM=ES256 with a P-256 key loads."""
        key = generate_ec_key(ec.SECP256R1())
        settings = self.load(JWT_PUBLIC_KEY=public_key_b64(key), JWT_ALGORITHM="ES256")
        self.assertIsInstance(settings.jwt_public_key, ec.EllipticCurvePublicKey)

    def test_es256_wrong_curve(self) -> None:
        """JWT_ALGORITHM=ES256 with a P-384 key is refused."""
        env = good_env(JWT_PUBLIC_KEY=public_key_b64(generate_ec_key(ec.SECP384R1())), JWT_ALGORITHM="ES256")
        self.assertIn("secp384r1", str(self.assertConfigError("JWT_ALGORITHM", load_settings, environ=env)))

    def test_eddsa_key(self) -> None:
        """JWT_ALGORITHM=EdDSA with an Ed25519 key loads."""
        key = public_key_b64(generate_ed25519_key(), padding=False)
        settings = self.load(JWT_PUBLIC_KEY=key, JWT_ALGORITHM="EdDSA")
        self.assertIsInstance(settings.jwt_public_key, ed25519.Ed25519PublicKey)

    def test_seconds(self) -> None:
        """Seconds accept fractions and 0; an empty optional leeway is None."""
        settings = self.load(WEBSOCKET_AUTH_TIMEOUT="0", WEBSOCKET_PING_INTERVAL="2.5", JWT_DEFAULT_LEEWAY="1.5")
        self.assertEqual((settings.websocket_auth_timeout, settings.websocket_ping_interval), (0.0, 2.5))
        self.assertEqual((settings.jwt_default_leeway, settings.jwt_expiration_leeway), (1.5, None))
        self.assertIsNone(self.load(JWT_ISSUED_AT_LEEWAY="").jwt_issued_at_leeway)

    def test_integer_bounds(self) -> None:
        """Integer keys accept their bounds, with surrounding spaces."""
        self.assertEqual(self.load(WEBSOCKET_PORT=" 65535 ").websocket_port, 65535)
        self.assertEqual(self.load(WEBSOCKET_PORT="0").websocket_port, 0)
        self.assertEqual(self.load(WEBSOCKET_MAX_MESSAGE_SIZE="64").websocket_max_message_size, 64)

    def test_flags(self) -> None:
        """Flags accept the usual spellings of true and false."""
        for text in ("1", "true", "TRUE", "yes", "on"):
            self.assertTrue(self.load(WEBSOCKET_REUSE_PORT=text).websocket_reuse_port, text)
        for text in ("0", "false", "no", "off", ""):
            self.assertFalse(self.load(WEBSOCKET_REUSE_PORT=text).websocket_reuse_port, text)

    def test_choices_case_insensitive(self) -> None:
        """Choices are matched case-insensitively and stored lower-case."""
        settings = self.load(REDIS_REVOCATION_WHEN_DOWN="DENY", LOG_FORMAT="Json")
        self.assertEqual((settings.redis_revocation_when_down, settings.log_format), ("deny", "json"))

    def test_redis_urls(self) -> None:
        """REDIS_URL gives host, port, db, an unquoted password and TLS for rediss://."""
        cases = {
            "redis://localhost:6379/0": RedisAddress("localhost", 6379, 0, None, False),
            "redis://redis.internal": RedisAddress("redis.internal", 6379, 0, None, False),
            "redis://h/5": RedisAddress("h", 6379, 5, None, False),
            "rediss://:p%40ss@cache:6380/3": RedisAddress("cache", 6380, 3, "p@ss", True),
            "redis://default:pw@h:7000/1": RedisAddress("h", 7000, 1, "pw", False),
            "redis://[::1]:6379/2": RedisAddress("::1", 6379, 2, None, False),
        }
        for url, address in cases.items():
            self.assertEqual(self.load(REDIS_URL=url).redis_url, address, url)

    def test_yaml_typed_values(self) -> None:
        """YAML ints, floats and booleans in a --config file parse like their text."""
        path = self.write("WEBSOCKET_PORT: 9000\nWEBSOCKET_AUTH_TIMEOUT: 1.5\nWEBSOCKET_REUSE_PORT: true\n")
        settings = load_settings(path, environ=good_env())
        self.assertEqual(
            (settings.websocket_port, settings.websocket_auth_timeout, settings.websocket_reuse_port), (9000, 1.5, True)
        )

    def test_settings_frozen(self) -> None:
        """Settings cannot be changed after loading."""
        settings = self.load()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, settings, "websocket_port", 1)


class ConfigFileErrorTests(ConfigTestCase):
    """A bad --config file stops loading with one clear line."""

    def test_unknown_key(self) -> None:
        """An unknown key names that key and the file."""
        path = self.write("WEBSOCKET_PORT: 1\nWEBSOCKET_PROT: 2\n")
        error = self.assertConfigError("WEBSOCKET_PROT", read_config_file, path)
        self.assertIn("unknown configuration key", str(error))
        self.assertIn(path, str(error))
        self.assertConfigError("WEBSOCKET_PROT", load_settings, path, environ=good_env())

    def test_lower_case_key(self) -> None:
        """Keys are upper-case: a lower-case key is unknown."""
        self.assertConfigError("websocket_port", read_config_file, self.write("websocket_port: 1\n"))

    def test_non_string_key(self) -> None:
        """A non-string key is unknown."""
        self.assertConfigError("1", read_config_file, self.write("1: x\n"))

    def test_unknown_key_with_newline(self) -> None:
        """An unknown key containing a newline is quoted so the message stays one line."""
        error = self.assertConfigError("'A\\nB'", read_config_file, self.write('"A\\nB": 1\n'))
        self.assertIn("unknown configuration key", str(error))

    def test_map_or_list_value(self) -> None:
        """A value that is a map or a list is refused against its key."""
        self.assertConfigError("WEBSOCKET_PORT", read_config_file, self.write("WEBSOCKET_PORT: {a: 1}\n"))
        self.assertConfigError("JWT_AUDIENCE", read_config_file, self.write("JWT_AUDIENCE: [peatio, barong]\n"))

    def test_date_value(self) -> None:
        """A YAML date value is not a plain value."""
        path = self.write("JWT_ISSUER: 2024-01-01\n")
        error = self.assertConfigError("JWT_ISSUER", load_settings, path, environ=good_env())
        self.assertIn("plain value", str(error))

    def test_not_a_map(self) -> None:
        """YAML that is a list or a scalar is refused as not a map."""
        for text in ("- WEBSOCKET_PORT\n- 8080\n", "just a string\n", "42\n"):
            error = self.assertConfigError("--config", read_config_file, self.write(text))
            self.assertIn("must be a map of KEY: value", str(error))

    def test_invalid_yaml(self) -> None:
        """Invalid YAML is reported with its line number."""
        path = self.write("WEBSOCKET_PORT: 1\nWEBSOCKET_HOST: [unclosed\nLOG_FORMAT: text\n")
        error = self.assertConfigError("--config", read_config_file, path)
        self.assertIn("is not valid YAML at line", str(error))
        self.assertIn(path, str(error))

    def test_tab_indentation(self) -> None:
        """A YAML scanner error (a tab where YAML forbids it) is reported, not raised raw."""
        self.assertConfigError("--config", read_config_file, self.write("WEBSOCKET_PORT: 1\n\tLOG_FORMAT: text\n"))

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is refused."""
        error = self.assertConfigError("--config", read_config_file, self.write(b"JWT_ISSUER: \xff\xfe\n"))
        self.assertIn("UTF-8", str(error))

    def test_missing_file(self) -> None:
        """A --config path that does not exist cannot be read."""
        path = self.mktemp()
        error = self.assertConfigError("--config", load_settings, path, environ=good_env())
        self.assertIn("cannot read", str(error))
        self.assertIn(path, str(error))

    def test_directory(self) -> None:
        """A --config path that is a directory cannot be read."""
        path = self.mktemp()
        os.mkdir(path)
        self.assertIn("cannot read", str(self.assertConfigError("--config", read_config_file, path)))


class SettingsTests(SynchronousTestCase):
    """L{Settings} helpers."""

    def test_leeway_own_value(self) -> None:
        """leeway(claim) is the claim's own leeway when set."""
        s = settings_for_tests(
            jwt_default_leeway=5.0, jwt_expiration_leeway=1.0, jwt_not_before_leeway=2.0, jwt_issued_at_leeway=3.0
        )
        self.assertEqual((s.leeway("exp"), s.leeway("nbf"), s.leeway("iat")), (1.0, 2.0, 3.0))

    def test_leeway_default(self) -> None:
        """leeway(claim) falls back to JWT_DEFAULT_LEEWAY when the claim's own is unset."""
        s = settings_for_tests(jwt_default_leeway=5.0, jwt_issued_at_leeway=None)
        self.assertEqual((s.leeway("exp"), s.leeway("nbf"), s.leeway("iat")), (5.0, 5.0, 5.0))

    def test_leeway_zero_beats_default(self) -> None:
        """An explicit 0 for the claim's own leeway is used, not the default."""
        s = settings_for_tests(jwt_default_leeway=5.0, jwt_expiration_leeway=0.0)
        self.assertEqual(s.leeway("exp"), 0.0)

    def test_leeway_none(self) -> None:
        """With nothing set, leeway is 0 (iat keeps its 180 s default)."""
        s = settings_for_tests()
        self.assertEqual((s.leeway("exp"), s.leeway("nbf"), s.leeway("iat")), (0.0, 0.0, 180.0))

    def test_leeway_unknown_claim(self) -> None:
        """leeway() of another claim is a KeyError (a programming error)."""
        self.assertRaises(KeyError, settings_for_tests().leeway, "sub")

    def test_tls_property(self) -> None:
        """tls is true only with both key and certificate."""
        self.assertFalse(settings_for_tests().tls)
        self.assertFalse(settings_for_tests(websocket_ssl_key="k").tls)
        self.assertTrue(settings_for_tests(websocket_ssl_key="k", websocket_ssl_cert="c").tls)

    def test_password_not_in_repr(self) -> None:
        """repr(Settings) shows neither RABBITMQ_PASSWORD nor the password in REDIS_URL."""
        self.assertNotIn("s3cret", repr(settings_for_tests(rabbitmq_password="s3cret")))
        redis = RedisAddress("h", 6379, 0, "s3cret", False)
        self.assertNotIn("s3cret", repr(redis))
        self.assertNotIn("s3cret", repr(settings_for_tests(redis_url=redis)))
        settings = load_settings(environ=good_env(RABBITMQ_PASSWORD="s3cret", REDIS_URL="redis://:s3cret@h/0"))
        self.assertNotIn("s3cret", repr(settings))
        self.assertEqual(settings.redis_url.password, "s3cret")

    def test_settings_for_tests(self) -> None:
        """settings_for_tests carries the cached RSA public key and applies overrides."""
        s = settings_for_tests(websocket_port=1234)
        self.assertEqual(s.jwt_public_key.public_numbers(), rsa_key().public_key().public_numbers())
        self.assertEqual(s.websocket_port, 1234)
        self.assertIs(rsa_key(), rsa_key())

    def test_config_error(self) -> None:
        """ConfigError keeps key and problem and reads 'KEY: problem'."""
        error = ConfigError("WEBSOCKET_PORT", "must be a whole number")
        self.assertEqual((error.key, error.problem), ("WEBSOCKET_PORT", "must be a whole number"))
        self.assertEqual(str(error), "WEBSOCKET_PORT: must be a whole number")


class DescribeTests(ConfigTestCase):
    """L{describe} shows the effective values with secrets masked."""

    def shown(self, **values: Any) -> dict[str, str]:
        raw = raw_values(environ=good_env())
        raw.update(values)
        return dict(describe(raw))

    def test_every_key_in_order(self) -> None:
        """describe lists every key once, in KEYS order, as text."""
        pairs = describe(raw_values(environ=good_env()))
        self.assertEqual([key for key, _ in pairs], list(KEYS))
        self.assertTrue(all(isinstance(text, str) for _, text in pairs))

    def test_rabbitmq_password_masked(self) -> None:
        """RABBITMQ_PASSWORD is shown as asterisks."""
        shown = self.shown(RABBITMQ_PASSWORD="s3cret-pw")
        self.assertEqual(shown["RABBITMQ_PASSWORD"], "********")
        self.assertNotIn("s3cret-pw", repr(shown))

    def test_empty_password_shown_empty(self) -> None:
        """An empty RABBITMQ_PASSWORD is shown empty (nothing to hide)."""
        self.assertEqual(self.shown(RABBITMQ_PASSWORD="")["RABBITMQ_PASSWORD"], "")

    def test_redis_password_masked(self) -> None:
        """REDIS_URL's password is replaced by **** keeping scheme, host, port and db."""
        cases = {
            "redis://:s3cret-pw@redis.internal:6380/2": "redis://:****@redis.internal:6380/2",
            "rediss://default:s3cret-pw@cache:6379/0": "rediss://default:****@cache:6379/0",
            "redis://:s3cret@pw@h:6379/0": "redis://:****@h:6379/0",
            "redis://:s3cret-pw@h": "redis://:****@h",
            "redis://s3cret-pw@h:6379/0": "redis://****@h:6379/0",
        }
        for url, masked in cases.items():
            text = self.shown(REDIS_URL=url)["REDIS_URL"]
            self.assertEqual(text, masked, url)
            self.assertNotIn("s3cret", text)

    def test_redis_url_without_password(self) -> None:
        """A REDIS_URL without credentials is shown as it is."""
        self.assertEqual(self.shown(REDIS_URL="redis://h:6379/1")["REDIS_URL"], "redis://h:6379/1")

    def test_broken_redis_url_masked(self) -> None:
        """A REDIS_URL too broken to parse is masked whole instead of raising."""
        self.assertEqual(self.shown(REDIS_URL="redis://:s3cret@[::1")["REDIS_URL"], "********")

    def test_nothing_secret_anywhere(self) -> None:
        """No secret appears anywhere in describe's output for a real raw_values."""
        env = good_env(RABBITMQ_PASSWORD="hunter2-rabbit", REDIS_URL="redis://:hunter2-redis@r:6379/0")
        text = repr(describe(raw_values(environ=env)))
        self.assertNotIn("hunter2", text)

    def test_public_key_shortened(self) -> None:
        """JWT_PUBLIC_KEY is shortened to its ends."""
        key = public_key_b64(rsa_key())
        text = self.shown(JWT_PUBLIC_KEY=key)["JWT_PUBLIC_KEY"]
        self.assertEqual(text, key[:12] + "…" + key[-8:])

    def test_plain_values(self) -> None:
        """Other values are shown as text; unset values as empty."""
        shown = self.shown(WEBSOCKET_PORT=8080, WEBSOCKET_REUSE_PORT=False, JWT_ISSUER=None)
        texts = (shown["WEBSOCKET_PORT"], shown["WEBSOCKET_REUSE_PORT"], shown["JWT_ISSUER"])
        self.assertEqual(texts, ("8080", "false", ""))
