"""TLS for the dev MariaDB: a private certificate authority and a server certificate.

Real MySQL 8 servers speak TLS out of the box, so the dev server does too: clients that ask
for nothing get TLS without verification (PyMySQL's default), and a client can verify the
server with ``?ssl_ca=<ca.pem>&ssl_verify_identity=true``. The files are made once per
instance, with elliptic-curve keys (cheap handshakes), for ``localhost`` and 127.0.0.1.
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
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_FOR = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the authority's certificate, and the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def ensure_tls_files(directory: Path) -> TlsFiles:
    """Make the CA and server certificate under ``directory`` unless they are there."""
    files = TlsFiles(
        directory / "ca.pem", directory / "server-cert.pem", directory / "server-key.pem"
    )
    if all(path.is_file() for path in (files.ca, files.cert, files.key)):
        return files
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_key, ca_cert = _authority()
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key.public_key(), ca_key, ca_cert)
    _write(files.key, _private_pem(server_key), mode=0o600)
    _write(files.cert, server_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def _authority() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "twopc dev CA")])
    certificate = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _server_certificate(
    public_key: ec.EllipticCurvePublicKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    return (
        _builder(subject, ca_cert.subject, public_key)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALID_FOR)
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, mode: int) -> None:
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    temp.replace(path)
