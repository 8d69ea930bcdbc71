"""TLS for the listeners: a self-signed certificate when none is configured (trial and dev
setups), and the server context of the SMTP listeners."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


# TLS 1.2's suites: forward secret (ECDHE) and AEAD (GCM, ChaCha20-Poly1305) only; no RC4, 3DES,
# CBC or export suites. TLS 1.3's are all AEAD and stay OpenSSL's defaults.
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The SMTP listeners' TLS: 1.2 and newer, the suites above, no compression and no
    renegotiation. No client certificate is asked for (mail clients have none)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert, key)
    return context


def ensure_self_signed(directory: Path, hostname: str, prefix: str = "api") -> tuple[Path, Path]:
    """Return (certificate, key) under ``directory`` (``<prefix>-cert.pem``, ``<prefix>-key.pem``),
    creating them on first use."""
    cert_path, key_path = directory / f"{prefix}-cert.pem", directory / f"{prefix}-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    # Written under temporary names and renamed, key first: a service starting at the same
    # moment (api and ingress share the directory) never reads half a file or a certificate
    # without its key.
    temporary_key = key_path.with_suffix(".tmp")
    temporary_key.touch(mode=0o600)
    temporary_key.chmod(0o600)
    temporary_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    temporary_key.replace(key_path)
    temporary_cert = cert_path.with_suffix(".tmp")
    temporary_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    temporary_cert.replace(cert_path)
    log.warning("generated a self-signed certificate (%s): %s", prefix, cert_path)
    return cert_path, key_path
