"""
A small PKI for TLS tests: a root CA, an intermediate, and a server
certificate for localhost/127.0.0.1, written as PEM files.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Pki", "key_pem", "make_pki"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


@dataclass
class Pki:
    """A root CA, an intermediate, and a server certificate for localhost/127.0.0.1."""

    directory: Path
    key: Path  # server key
    cert: Path  # server certificate, then the intermediate (a "fullchain.pem")
    root: Path  # what clients trust
    other_key: Path  # a key that matches nothing


def make_pki(directory: str | os.PathLike[str]) -> Pki:
    """Write a small PKI into C{directory}; the server cert is signed by an intermediate."""
    base = Path(directory)
    base.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("peatio-ws test root", root_key, "peatio-ws test root", root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _certificate("peatio-ws test intermediate", mid_key, "peatio-ws test root", root_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate("localhost", key, "peatio-ws test intermediate", mid_key, ca=False)
    pki = Pki(base, base / "server.key", base / "fullchain.pem", base / "root.pem", base / "other.key")
    pki.key.write_bytes(key_pem(key))
    pki.cert.write_bytes(_pem(leaf, mid))
    pki.root.write_bytes(_pem(root))
    pki.other_key.write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    return pki
