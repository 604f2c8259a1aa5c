"""Migration over TLS only, with certificates the operator issues: each node's agent files a
CertificateSigningRequest, the controller judges it and signs with its CA, and libvirtd
listens on TLS alone, accepting only nodes' certificates. A target whose certificate is
not the cluster's cannot be migrated to; its agent puts a valid one back.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import uuid

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kopfvirt.core import certificates
from kopfvirt_lab.layout import TLS_DIR, Lab, node_ip

from .conftest import REPO, as_agent_of, kubectl, kubectl_with_token, kubectl_json, lab_exec, operator_pid, wait_for
from .test_migration import OTHER, Migrations, assert_keeps_counting, assert_on_one_node, running_vm

LAB = Lab(REPO)
NODES = {"node-1": node_ip(1), "node-2": node_ip(2)}
AGENT = "system:serviceaccount:kopfvirt-system:kopfvirt-agent"


def tls_dir(node: str):
    return LAB.node_dir(node) / TLS_DIR.lstrip("/")


def cluster_ca() -> list[x509.Certificate]:
    data = kubectl_json("-n", "kopfvirt-system", "get", "configmap", certificates.CA_CONFIG_MAP)["data"]
    return x509.load_pem_x509_certificates(data["ca.crt"].encode())


def signed_by_cluster(node: str) -> bool:
    cert = x509.load_pem_x509_certificate((tls_dir(node) / "servercert.pem").read_bytes())
    for ca in cluster_ca():
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # noqa: BLE001 - another CA of the bundle
            continue
    return False


def virsh_from(node: str, peer: str, pkipath: str, transport: str = "tls"):
    uri = f"qemu+{transport}://{NODES[peer]}/system" + (f"?pkipath={pkipath}" if transport == "tls" else "")
    return lab_exec(node, "virsh", "-c", uri, "sysinfo", check=False)


def test_each_node_holds_a_certificate_the_controller_signed_for_its_address(lab):
    secret = kubectl_json("-n", "kopfvirt-system", "get", "secret", "kopfvirt-webhook-tls")
    # The CA the agents are given is the operator's own (the one in its Secret).
    assert base64.b64decode(secret["data"]["ca.crt"]) == b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in cluster_ca())
    for node, ip in NODES.items():
        cert = x509.load_pem_x509_certificate((tls_dir(node) / "servercert.pem").read_bytes())
        assert cert.subject.rfc4514_string() == f"CN=kopfvirt-node:{node},O=kopfvirt:nodes"
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ip in [str(n) for n in names.get_values_for_type(x509.IPAddress)]
        assert signed_by_cluster(node)
        assert (tls_dir(node) / "serverkey.pem").stat().st_mode & 0o077 == 0, "the key is root's alone"


def test_libvirtd_listens_on_tls_only_and_only_for_nodes(lab, tmp_path):
    for node, peer in OTHER.items():
        reached = virsh_from(node, peer, TLS_DIR)
        assert reached.returncode == 0, reached.stderr
        assert f"<entry name='serial'>{peer}</entry>" in reached.stdout
        plain = virsh_from(node, peer, "", transport="tcp")
        assert plain.returncode != 0 and "Connection refused" in plain.stderr, plain.stderr
    # A stranger's certificate (another CA) is refused, and so is one of the operator's CA
    # that is not a node's (the webhook's serving certificate).
    now = datetime.datetime.now(datetime.timezone.utc)
    stranger_ca, stranger_ca_key = certificates.new_ca("stranger", now)
    stranger, stranger_key = certificates.new_leaf(stranger_ca, stranger_ca_key, "kopfvirt-node:node-1", now,
                                                   orgs=["kopfvirt:nodes"], names=["198.18.0.11"])
    secret = kubectl_json("-n", "kopfvirt-system", "get", "secret", "kopfvirt-webhook-tls")["data"]
    webhook = {k: base64.b64decode(secret[k]) for k in ("tls.crt", "tls.key")}
    for label, ca, cert, key in (("stranger", stranger_ca, stranger, stranger_key),
                                 ("webhook", (tls_dir("node-1") / "cacert.pem").read_bytes(), webhook["tls.crt"],
                                  webhook["tls.key"])):
        pki = tmp_path / label
        pki.mkdir()
        for name, data in (("cacert.pem", ca), ("clientcert.pem", cert), ("clientkey.pem", key)):
            (pki / name).write_bytes(data)
        refused = virsh_from("node-1", "node-2", str(pki))
        assert refused.returncode != 0, f"node-2's libvirtd accepted the {label}'s certificate"


def test_a_target_without_a_valid_certificate_cannot_be_migrated_to_until_its_agent_repairs_it(vms):
    migrations = Migrations(vms.namespace)
    source, uid = running_vm(vms, "tls-mig")
    target = OTHER[source]
    agent_pid = operator_pid("agent", target)
    os.kill(agent_pid, signal.SIGSTOP)  # so it does not put the valid certificate back at once
    try:
        now = datetime.datetime.now(datetime.timezone.utc)
        ca, ca_key = certificates.new_ca("not-the-cluster", now)
        cert, key = certificates.new_leaf(ca, ca_key, f"kopfvirt-node:{target}", now, orgs=["kopfvirt:nodes"],
                                          names=[NODES[target], target])
        # A pair libvirtd accepts as its own (it checks it against its CA file), of another CA.
        for name, data in (("cacert.pem", ca), ("serverkey.pem", key), ("servercert.pem", cert)):
            (tls_dir(target) / name).write_bytes(data)
        lab_exec(target, "virt-admin", "-c", "libvirtd:///system", "server-update-tls", "libvirtd")
        before = assert_keeps_counting(vms, "tls-mig", source, 0)
        migrations.create("tls-refused", "tls-mig")
        failed = migrations.wait_phase("tls-refused", "Failed", "Succeeded", timeout=120)
        assert failed["status"]["phase"] == "Failed", failed["status"]
        # libvirt's own words, passed on: the source did not trust the target.
        assert "Failed to verify peer's certificate" in failed["status"].get("message", ""), failed["status"]
        assert_on_one_node(uid, source)
        assert_keeps_counting(vms, "tls-mig", source, before)
    finally:
        os.kill(agent_pid, signal.SIGCONT)
    wait_for(f"{target}'s agent to put back a certificate of the cluster's CA", lambda: signed_by_cluster(target),
             timeout=60)
    before = assert_keeps_counting(vms, "tls-mig", source, 0)
    migrations.create("tls-ok", "tls-mig")
    done = migrations.wait_phase("tls-ok", "Succeeded", "Failed", timeout=120)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert_on_one_node(uid, target)
    assert_keeps_counting(vms, "tls-mig", target, before)
    vms.delete("tls-mig")


def csr(name: str, request: bytes) -> str:
    return yaml.safe_dump({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                           "metadata": {"name": name},
                           "spec": {"request": base64.b64encode(request).decode(), "signerName": certificates.NODE_SIGNER,
                                    "usages": ["digital signature", "server auth", "client auth"]}})


def denial(name: str) -> str:
    def probe():
        status = json.loads(kubectl("get", "csr", name, "-o", "json").stdout).get("status") or {}
        assert not status.get("certificate"), f"CSR {name} was signed"
        return next((c["message"] for c in status.get("conditions") or [] if c["type"] == "Denied"), None)
    return wait_for(f"CSR {name} denied", probe, timeout=30)


def test_requests_not_from_an_agent_or_for_another_address_are_denied_with_the_reason(lab, tmp_path):
    suffix = uuid.uuid4().hex[:6]
    own, _ = certificates.new_node_request("node-2", [NODES["node-2"], "node-2"])
    foreign, _ = certificates.new_node_request("node-2", ["198.18.0.99", "node-2"])
    unbound = kubectl_with_token(tmp_path, kubectl("-n", "kopfvirt-system", "create", "token",  # no pod's
                                                   "kopfvirt-agent").stdout.strip())
    names = [f"{who}-{suffix}" for who in ("admin", "unbound", "node-1", "foreign")]
    try:
        kubectl("create", "-f", "-", stdin=csr(names[0], own))
        assert denial(names[0]).startswith(f"only {AGENT} may ask for node certificates, not ")
        created = unbound("create", "-f", "-", input=csr(names[1], own))
        assert created.returncode == 0, created.stderr
        assert "the requester's token is bound to no node" in denial(names[1])
        assert as_agent_of(tmp_path, "node-1")("create", "-f", "-", input=csr(names[2], own)).returncode == 0
        assert "the requester's token is bound to node node-1, not node-2" in denial(names[2])
        assert as_agent_of(tmp_path, "node-2")("create", "-f", "-", input=csr(names[3], foreign)).returncode == 0
        assert "node node-2 is not 198.18.0.99" in denial(names[3])
    finally:
        kubectl("delete", "csr", *names, "--ignore-not-found", check=False)
