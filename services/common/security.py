"""TLS, mutual TLS and bearer tokens, for servers and clients; a development CA.

Servers: `server_credentials(config)` gives TLS when tls_cert/tls_key are set and
requires client certificates signed by tls_client_ca when that is set (mTLS).
Tokens: `token_matches` compares in constant time; the runtime's interceptor refuses
calls without the right token with UNAUTHENTICATED (health checks are exempt so that
Kubernetes probes work).

`make_dev_certificates` writes a CA and one certificate per service (valid for the
service names, localhost and 127.0.0.1) for development and tests: `modalmesh certs`.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import os
from pathlib import Path

import grpc

SERVICE_NAMES = ("router", "text", "vision", "audio")


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def server_credentials(tls_cert: str, tls_key: str, tls_client_ca: str = "") -> grpc.ServerCredentials:
    client_ca = _read(tls_client_ca) if tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(tls_key), _read(tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    """Client TLS: trust `ca` (system roots when empty); present cert/key for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca) if ca else None,
        private_key=_read(key) if key else None,
        certificate_chain=_read(cert) if cert else None,
    )


def bearer_token(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


def token_matches(expected: str, presented: str) -> bool:
    return hmac.compare_digest(expected.encode(), presented.encode())


def make_dev_certificates(out_dir: str | Path, names: tuple[str, ...] = SERVICE_NAMES, days: int = 365, replace: bool = False) -> dict[str, Path]:
    """Write ca.pem/ca-key.pem, <name>.pem/<name>-key.pem per service and client.pem/client-key.pem.

    Each service certificate is valid for "<name>", "modalmesh-<name>", "localhost"
    and 127.0.0.1; the client certificate is for mTLS callers. For development only.
    FileExistsError if any of them exists, unless `replace`: a new CA makes every
    certificate the old one issued untrusted, so it is never replaced unasked.
    Keys are created readable by their owner only (not chmod-ed after being written).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    existing = [p.name for name in ("ca", *names, "client") for p in (out / f"{name}.pem", out / f"{name}-key.pem") if p.exists()]
    if existing and not replace:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing[:4])}{' ...' if len(existing) > 4 else ''}; "
            f"--replace writes a new CA and certificates (the old CA's stop being trusted)"
        )
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    written: dict[str, Path] = {}

    def save(name: str, key, cert) -> None:
        key_path, cert_path = out / f"{name}-key.pem", out / f"{name}.pem"
        key_path.unlink(missing_ok=True)  # a new file, so it is created with the mode below
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written[name] = cert_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ModalMesh development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    save("ca", ca_key, ca_cert)

    def issue(common_name: str, dns_names: list[str], usage) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if dns_names:
            alt = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    for name in names:
        key, cert = issue(name, [name, f"modalmesh-{name}", "localhost"], ExtendedKeyUsageOID.SERVER_AUTH)
        save(name, key, cert)
    key, cert = issue("modalmesh-client", [], ExtendedKeyUsageOID.CLIENT_AUTH)
    save("client", key, cert)
    return written
