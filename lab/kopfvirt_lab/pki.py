"""The lab's certificates: one CA, the API server's serving cert, client certs, SA keys."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kopfvirt.core import certificates

VALID_FOR = datetime.timedelta(days=365)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def ensure_ca(pki: Path, name: str = "ca", cn: str = "kopfvirt-lab-ca") -> None:
    if (pki / f"{name}.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    cert, key = certificates.new_ca(cn, _now(), VALID_FOR)
    _write(pki / f"{name}.key", key)
    _write(pki / f"{name}.crt", cert)


def ensure_cert(pki: Path, name: str, cn: str, orgs: tuple[str, ...] = (),
                dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), ca: str = "ca") -> None:
    """A leaf cert signed by the lab CA (or the CA named `ca`); a server cert when it has SANs."""
    if (pki / f"{name}.crt").exists():
        return
    cert, key = certificates.new_leaf((pki / f"{ca}.crt").read_bytes(), (pki / f"{ca}.key").read_bytes(), cn, _now(),
                                      VALID_FOR, orgs=orgs, names=(*dns, *ips))
    _write(pki / f"{name}.key", key)
    _write(pki / f"{name}.crt", cert)


def ensure_service_account_keys(pki: Path) -> None:
    if (pki / "sa.key").exists():
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(pki / "sa.key", _key_pem(key))
    _write(pki / "sa.pub", key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
