"""Console, VNC and domain XML as a namespace's user reaches them: VM subresources of the
Kubernetes API (APIService v1alpha1.subresources.kopfvirt.io), asked with the user's own
credentials, authorized by kube-apiserver and again by the controller, relayed to the agent
on the VM's node. No exec into the operator's pods, no right in its namespace."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import (KUBECONFIG, OPERATOR_NAMESPACE, heartbeat, kubectl, kubectl_json, lab_guest, token_kubeconfig,
                       wait_for)

PLUGIN = str(Path(sys.executable).parent / "kubectl-kopfvirt")


def user_kubeconfig(tmp_path: Path, namespace: str, account: str, role: str) -> Path:
    """A kubeconfig of a ServiceAccount bound to `role` in `namespace` (a token, as users'
    credentials usually are), against the lab's API server."""
    kubectl("-n", namespace, "create", "serviceaccount", account)
    kubectl("-n", namespace, "create", "rolebinding", f"{account}-{role}", f"--clusterrole={role}",
            f"--serviceaccount={namespace}:{account}")
    token = kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    return token_kubeconfig(tmp_path / f"{account}.kubeconfig", token, namespace)


def plugin(kubeconfig: Path, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([PLUGIN, "--kubeconfig", str(kubeconfig), *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def counters(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.search(rb"kopfvirt-heartbeat (\d+)", line))]


@pytest.fixture(scope="module")
def shown(vms):
    """A guest with a VNC display, running."""
    assert vms.apply(lab_guest("shown", console={"vnc": True})).returncode == 0
    node = vms.wait_phase("shown", "Running")["status"]["nodeName"]
    wait_for("shown's heartbeat", lambda: heartbeat(node, vms.domain("shown")))
    yield "shown"
    vms.delete("shown")


def test_an_editor_reads_the_console_past_the_api_servers_request_timeout(vms, shown, tmp_path):
    """kube-apiserver ends an ordinary request after 60 s; a console goes on."""
    carol = user_kubeconfig(tmp_path, vms.namespace, "carol", "edit")
    proc = plugin(carol, "console", shown)
    lines: list[bytes] = []
    try:
        start = time.monotonic()
        while time.monotonic() - start < 70:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        seen = counters(lines)
        assert len(seen) > 62 and seen == sorted(seen), (proc.stderr.read1() if proc.poll() is not None else b"",
                                                         lines[-5:])
        assert proc.poll() is None, "the console closed by itself"
    finally:
        proc.kill()
        proc.wait()


def test_an_editor_opens_the_display_on_a_local_port(vms, shown, tmp_path):
    dave = user_kubeconfig(tmp_path, vms.namespace, "dave", "edit")
    proc = plugin(dave, "vnc", shown)
    try:
        line = proc.stdout.readline().decode()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))
        for _ in range(2):  # each viewer its own connection to the guest's display
            with socket.create_connection(("127.0.0.1", port), timeout=10) as viewer:
                greeting = viewer.recv(12)
                assert greeting == b"RFB 003.008\n", (  # the VNC server's greeting
                    greeting, proc.poll(), proc.stderr.read1() if proc.poll() is not None else b"")
    finally:
        proc.kill()
        proc.wait()
    xml = subprocess.run([PLUGIN, "--kubeconfig", str(dave), "xml", shown], capture_output=True, text=True,
                         check=True).stdout
    # VNC listens on no address of the node: only libvirtd's hand-over reaches it.
    assert re.search(r"<graphics type='vnc'[^>]*>\s*<listen type='none'/>", xml), xml


def test_a_viewer_is_refused_console_vnc_and_xml_naming_the_right(vms, shown, tmp_path):
    erin = user_kubeconfig(tmp_path, vms.namespace, "erin", "view")
    for sub in ("console", "vnc", "xml"):
        out = subprocess.run([PLUGIN, "--kubeconfig", str(erin), sub, shown], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1, (sub, out)
        assert f'cannot get resource "virtualmachines/{sub}" in API group "subresources.kopfvirt.io"' in out.stderr, \
            (sub, out.stderr)


def test_a_vm_without_vnc_or_not_running_says_so(vms):
    assert vms.apply(lab_guest("plain-guest", runStrategy="Halted")).returncode == 0
    vms.wait_phase("plain-guest", "Stopped")
    out = subprocess.run([PLUGIN, "--kubeconfig", str(KUBECONFIG), "-n", vms.namespace, "console", "plain-guest"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "is not running" in out.stderr, out
    kubectl("-n", vms.namespace, "patch", "virtualmachine", "plain-guest", "--type=merge",
            "-p", '{"spec":{"runStrategy":"Always"}}')
    vms.wait_phase("plain-guest", "Running")
    out = subprocess.run([PLUGIN, "--kubeconfig", str(KUBECONFIG), "-n", vms.namespace, "vnc", "plain-guest"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "has no VNC display (spec.console.vnc: true adds one" in out.stderr, out
    vms.delete("plain-guest")


def _https(url: str, context: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=context, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_neither_the_controllers_api_nor_an_agent_believes_a_caller_that_is_not_its_peer(vms, shown, lab):
    """Straight to the pods, past kube-apiserver: forged user headers without the front
    proxy's certificate are refused; an agent serves nobody but the controller, not even
    another node's agent with a certificate of the operator's CA."""
    controller = next(p for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                              "app.kubernetes.io/component=controller")["items"]
                      if p["status"].get("podIP"))
    path = f"/apis/subresources.kopfvirt.io/v1alpha1/namespaces/{vms.namespace}/virtualmachines/{shown}/xml"
    anyone = ssl._create_unverified_context()
    status, body = _https(f"https://{controller['status']['podIP']}:8443{path}", anyone,
                          {"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"})
    assert status == 401 and "no client certificate from the front proxy" in body, (status, body)

    node = vms.get(shown)["status"]["nodeName"]
    agent = next(p for p in kubectl_json("-n", OPERATOR_NAMESPACE, "get", "pods", "-l",
                                         "app.kubernetes.io/component=agent")["items"]
                 if p["spec"]["nodeName"] == node)
    agent_url = f"https://{agent['status']['podIP']}:8186/v1/namespaces/{vms.namespace}/virtualmachines/{shown}/xml"
    with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
        _https(agent_url, anyone, {})  # no client certificate: no handshake
    other = "node-2" if node == "node-1" else "node-1"
    tls = Path(lab.root) / "tls-copy"
    tls.mkdir(exist_ok=True)
    for name in ("servercert.pem", "serverkey.pem"):
        content = subprocess.run([sys.executable, "-m", "kopfvirt_lab", "exec", other, "--", "cat",
                                  f"/var/lib/kopfvirt/tls/{name}"], capture_output=True, check=True).stdout
        (tls / name).write_bytes(content)
    as_other_node = ssl._create_unverified_context()
    as_other_node.load_cert_chain(str(tls / "servercert.pem"), str(tls / "serverkey.pem"))
    status, body = _https(agent_url, as_other_node, {})
    assert status == 403 and "is not the controller's" in body, (status, body)
