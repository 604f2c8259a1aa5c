"""The lab's own logic that needs no namespaces: certificates, kubeconfigs, checks, errors."""

import socket
import subprocess

import pytest
import yaml
from cryptography import x509

from kopfvirt.lab import controlplane, kubeconfig, layout, manage, pki, procs
from kopfvirt.lab.errors import LabError


def test_node_addresses_are_in_the_benchmarking_range():
    assert [layout.node_ip(i) for i in (1, 2, 3)] == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    assert layout.node_names(2) == ["node-1", "node-2"]


def test_apiserver_cert_serves_the_lab_addresses(tmp_path):
    pki.ensure_ca(tmp_path)
    pki.ensure_cert(tmp_path, "apiserver", "kube-apiserver", dns=("kubernetes",), ips=("198.18.0.1",))
    cert = x509.load_pem_x509_certificate((tmp_path / "apiserver.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["198.18.0.1"]
    result = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "ca.crt", tmp_path / "apiserver.crt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_client_cert_carries_groups(tmp_path):
    pki.ensure_ca(tmp_path)
    pki.ensure_cert(tmp_path, "admin", "lab-admin", orgs=("system:masters",))
    cert = x509.load_pem_x509_certificate((tmp_path / "admin.crt").read_bytes())
    assert "O=system:masters" in cert.subject.rfc4514_string()


def test_token_kubeconfig(tmp_path):
    (tmp_path / "ca.crt").write_text("CA")
    kubeconfig.write(tmp_path / "kc", "https://198.18.0.1:6443", tmp_path / "ca.crt", "sa", token="t0k",
                     namespace="kopfvirt-system")
    config = yaml.safe_load((tmp_path / "kc").read_text())
    assert config["users"][0]["user"] == {"token": "t0k"}
    assert config["contexts"][0]["context"]["namespace"] == "kopfvirt-system"
    assert (tmp_path / "kc").stat().st_mode & 0o077 == 0


def test_port_in_use_names_the_holder():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        holder = procs.port_in_use(s.getsockname()[1])
    assert holder and "python" in holder


def test_lab_needs_root(monkeypatch):
    monkeypatch.setattr(manage.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        manage._preflight()


def test_lab_names_missing_tools(monkeypatch):
    monkeypatch.setattr(manage.os, "geteuid", lambda: 0)
    monkeypatch.setattr(manage.shutil, "which", lambda tool: None if tool == "libvirtd" else "/bin/x")
    with pytest.raises(LabError, match=r"libvirtd \(package libvirt-daemon-system\)"):
        manage._preflight()


def test_no_go_and_no_cached_build_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("KOPFVIRT_CACHE", str(tmp_path))
    monkeypatch.setattr(controlplane.shutil, "which", lambda tool: None if tool == "go" else "/bin/x")
    with pytest.raises(LabError, match="Go is not installed"):
        controlplane.build(layout.Lab(tmp_path))


def test_busy_port_refuses_to_start_apiserver(tmp_path, monkeypatch):
    lab = layout.Lab(tmp_path)
    lab.root.mkdir()
    monkeypatch.setattr(controlplane.procs, "port_in_use",
                        lambda port: "pid 42 (nginx)" if port == layout.ETCD_CLIENT_PORT else None)
    monkeypatch.setattr(controlplane.procs, "start", lambda *a, **k: pytest.fail("must not start anything"))
    with pytest.raises(LabError, match=r"port 23790 is in use by pid 42 \(nginx\)"):
        controlplane.start(lab)


def test_failed_first_up_removes_what_it_started(tmp_path, monkeypatch):
    lab = layout.Lab(tmp_path)
    calls = []
    monkeypatch.setattr(manage, "_preflight", lambda: None)
    monkeypatch.setattr(manage, "_clear_foreign", lambda lab: None)
    monkeypatch.setattr(manage, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(manage, "OWNER", tmp_path / "run" / "owner")
    monkeypatch.setattr(manage.controlplane, "build", lambda lab: calls.append("build"))
    monkeypatch.setattr(manage.guest, "install", lambda lab: calls.append("guest"))
    monkeypatch.setattr(manage.nodes, "ensure_bridge", lambda: calls.append("bridge"))
    monkeypatch.setattr(manage.controlplane, "prepare_pki", lambda lab: calls.append("pki"))

    def refuse(lab):
        raise LabError("cannot start kube-apiserver: port 6443 is in use by pid 7 (x)")
    monkeypatch.setattr(manage.controlplane, "start", refuse)
    monkeypatch.setattr(manage, "down", lambda lab, **kw: calls.append(("down", kw)))
    with pytest.raises(LabError, match="port 6443 is in use"):
        manage.up(lab, 2)
    assert calls[-1] == ("down", {"keep_logs": True, "quiet": True})
