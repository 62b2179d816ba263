"""Certificates made at test time (the cryptography package): a small CA, server and
client certificates, an expired one, one from another CA, one with a Modbus/TCP
Security role. Written as PEM files for the code under test to load."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tcp_multiplexer.transports.tls import ROLE_OID


def _der_utf8(text: str) -> bytes:
    """A DER UTF8String (what the role extension holds)."""
    data = text.encode()
    assert len(data) < 128
    return bytes((0x0C, len(data))) + data


@dataclass(frozen=True)
class Pem:
    """A certificate and its key on disk."""

    cert: Path
    key: Path


@dataclass
class CA:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    folder: Path

    @property
    def pem(self) -> Path:
        return self.folder / f"{self.name}-ca.pem"

    def issue(
        self,
        name: str,
        *,
        server: bool = False,
        role: str | None = None,
        expired: bool = False,
    ) -> Pem:
        """A certificate for `name` (its CN; a server one also for localhost and the
        loopback addresses), signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = (
            (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
            if expired
            else (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2))
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        if role is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier(ROLE_OID), _der_utf8(role)),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        pem = Pem(self.folder / f"{name}.pem", self.folder / f"{name}.key")
        pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return pem


def make_ca(folder: Path, name: str = "test") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    ca = CA(name, key, cert, folder)
    ca.pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca
