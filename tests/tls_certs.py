"""Real certificates for the TLS tests, made by trustme: a test CA and a leaf for
127.0.0.1 and localhost it signed, written to PEM files as an operator has them."""

from __future__ import annotations

import base64
import hashlib
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


@dataclass(frozen=True)
class TlsFiles:
    """A CA's certificate (what clients trust), and a server's chain and key."""

    cafile: Path
    certfile: Path
    keyfile: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    def spki_hash(self) -> str:
        """The leaf's public key hash, as Chromium's --ignore-certificate-errors-spki-list
        takes it: trust this one key, not every certificate."""
        leaf = x509.load_pem_x509_certificate(self.certfile.read_bytes())
        der = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(hashlib.sha256(der).digest()).decode()


def make_tls_files(
    directory: Path,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    name: str = "test",
) -> TlsFiles:
    """A fresh CA and a leaf for 127.0.0.1/localhost (valid from ``not_before`` to
    ``not_after``: trustme's defaults are now and the year 3000)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost", not_before=not_before, not_after=not_after)
    files = TlsFiles(
        directory / f"{name}-ca.pem", directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    )
    ca.cert_pem.write_to_path(str(files.cafile))
    files.certfile.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.keyfile))
    return files
