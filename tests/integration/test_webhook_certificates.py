"""The webhook's certificate as a user installing the chart gets it: issued by the
controller into a Secret, its CA given to the webhook configuration, and renewed (here:
the Secret deleted) while the webhook goes on judging VM writes with the new one."""

from __future__ import annotations

import base64
import json
import socket
import ssl

from .conftest import kubectl, kubectl_json, lab_guest, operator_pod, wait_for

SECRET = "kopfvirt-webhook-tls"
BAD_CPU = {"cpu": {"sockets": 16, "cores": 64}}  # only the webhook refuses this one
SERVICE = "kopfvirt-webhook.kopfvirt-system.svc"  # the name the API server calls it by


def secret() -> dict | None:
    result = kubectl("-n", "kopfvirt-system", "get", "secret", SECRET, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def ca_bundles() -> set[str]:
    return {w["clientConfig"].get("caBundle") for w in kubectl_json("get", "validatingwebhookconfiguration",
                                                                   "kopfvirt")["webhooks"]}


def served_subject(ca_pem: bytes) -> str:
    """The webhook's certificate as a client trusting `ca_pem` sees it at the controller's
    pod (the handshake fails unless it serves a certificate of that CA for its Service)."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    with socket.create_connection((operator_pod("controller")["status"]["podIP"], 9443), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=SERVICE) as tls:
            return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


def refused_by_the_webhook(vms) -> str:
    body = lab_guest("certified")
    body["spec"].update(BAD_CPU)
    result = vms.apply(body)
    assert result.returncode != 0
    return result.stderr


def test_the_controller_issues_the_certificate_and_gives_its_ca_to_the_configuration(vms):
    body = secret()
    assert body["type"] == "kubernetes.io/tls"
    assert body["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kopfvirt-controller"
    assert set(body["data"]) == {"tls.crt", "tls.key", "ca.crt", "ca.key"}
    assert ca_bundles() == {body["data"]["ca.crt"]}
    assert served_subject(base64.b64decode(body["data"]["ca.crt"])) == SERVICE
    assert "spec.cpu: sockets x cores x threads is 1024" in refused_by_the_webhook(vms)


def test_a_lost_secret_is_issued_again_and_served_without_a_restart(vms):
    old = secret()["data"]["ca.crt"]
    kubectl("-n", "kopfvirt-system", "delete", "secret", SECRET)
    new = wait_for("a new certificate in the Secret", lambda: (s := secret()) and s["data"]["ca.crt"] != old
                   and s["data"]["ca.crt"], timeout=60)
    wait_for("the new CA in every webhook's caBundle", lambda: ca_bundles() == {new}, timeout=60)
    # The webhook server reloads the new pair by itself; then writes are judged again.
    wait_for("the webhook serving the new certificate",
             lambda: _serves(base64.b64decode(new)), timeout=60)
    stderr = wait_for("a VM write judged by the webhook",
                      lambda: "sockets x cores" in (e := refused_by_the_webhook(vms)) and e, timeout=60)
    assert "denied the request" in stderr
    assert vms.apply(lab_guest("certified")).returncode == 0  # and a good one admitted
    vms.delete("certified")


def test_a_caBundle_removed_from_the_configuration_is_given_back(vms):
    ca = secret()["data"]["ca.crt"]
    kubectl("patch", "validatingwebhookconfiguration", "kopfvirt", "--type=json",
            "-p", '[{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}]')
    wait_for("the caBundle given back", lambda: ca_bundles() == {ca}, timeout=60)


def _serves(ca_pem: bytes) -> bool:
    try:
        return served_subject(ca_pem) == SERVICE
    except (ssl.SSLError, OSError):
        return False
