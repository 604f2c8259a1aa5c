"""The lab's own logic that needs no namespaces: certificates, kubeconfigs, checks, errors."""

import re
import socket
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from cryptography import x509

from kopfvirt import NODE_TLS_DIR
from kopfvirt.agent.tls import LIBVIRTD_PATHS
from kopfvirt_lab import controlplane, images, kubeconfig, layout, manage, nodes, pki, procs, storage
from kopfvirt_lab.errors import LabError


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


def test_a_daemon_is_running_only_while_its_own_process_lives(tmp_path):
    """A pid file whose pid now belongs to another process (reused after ours exited) is
    not our daemon: `lab up` starts it again and `lab down` kills nothing."""
    lab = layout.Lab(tmp_path)
    pid = procs.start(lab, "sleeper", ["sleep", "30"])
    try:
        assert procs.running(lab, "sleeper") == pid
        (lab.pids / "sleeper.started").write_text("1\n")  # as if pid were handed on
        assert procs.running(lab, "sleeper") is None
        procs.stop(lab, "sleeper", grace=1)
        assert procs.pid_alive(pid), "stop must not kill a process that is not ours"
        assert not (lab.pids / "sleeper.pid").exists()
    finally:
        procs.kill(pid, grace=1)


def test_lab_needs_root(monkeypatch):
    monkeypatch.setattr(manage.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        manage._preflight()


def test_lab_names_missing_tools(monkeypatch):
    monkeypatch.setattr(manage.os, "geteuid", lambda: 0)
    monkeypatch.setattr(manage.shutil, "which", lambda tool: None if tool == "libvirtd" else "/bin/x")
    with pytest.raises(LabError, match=r"libvirtd \(package libvirt-daemon-system\)"):
        manage._preflight()


def _fake_go(path, version):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n[ "$1 $2" = "env GOVERSION" ] && echo go{version}\n')
    path.chmod(0o755)


@pytest.mark.parametrize("machine, uses", [("1.26.8", "machine"), ("1.27.1", "machine"), ("1.19.8", "cached"),
                                           ("1.26.7", "cached")])
def test_go_is_the_machines_when_recent_enough_else_the_cached_toolchain(tmp_path, machine, uses):
    script = Path(__file__).resolve().parents[2] / "lab" / "ensure-go.sh"
    _fake_go(tmp_path / "bin" / "go", machine)
    cached = tmp_path / "cache/go-toolchain/golang.org/toolchain@v0.0.1-go1.26.8.linux-amd64/bin/go"
    _fake_go(cached, "1.26.8")
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True, env={
        "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "KOPFVIRT_CACHE": str(tmp_path / "cache"), "HOME": str(tmp_path)})
    assert out.stdout.strip() == str(tmp_path / "bin" / "go" if uses == "machine" else cached)


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
    monkeypatch.setattr(manage.images, "build", lambda lab: calls.append("images") or {})
    monkeypatch.setattr(manage.nodes, "ensure_bridge", lambda: calls.append("bridge"))
    monkeypatch.setattr(manage.controlplane, "prepare_pki", lambda lab: calls.append("pki"))

    def refuse(lab):
        raise LabError("cannot start kube-apiserver: port 6443 is in use by pid 7 (x)")
    monkeypatch.setattr(manage.controlplane, "start", refuse)
    monkeypatch.setattr(manage, "down", lambda lab, **kw: calls.append(("down", kw)))
    with pytest.raises(LabError, match="port 6443 is in use"):
        manage.up(lab, 2)
    assert calls[-1] == ("down", {"keep_logs": True, "quiet": True})


@pytest.mark.parametrize("xml", [storage.gluster_pool_xml("gl"), storage.iscsi_direct_pool_xml("is", "node-1")])
def test_storage_pool_xml_is_valid_for_libvirt(tmp_path, xml):
    path = tmp_path / "pool.xml"
    path.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(path), "storagepool"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gluster_pool_mounts_the_lab_volume_over_fuse():
    pool = ElementTree.fromstring(storage.gluster_pool_xml("gl"))
    assert pool.get("type") == "netfs"
    assert pool.find("source/host").get("name") == "198.18.0.5"
    assert pool.find("source/dir").get("path") == layout.GLUSTER_VOLUME
    assert pool.find("source/format").get("type") == "glusterfs"
    assert pool.findtext("target/path") == "/var/lib/kopfvirt/pools/gluster"


def test_iscsi_direct_pool_names_the_node_as_initiator():
    pool = ElementTree.fromstring(storage.iscsi_direct_pool_xml("is", "node-2"))
    assert pool.find("source/device").get("path") == layout.ISCSI_TARGET
    assert pool.find("source/initiator/iqn").get("name") == "iqn.2026-11.io.kopfvirt.lab:node-2"


def test_nfs_url_is_under_the_export():
    assert storage.nfs_url("/x.qcow2") == "nfs://198.18.0.5/export/x.qcow2"


def test_ganesha_exports_the_data_dir_unsquashed(tmp_path):
    conf = storage.ganesha_conf(storage.Host(data=tmp_path))
    assert f'Path = "{tmp_path}/nfs/export";' in conf
    assert 'Pseudo = "/export";' in conf and "Squash = No_Root_Squash;" in conf
    assert conf.count("Protocols = 3, 4;") == 2 and "Name = VFS;" in conf
    assert "Graceless = true;" in conf  # a restarted server serves at once
    assert conf.count("{") == conf.count("}")


def test_storage_servers_keep_their_own_run_and_state(tmp_path):
    host = storage.Host(data=tmp_path / "data", run=tmp_path / "run")
    assert host.private_dirs["/run"] == tmp_path / "run"
    assert all(str(source).startswith(str(tmp_path)) for source in host.private_dirs.values())


def test_storage_status_without_servers(tmp_path):
    lab = layout.Lab(tmp_path)
    host = storage.Host(ip="192.0.2.1")  # TEST-NET: nothing answers
    states = storage.status(lab, host)
    assert set(states) == {"glusterd", "tgtd", "rpcbind", "ganesha"}
    assert states["tgtd"] == "stopped, 192.0.2.1:3260 unreachable"


def test_libvirtd_missing_an_installed_backend_is_found(monkeypatch):
    caps = "<pool type='netfs' supported='yes'>\n<pool type='iscsi-direct' supported='no'>"
    monkeypatch.setattr(nodes.procs, "run", lambda argv, check=True: subprocess.CompletedProcess(argv, 0, caps, ""))
    monkeypatch.setattr(nodes.Path, "glob", lambda self, pattern: iter(["x.so"]))
    assert nodes._missing_backends("node-1") == ["iscsi-direct"]


def test_an_image_is_rebuilt_only_when_its_inputs_change(tmp_path):
    lab = layout.Lab(tmp_path)
    (tmp_path / "charts/kopfvirt").mkdir(parents=True)
    (tmp_path / "charts/kopfvirt/Chart.yaml").write_text('appVersion: "0.1.0"\n')
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "operator/kopfvirt/__pycache__").mkdir(parents=True)
    (tmp_path / "operator/kopfvirt/a.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "README.md").write_text("")
    (tmp_path / "images").mkdir()
    (tmp_path / "images/reservation.c").write_text("int main(void) {}\n")
    (tmp_path / "images/libvirt").mkdir()
    (tmp_path / "images/libvirt/start.sh").write_text("exec libvirtd\n")
    before = {t: images.target_hash(lab, t) for t in ("operator", "reservation", "libvirt")}
    (tmp_path / "operator/kopfvirt/__pycache__/a.cpython-311.pyc").write_bytes(b"\0")
    assert {t: images.target_hash(lab, t) for t in before} == before  # bytecode is no input
    (tmp_path / "operator/kopfvirt/a.py").write_text("x = 2\n")
    after = {t: images.target_hash(lab, t) for t in before}
    assert after["operator"] != before["operator"]
    assert (after["reservation"], after["libvirt"]) == (before["reservation"], before["libvirt"])
    (tmp_path / "images/libvirt/start.sh").write_text("exec libvirtd --listen\n")
    assert images.target_hash(lab, "libvirt") != after["libvirt"]
    after["libvirt"] = images.target_hash(lab, "libvirt")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nUSER 1\n")
    assert all(images.target_hash(lab, t) != after[t] for t in before)
    assert images.reference(lab, "reservation") == "docker.io/library/kopfvirt-reservation:0.1.0"


def test_a_failed_build_step_names_itself_and_the_tools_words():
    with pytest.raises(LabError, match=r"(?s)image build: the root filesystem failed \(exit 1\).*no such suite"):
        images._step("the root filesystem", ["sh", "-c", "echo no such suite >&2; exit 1"])


def test_the_libvirt_image_links_libvirtds_certificate_paths_as_the_agent_expects():
    """The agent writes the node's pair into its TLS directory; libvirtd in the libvirt image
    reads (and reloads) it at its default paths, linked there by the Dockerfile."""
    text = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()
    stage = text[text.index("AS libvirt"):]
    assert f"t={NODE_TLS_DIR}" in stage
    links = dict((link, target) for target, link in re.findall(r"ln -s \$t/(\S+) (\S+)", stage))
    assert links == LIBVIRTD_PATHS
