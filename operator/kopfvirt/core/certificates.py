"""Certificates the operator issues itself: a CA, and the webhook's serving certificate
signed by it, renewed well before they expire (no cert-manager needed). Pure: it makes
and judges PEM bytes; the controller keeps them in a Secret.

The CA outlives many serving certificates, so the webhook configurations' caBundle stays
the same across renewals; when the CA itself is renewed, the bundle carries the old CA
beside the new one until the old expires, so no API server distrusts the webhook midway.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
SERVING_LIFETIME = datetime.timedelta(days=365)
RENEW_CA_BEFORE = datetime.timedelta(days=365)      # a new CA a year before the old one ends
RENEW_SERVING_BEFORE = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)            # clocks of API servers may lag a little
CA_NAME = "kopfvirt-webhook-ca"


@dataclasses.dataclass(frozen=True)
class Bundle:
    """What the Secret holds (PEM): the signing CA and its key, the CAs to trust (the
    signing one first; an older one while it lasts) and the serving pair."""

    ca_key: bytes
    ca_bundle: bytes
    cert: bytes
    key: bytes

    @property
    def ca_cert(self) -> bytes:
        return _pem(_certs(self.ca_bundle)[0])


def new_ca(common_name: str, now: datetime.datetime, lifetime: datetime.timedelta = CA_LIFETIME) -> tuple[bytes, bytes]:
    """(certificate, key) of a self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return _pem(cert), _key_pem(key)


def new_leaf(ca_cert: bytes, ca_key: bytes, common_name: str, now: datetime.datetime,
             lifetime: datetime.timedelta = SERVING_LIFETIME, orgs: Sequence[str] = (),
             names: Sequence[str] = ()) -> tuple[bytes, bytes]:
    """(certificate, key) signed by the CA: a client certificate, and a serving one for
    `names` (DNS names or IP addresses) when it has any."""
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, None)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(_name(common_name, orgs)).issuer_name(issuer.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # Which CA signed it, by key: an old and a new CA of one name are told apart.
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                              critical=False))
    if names:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    cert = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False).sign(signer, hashes.SHA256())
    return _pem(cert), _key_pem(key)


def renewal_reason(bundle: Bundle | None, names: Sequence[str], now: datetime.datetime) -> str | None:
    """Why the bundle must be (re)issued for serving `names` at `now`; None while it serves."""
    if bundle is None:
        return "no certificate yet"
    try:
        ca = _certs(bundle.ca_bundle)[0]
        cert = x509.load_pem_x509_certificate(bundle.cert)
        serialization.load_pem_private_key(bundle.ca_key, None)
        serialization.load_pem_private_key(bundle.key, None)
    except (ValueError, IndexError) as e:
        return f"the stored certificate cannot be read ({e})"
    if ca.not_valid_after_utc - now < RENEW_CA_BEFORE:
        return f"the CA expires on {ca.not_valid_after_utc:%Y-%m-%d}"
    if cert.issuer != ca.subject:
        return "the serving certificate is not signed by the CA"
    if cert.not_valid_after_utc - now < RENEW_SERVING_BEFORE:
        return f"the serving certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    missing = [n for n in names if _san(n) not in sans]
    if missing:
        return f"the serving certificate does not name {', '.join(missing)}"
    return None


def renew(bundle: Bundle | None, names: Sequence[str], now: datetime.datetime) -> Bundle:
    """A bundle that serves `names`: the CA kept while it lasts (else a new one, the old
    still trusted until it expires), and a new serving certificate."""
    ca_cert = ca_key = None
    trusted: list[x509.Certificate] = []
    if bundle is not None:
        try:
            trusted = [c for c in _certs(bundle.ca_bundle) if c.not_valid_after_utc > now]
            serialization.load_pem_private_key(bundle.ca_key, None)
        except (ValueError, IndexError):
            trusted = []
        if trusted and trusted[0].not_valid_after_utc - now >= RENEW_CA_BEFORE:
            ca_cert, ca_key = _pem(trusted[0]), bundle.ca_key
            trusted = trusted[1:]
    if ca_cert is None:
        ca_cert, ca_key = new_ca(CA_NAME, now)
    cert, key = new_leaf(ca_cert, ca_key, names[0] if names else "kopfvirt-webhook", now, names=names)
    return Bundle(ca_key=ca_key, ca_bundle=ca_cert + b"".join(_pem(c) for c in trusted), cert=cert, key=key)


SECRET_KEYS = {"ca_key": "ca.key", "ca_bundle": "ca.crt", "cert": "tls.crt", "key": "tls.key"}


def to_secret_data(bundle: Bundle) -> dict[str, str]:
    """The Secret's data (kubernetes.io/tls, plus the CA: ca.crt to trust, ca.key to sign)."""
    return {key: getattr(bundle, field).decode() for field, key in SECRET_KEYS.items()}


def from_secret_data(data: dict[str, str] | None) -> Bundle | None:
    if not data or any(key not in data for key in SECRET_KEYS.values()):
        return None
    return Bundle(**{field: data[key].encode() for field, key in SECRET_KEYS.items()})


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
