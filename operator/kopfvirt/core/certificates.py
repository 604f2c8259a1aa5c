"""Certificates the operator issues itself: a CA, the webhook's serving certificate and
each node's libvirt certificate (for migration over TLS) signed by it, renewed well
before they expire (no cert-manager needed). Pure: it makes and judges PEM bytes; the
controller keeps the CA in a Secret, agents ask for their node's certificate with a
Kubernetes CertificateSigningRequest (their private keys never leave the node).

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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
SERVING_LIFETIME = datetime.timedelta(days=365)
RENEW_CA_BEFORE = datetime.timedelta(days=365)      # a new CA a year before the old one ends
RENEW_SERVING_BEFORE = datetime.timedelta(days=30)
BACKDATE = datetime.timedelta(minutes=5)            # clocks of API servers may lag a little
CA_NAME = "kopfvirt-ca"
# The signerName of the CertificateSigningRequests agents file for their node's libvirtd:
# one certificate per node, for both ends of a migration (libvirtd and QEMU serve and dial).
NODE_SIGNER = "kopfvirt.io/libvirt"
NODE_LIFETIME = datetime.timedelta(days=365)
RENEW_NODE_BEFORE = datetime.timedelta(days=30)
NODE_ORG = "kopfvirt:nodes"
CA_CONFIG_MAP = "kopfvirt-ca"  # ca.crt: the CAs the nodes trust, published for the agents


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
    key = ec.generate_private_key(ec.SECP256R1())
    return _issue(ca_cert, ca_key, _name(common_name, orgs), key.public_key(), names, now, lifetime), _key_pem(key)


def _issue(ca_cert: bytes, ca_key: bytes, subject: x509.Name, public_key, names: Sequence[str],
           now: datetime.datetime, lifetime: datetime.timedelta) -> bytes:
    issuer = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, None)
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer.subject)
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + lifetime)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # Which CA signed it, by key: an old and a new CA of one name are told apart.
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                              critical=False))
    if names:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    return _pem(builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False).sign(signer, hashes.SHA256()))


def node_common_name(node: str) -> str:
    return f"kopfvirt-node:{node}"


def requested_node(csr_pem: bytes) -> str | None:
    """The node a CSR's subject names (CN=kopfvirt-node:<node>), or None."""
    try:
        names = x509.load_pem_x509_csr(csr_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    prefix = node_common_name("")
    cn = str(names[0].value) if names else ""
    return cn[len(prefix):] if cn.startswith(prefix) and len(cn) > len(prefix) else None


def new_node_request(node: str, names: Sequence[str]) -> tuple[bytes, bytes]:
    """(CSR, key) of a node's libvirt certificate for `names` (its addresses, then its name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name(node_common_name(node), [NODE_ORG]))
           .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def node_request_problem(csr_pem: bytes, node: str, allowed_names: Sequence[str]) -> str | None:
    """Why a CSR for `node`'s libvirt certificate must be denied; None when it asks only
    for that node's own name and addresses (`allowed_names`: what its Node object says)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        return f"the request cannot be read ({e})"
    if not csr.is_signature_valid:
        return "the request's signature is not valid"
    if csr.subject != _name(node_common_name(node), [NODE_ORG]):
        return f"the subject must be O={NODE_ORG}, CN={node_common_name(node)}, not {csr.subject.rfc4514_string()}"
    names = _request_names(csr)
    if not names:
        return "the request names no address"
    foreign = [n for n in names if n not in allowed_names]
    if foreign:
        return f"node {node} is not {', '.join(foreign)} (it has {', '.join(allowed_names) or 'no address'})"
    return None


def sign_node_request(ca_cert: bytes, ca_key: bytes, csr_pem: bytes, now: datetime.datetime,
                      lifetime: datetime.timedelta = NODE_LIFETIME) -> bytes:
    """The certificate a judged CSR asks for: its subject and names, for serving and dialing."""
    csr = x509.load_pem_x509_csr(csr_pem)
    return _issue(ca_cert, ca_key, csr.subject, csr.public_key(), _request_names(csr), now, lifetime)


def node_certificate_reason(cert_pem: bytes | None, key_pem: bytes | None, ca_bundle: bytes | None,
                            names: Sequence[str], now: datetime.datetime) -> str | None:
    """Why a node must ask for a new certificate; None while the one it has serves `names`
    and is signed by a CA of the bundle the cluster trusts."""
    if not cert_pem or not key_pem or not ca_bundle:
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
        cas = _certs(ca_bundle)
    except ValueError as e:
        return f"the certificate cannot be read ({e})"
    if key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return "the key does not match the certificate"
    if not any(_signed_by(cert, ca) for ca in cas):
        return "the certificate is not signed by the cluster's CA"
    return _lifetime_and_names_problem(cert, names, now, RENEW_NODE_BEFORE, "the certificate")


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _request_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in sans if isinstance(n, (x509.IPAddress, x509.DNSName))]


def _lifetime_and_names_problem(cert: x509.Certificate, names: Sequence[str], now: datetime.datetime,
                                renew_before: datetime.timedelta, what: str) -> str | None:
    if cert.not_valid_after_utc - now < renew_before:
        return f"{what} expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    missing = [n for n in names if _san(n) not in sans]
    if missing:
        return f"{what} does not name {', '.join(missing)}"
    return None


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
    if not _signed_by(cert, ca):
        return "the serving certificate is not signed by the CA"
    return _lifetime_and_names_problem(cert, names, now, RENEW_SERVING_BEFORE, "the serving certificate")


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
