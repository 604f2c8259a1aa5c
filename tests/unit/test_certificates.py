"""The webhook's certificates as the controller issues and renews them, judged by a real
TLS handshake: a client that trusts the Secret's ca.crt reaches a server with its pair."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading

import pytest
from cryptography import x509

from kopfvirt.core import certificates

NAMES = ["kopfvirt-webhook.kopfvirt-system.svc", "198.18.0.1"]
NOW = datetime.datetime(2026, 11, 27, tzinfo=datetime.timezone.utc)


def handshake(bundle: certificates.Bundle, server_name: str, tmp_path, trust: bytes | None = None) -> str:
    """Serve with the bundle's pair, connect trusting `trust` (the bundle's CAs); the
    server's certificate's subject as the client saw it."""
    pem = tmp_path / "serving.pem"
    pem.write_bytes(bundle.cert + bundle.key)   # one file, as the controller writes it
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pem, pem)
    client_ctx = ssl.create_default_context(cadata=(trust or bundle.ca_bundle).decode())
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
    threading.Thread(target=serve, daemon=True).start()
    with socket.create_connection(listener.getsockname()) as raw:
        with client_ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            subject = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
            tls.send(b"x")
    listener.close()
    return subject


def test_a_first_bundle_serves_its_names_to_clients_trusting_its_ca(tmp_path):
    bundle = certificates.renew(None, NAMES, datetime.datetime.now(datetime.timezone.utc))
    assert handshake(bundle, "kopfvirt-webhook.kopfvirt-system.svc", tmp_path) == NAMES[0]
    assert handshake(bundle, "198.18.0.1", tmp_path) == NAMES[0]
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(bundle, "kopfvirt-webhook.elsewhere.svc", tmp_path)


def test_no_bundle_or_an_unreadable_one_is_issued():
    assert certificates.renewal_reason(None, NAMES, NOW) == "no certificate yet"
    broken = certificates.Bundle(ca_key=b"x", ca_bundle=b"y", cert=b"z", key=b"w")
    assert "cannot be read" in certificates.renewal_reason(broken, NAMES, NOW)
    assert certificates.from_secret_data({"tls.crt": "only"}) is None


def test_a_fresh_bundle_stands_and_round_trips_through_the_secret():
    bundle = certificates.renew(None, NAMES, NOW)
    assert certificates.renewal_reason(bundle, NAMES, NOW + datetime.timedelta(days=300)) is None
    data = certificates.to_secret_data(bundle)
    assert set(data) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    assert certificates.from_secret_data(data) == bundle


def test_a_new_name_is_a_reason_and_the_renewal_keeps_the_ca():
    bundle = certificates.renew(None, NAMES[:1], NOW)
    assert certificates.renewal_reason(bundle, NAMES, NOW) == "the serving certificate does not name 198.18.0.1"
    renewed = certificates.renew(bundle, NAMES, NOW)
    assert renewed.ca_bundle == bundle.ca_bundle and renewed.cert != bundle.cert
    assert certificates.renewal_reason(renewed, NAMES, NOW) is None


def test_the_serving_certificate_is_renewed_a_month_before_it_ends_under_the_same_ca():
    bundle = certificates.renew(None, NAMES, NOW)
    later = NOW + datetime.timedelta(days=340)
    assert certificates.renewal_reason(bundle, NAMES, later).startswith("the serving certificate expires on 2027-")
    renewed = certificates.renew(bundle, NAMES, later)
    assert renewed.ca_bundle == bundle.ca_bundle  # the caBundle in the webhook configuration stays right
    assert x509.load_pem_x509_certificate(renewed.cert).not_valid_after_utc > later + datetime.timedelta(days=300)


def test_a_new_ca_comes_a_year_early_and_the_old_one_stays_trusted_until_it_ends(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    first = certificates.renew(None, NAMES, now - datetime.timedelta(days=3300))
    old = certificates.renew(first, NAMES, now - datetime.timedelta(days=200))  # a serving renewal, same CA
    assert old.ca_bundle == first.ca_bundle
    assert certificates.renewal_reason(old, NAMES, now).startswith("the CA expires on")
    renewed = certificates.renew(old, NAMES, now)
    cas = x509.load_pem_x509_certificates(renewed.ca_bundle)
    assert [c.public_bytes(certificates.serialization.Encoding.PEM) for c in cas] == [renewed.ca_cert, old.ca_cert]
    assert certificates.renewal_reason(renewed, NAMES, now) is None
    # An API server still holding only the old CA distrusts the new pair; one with the new
    # bundle trusts both the old pair (until the switch) and the new one.
    assert handshake(old, NAMES[0], tmp_path, trust=renewed.ca_bundle) == NAMES[0]
    assert handshake(renewed, NAMES[0], tmp_path, trust=renewed.ca_bundle) == NAMES[0]
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(renewed, NAMES[0], tmp_path, trust=old.ca_bundle)


# -- each node's libvirt certificate (a CSR the agent files, the controller judges and signs) --

NODE_NAMES = ["198.18.0.11", "node-1"]


def signed_node_pair(bundle: certificates.Bundle, node: str = "node-1", names=NODE_NAMES, now=NOW):
    request, key = certificates.new_node_request(node, names)
    assert certificates.requested_node(request) == node
    assert certificates.node_request_problem(request, node, names) is None
    return certificates.sign_node_request(bundle.ca_cert, bundle.ca_key, request, now), key


def test_a_node_certificate_serves_and_dials_between_nodes(tmp_path):
    """Both ends of a migration hold one: node-2 dials node-1 with its own and each checks
    the other against the CA (mutual TLS, as libvirtd and QEMU do)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    bundle = certificates.renew(None, NAMES, now)
    server_cert, server_key = signed_node_pair(bundle, now=now)
    client_cert, client_key = signed_node_pair(bundle, "node-2", ["198.18.0.12", "node-2"], now)
    for name, data in (("server.pem", server_cert + server_key), ("client.pem", client_cert + client_key)):
        (tmp_path / name).write_bytes(data)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=bundle.ca_bundle.decode())
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(tmp_path / "server.pem")
    client_ctx = ssl.create_default_context(cadata=bundle.ca_bundle.decode())
    client_ctx.load_cert_chain(tmp_path / "client.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    seen = {}

    def serve():
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            seen["client"] = dict(x[0] for x in tls.getpeercert()["subject"])
            tls.recv(1)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(listener.getsockname()) as raw:
        with client_ctx.wrap_socket(raw, server_hostname="198.18.0.11") as tls:
            server = dict(x[0] for x in tls.getpeercert()["subject"])
            tls.send(b"x")
    thread.join(5)
    listener.close()
    assert server == {"organizationName": "kopfvirt:nodes", "commonName": "kopfvirt-node:node-1"}
    assert seen["client"]["commonName"] == "kopfvirt-node:node-2"
    assert certificates.node_certificate_reason(server_cert, server_key, bundle.ca_bundle, NODE_NAMES, now) is None


def test_a_request_naming_what_is_not_the_node_is_denied_with_the_names():
    request, _ = certificates.new_node_request("node-1", ["198.18.0.12", "node-1"])
    assert certificates.node_request_problem(request, "node-1", NODE_NAMES) == \
        "node node-1 is not 198.18.0.12 (it has 198.18.0.11, node-1)"
    # A request for node-1 judged as node-2's (the subject is what the signer signs).
    assert "the subject must be O=kopfvirt:nodes, CN=kopfvirt-node:node-2" in \
        certificates.node_request_problem(request, "node-2", NODE_NAMES)
    assert "cannot be read" in certificates.node_request_problem(b"junk", "node-1", NODE_NAMES)
    assert certificates.requested_node(b"junk") is None


def test_a_node_asks_again_when_its_certificate_no_longer_holds():
    bundle = certificates.renew(None, NAMES, NOW)
    cert, key = signed_node_pair(bundle)
    assert certificates.node_certificate_reason(None, None, bundle.ca_bundle, NODE_NAMES, NOW) == "no certificate yet"
    later = NOW + certificates.NODE_LIFETIME - datetime.timedelta(days=10)
    assert "expires on" in certificates.node_certificate_reason(cert, key, bundle.ca_bundle, NODE_NAMES, later)
    moved = ["198.18.0.99", "node-1"]
    assert certificates.node_certificate_reason(cert, key, bundle.ca_bundle, moved, NOW) == \
        "the certificate does not name 198.18.0.99"
    other = certificates.renew(None, NAMES, NOW)
    assert certificates.node_certificate_reason(cert, key, other.ca_bundle, NODE_NAMES, NOW) == \
        "the certificate is not signed by the cluster's CA"
    _, stranger_key = certificates.new_node_request("node-1", NODE_NAMES)
    assert certificates.node_certificate_reason(cert, stranger_key, bundle.ca_bundle, NODE_NAMES, NOW) == \
        "the key does not match the certificate"


def test_after_the_ca_is_renewed_node_certificates_of_the_old_ca_still_hold():
    """The bundle trusts the old CA until it ends: nodes renew at their own pace."""
    bundle = certificates.renew(None, NAMES, NOW)
    cert, key = signed_node_pair(bundle)
    later = NOW + certificates.CA_LIFETIME - certificates.RENEW_CA_BEFORE + datetime.timedelta(days=1)
    renewed = certificates.renew(bundle, NAMES, later)
    assert renewed.ca_cert != bundle.ca_cert
    assert certificates.node_certificate_reason(cert, key, renewed.ca_bundle, NODE_NAMES, NOW) is None
