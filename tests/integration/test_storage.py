"""VMs on the lab's shared storage: StoragePools defined on every node, and guests that
keep writing a checked log to their disk while they move, live and offline, on each
backend; a disk on local storage refuses the move, naming the disk.

The lab guest's disk writer (kopfvirt.disk_writer=vda) prints "kopfvirt-disk N" once N
records are on the disk, and verifies the whole log at boot ("kopfvirt-disk-verify ok
M"): M below a record it printed means a write was lost, "bad" that one was torn.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import subprocess
import time
from xml.etree import ElementTree

import pytest
import yaml

from kopfvirt.clients import images, nfs
from kopfvirt.core.disks import PlannedDisk
from kopfvirt_lab import procs
from kopfvirt_lab.layout import Lab

from .conftest import (KOPFVIRT_LAB, REPO, domains_of, heartbeat, kubectl, kubectl_json, lab_exec, lab_guest, run,
                       vm_disk_dirs, wait_for)
from .test_migration import OTHER, assert_keeps_counting, assert_on_one_node, migrations  # noqa: F401

WRITER = "kopfvirt.disk_writer=vda"
BACKENDS = {
    # The VM's own disks (an overlay on a base image, cloud-init media) in the default pool:
    # a GlusterFS volume each node mounts through FUSE.
    "gluster": {"disks": [{"name": "root", "image": {"pool": "lab-images", "volume": "blank.qcow2"}},
                          {"name": "seed", "cloudInit": {"userData": "#cloud-config\nhostname: g\n"}}]},
    # A LUN of the lab's iSCSI target, opened by QEMU's own initiator on either node.
    "iscsi": {"disks": [{"name": "lun", "pool": {"pool": "iscsi", "volume": "unit:0:0:2"}}]},
    # The VM's own disks on the NFS export, opened by QEMU's own NFS client (network disks).
    "nfs": {"storagePool": "nfs",
            "disks": [{"name": "root", "image": {"pool": "lab-images", "volume": "blank.qcow2"}},
                      {"name": "seed", "cloudInit": {"userData": "#cloud-config\nhostname: n\n"}}]},
}


def serial(node: str, domain: str) -> str:
    return lab_exec(node, "cat", f"/var/log/libvirt/qemu/{domain}-serial.log", check=False).stdout


def disk_records(node: str, domain: str) -> int | None:
    found = re.findall(r"kopfvirt-disk (\d+)", serial(node, domain))
    return int(found[-1]) if found else None


def verifications(node: str, domain: str) -> list[str]:
    return re.findall(r"kopfvirt-disk-verify (\w+ \d+)", serial(node, domain))


def writing_vm(vms, name: str, backend: str) -> tuple[str, str]:
    assert vms.apply(lab_guest(name, WRITER, **BACKENDS[backend])).returncode == 0
    vm = vms.wait_phase(name, "Running", timeout=120)
    node = vm["status"]["nodeName"]
    wait_for(f"{name} writing to its disk", lambda: (disk_records(node, vms.domain(name)) or 0) >= 20, timeout=90)
    assert verifications(node, vms.domain(name))[-1].startswith("ok"), serial(node, vms.domain(name))[-2000:]
    return node, vm["metadata"]["uid"]


def live_move(vms, migrations, migration: str, name: str, uid: str, node: str, **spec) -> str:  # noqa: F811
    """One live Migration of a writing VM, which must succeed with the guest counting and
    writing on, on the other node only; that node."""
    before, records = heartbeat(node, vms.domain(name)), disk_records(node, vms.domain(name))
    migrations.create(migration, name, **spec)
    m = migrations.wait_phase(migration, "Succeeded", "Failed", timeout=150)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    target = OTHER[node]
    vms.wait_phase(name, "Running")
    assert_on_one_node(uid, target)
    assert_keeps_counting(vms, name, target, before)
    wait_for(f"{name} writing on {target}", lambda: (disk_records(target, vms.domain(name)) or 0) > records)
    return target


def records_on_disk(node: str, domain: str, upto: int) -> str:
    """Which of the writer's first records are on the guest's disk vda, read on `node` past
    QEMU's lock (ranges, e.g. "1-135, 144-180"): if the guest's own check finds a gap, whether
    one page or a whole tail went says where it was lost. Never raises: it only explains."""
    try:
        return _records_on_disk(node, domain, upto)
    except Exception as e:  # noqa: BLE001 - e.g. a pool volume (iSCSI) names no path to read
        return f"not read: {e!r}"


def _records_on_disk(node: str, domain: str, upto: int) -> str:
    root = ElementTree.fromstring(lab_exec(node, "virsh", "-c", "qemu:///system", "dumpxml", domain).stdout)
    disk = next(d for d in root.iter("disk") if d.find("target").get("dev") == "vda")
    source, fmt = disk.find("source"), disk.find("driver").get("type")
    if disk.get("type") not in ("file", "block", "network"):
        return f"not read: a {disk.get('type')} disk"
    url = source.get("file") or source.get("dev") or \
        f"{source.get('protocol')}://{source.find('host').get('name')}/{source.get('name').lstrip('/')}"
    copy = f"/tmp/records-{domain}.raw"
    dump = lab_exec(node, "sh", "-c", f"timeout 30 qemu-img dd -U -f {fmt} -O raw bs=512 count={upto + 64} if='{url}' "
                                      f"of={copy} && base64 -w0 {copy}; rc=$?; rm -f {copy}; exit $rc", check=False)
    if dump.returncode != 0:
        return f"not read: {dump.stderr.strip()}"
    data = base64.b64decode(dump.stdout)
    def record(i: int) -> bytes:  # as the guest writes it (lab/build-guest.sh)
        return b"kvw %d %s" % (i, hashlib.md5(b"kvw %d\n" % i).hexdigest().encode())
    found = [i for i in range(1, len(data) // 512) if data[i * 512:(i + 1) * 512].rstrip(b"\0") == record(i)]
    ranges = []
    for i in found:
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) or "none"


def assert_log_intact(vms, name: str, node: str, written: int) -> None:
    """Boot the guest again (the plugin's restart): it verifies every record it wrote."""
    seen = len(verifications(node, vms.domain(name)))
    on_disk = records_on_disk(node, vms.domain(name), written)  # before the guest writes over a gap
    vms.plugin("restart", name)
    vm = vms.wait_phase(name, "Running", timeout=120)
    here = vm["status"]["nodeName"]
    before = seen if here == node else 0
    result = wait_for(f"{name} verifying its disk after the restart",
                      lambda: (v := verifications(here, vms.domain(name)))[before:] and v[-1], timeout=90)
    status, count = result.split()
    assert status == "ok" and int(count) >= written, f"the log on disk ends at {count} ({status}); the guest " \
        f"had written {written}; on the disk before the restart: records {on_disk}"


def test_pools_are_active_on_every_node(lab):
    for pool in ("lab-images", "gluster", "iscsi", "nfs"):
        nodes = wait_for(f"StoragePool {pool} active on both nodes", lambda: (
            n := (kubectl_json("get", "storagepool", pool).get("status") or {}).get("nodes") or {})
            and all((n.get(x) or {}).get("state") == "Active" for x in ("node-1", "node-2")) and n)
        assert all(e["capacityBytes"] > 0 for e in nodes.values()), nodes
        ready = wait_for(f"StoragePool {pool} Ready", lambda: next((
            c for c in (kubectl_json("get", "storagepool", pool).get("status") or {}).get("conditions") or []
            if c["type"] == "Ready" and c["status"] == "True"), None))
        assert ready["message"] == "active on 2 node(s): node-1, node-2", ready
    for node in ("node-1", "node-2"):
        labels = kubectl_json("get", "node", node)["metadata"]["labels"]
        assert {"pool.kopfvirt.io/gluster", "shared-pool.kopfvirt.io/gluster", "pool.kopfvirt.io/iscsi",
                "pool.kopfvirt.io/nfs", "shared-pool.kopfvirt.io/nfs"} <= set(labels), labels


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_a_writing_vm_live_migrates_there_and_back_and_loses_no_write(vms, migrations, backend):  # noqa: F811
    name = f"st-live-{backend}"
    source, uid = writing_vm(vms, name, backend)
    dry = vms.plugin("migrate", name, "--dry-run")
    assert "Fit" in dry.stdout, dry.stdout
    node = source
    for step in range(2):
        node = live_move(vms, migrations, f"{name}-{step}", name, uid, node)
    assert node == source
    assert_log_intact(vms, name, node, disk_records(node, vms.domain(name)))
    vms.delete(name)
    assert domains_of(uid) == {}
    if backend == "nfs":  # the VM's own disks go with it, on the server too
        assert not nfs.exists(f"nfs://198.18.0.5/export/vms/{vms.namespace}/{name}-{uid[:8]}")


def test_a_disk_the_agent_makes_on_nfs_reads_alike_from_a_client_that_opened_it_earlier(lab):
    """QEMU's NFS client learns a file's length when it opens it and never asks again, and a
    live move's target opens the VM's disk before the switch-over: a cluster the source
    allocated past that length meanwhile read as zeros on the target (a guest's
    read-modify-write then stored them: records lost in the NFS round trip). The agent makes
    qcow2 files on NFS at their full length; here a qemu-io that opened such a disk reads a
    cluster another client allocated after it, and a fresh client agrees."""
    vm_dir = f"nfs://198.18.0.5/export/length-{os.getpid()}"
    disk = PlannedDisk("log", "vda", "virtio", "disk", "empty", path=f"{vm_dir}/log.qcow2", size_bytes=2**30)
    images.ensure([disk], vm_dir, {})
    try:
        def io(*commands: str) -> str:
            argv = ["qemu-io", "-f", "qcow2", *(a for c in commands for a in ("-c", c)), disk.path]
            return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout

        io("write -P 0x11 0 64K", "write -P 0x11 600M 64K")  # both L2 tables exist before it opens
        opened_earlier = subprocess.Popen(["qemu-io", "-f", "qcow2", disk.path], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        opened_earlier.stdin.write("read -P 0x11 0 512\n")
        opened_earlier.stdin.flush()
        time.sleep(1)
        assert "wrote 4096/4096" in io("write -P 0x5a 629211136 4096")  # 600M + 64K: a cluster of its own
        assert "Pattern verification failed" not in io("read -P 0x5a 629211136 4096")
        seen, _ = opened_earlier.communicate("read -P 0x5a 629211136 4096\nquit\n", timeout=60)
        assert "read 4096/4096 bytes at offset 629211136" in seen and "Pattern verification failed" not in seen, seen
    finally:
        images.remove(vm_dir)


@pytest.mark.parametrize("backend", ["gluster", "nfs"])
def test_a_writing_vm_migrates_offline_with_its_disk(vms, migrations, backend):  # noqa: F811
    name = f"st-offline-{backend}"
    source, uid = writing_vm(vms, name, backend)
    migrations.create(name, name, mode="Offline")
    m = migrations.wait_phase(name, "Succeeded", "Failed", timeout=150)
    assert m["status"]["phase"] == "Succeeded", m["status"]
    written = disk_records(source, vms.domain(name))
    target = vms.wait_phase(name, "Running")["status"]["nodeName"]
    assert target == OTHER[source]
    assert_on_one_node(uid, target)
    result = wait_for("the guest verifying its disk on the target",
                      lambda: (v := verifications(target, vms.domain(name))) and v[-1], timeout=90)
    assert result.startswith("ok") and int(result.split()[1]) >= written, (result, written)
    vms.delete(name)


def dir_pool(name: str, path: str | None = None) -> None:
    """A dir StoragePool (not shared: libvirt cannot tell a directory is on shared storage),
    once both nodes offer it."""
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump({
        "apiVersion": "kopfvirt.io/v1alpha1", "kind": "StoragePool", "metadata": {"name": name},
        "spec": {"type": "dir", "source": {"path": path or f"/var/lib/kopfvirt/storage/{name}"}}}))
    wait_for(f"StoragePool {name} on both nodes", lambda: {f"pool.kopfvirt.io/{name}"} <= set(
        kubectl_json("get", "node", "node-1")["metadata"]["labels"]) & set(
        kubectl_json("get", "node", "node-2")["metadata"]["labels"]), timeout=60)


def test_a_vm_on_local_storage_moves_only_with_its_disks_copied(vms, migrations):  # noqa: F811
    """Each lab node's /var/lib/libvirt is its own: a pool there is truly local. The move
    is refused, naming the disk, until the Migration asks for copyStorage; then the disks
    (an empty disk being written, cloud-init media) go with the VM and lose no write."""
    name, local = "st-local", "/var/lib/libvirt/kopfvirt-local"
    dir_pool("st-local", local)
    body = lab_guest(name, WRITER, storagePool="st-local", disks=[
        {"name": "scratch", "empty": {"size": "64Mi"}},
        {"name": "seed", "cloudInit": {"userData": "#cloud-config\nhostname: local\n"}}])
    assert vms.apply(body).returncode == 0
    vm = vms.wait_phase(name, "Running", timeout=120)
    node, uid = vm["status"]["nodeName"], vm["metadata"]["uid"]
    wait_for(f"{name} writing", lambda: (disk_records(node, vms.domain(name)) or 0) >= 20, timeout=90)
    dry = vms.plugin("migrate", name, "--dry-run", check=False)
    assert dry.returncode == 2 and "StorageNotShared" in dry.stdout, dry.stdout + dry.stderr
    assert "disk scratch is in StoragePool st-local, which is not shared storage" in dry.stdout
    migrations.create(name, name)
    m = migrations.wait_phase(name, "Failed", timeout=30)
    assert m["status"]["reason"] == "StorageNotShared" and "disk scratch" in m["status"]["message"]
    assert domains_of(uid) == {node: "running"}

    target = live_move(vms, migrations, f"{name}-copied", name, uid, node, options={"copyStorage": True})
    vm_dir = f"{local}/vms/{vms.namespace}/{name}-{uid[:8]}"
    assert lab_exec(target, "ls", vm_dir).stdout.split() == ["scratch.qcow2", "seed-cidata.iso"]
    assert lab_exec(node, "ls", vm_dir, check=False).returncode != 0, "the source kept stale copies"
    assert_log_intact(vms, name, target, disk_records(target, vms.domain(name)))
    vms.delete(name)
    assert lab_exec(target, "ls", vm_dir, check=False).returncode != 0, "the VM's disks outlived it"
    kubectl("delete", "storagepool", "st-local")


def test_copy_storage_never_copies_a_disk_onto_itself(vms, migrations):  # noqa: F811
    """A pool left `shared: false` that both nodes see (here the same directory of the lab
    machine): copying its disks would write them onto themselves, and removing the
    source's copies would remove the VM's. The move is refused; the guest writes on."""
    name = "st-same"
    dir_pool("st-same")
    body = lab_guest(name, WRITER, storagePool="st-same", disks=[{"name": "scratch", "empty": {"size": "64Mi"}}])
    assert vms.apply(body).returncode == 0
    vm = vms.wait_phase(name, "Running", timeout=120)
    node, uid = vm["status"]["nodeName"], vm["metadata"]["uid"]
    wait_for(f"{name} writing", lambda: (disk_records(node, vms.domain(name)) or 0) >= 20, timeout=90)
    migrations.create(name, name, options={"copyStorage": True})
    m = migrations.wait_phase(name, "Failed", "Succeeded", timeout=120)
    assert m["status"]["phase"] == "Failed" and m["status"]["reason"] == "CopyRefused", m["status"]
    assert "mark it shared: true" in m["status"]["message"], m["status"]
    assert domains_of(uid) == {node: "running"}
    records = disk_records(node, vms.domain(name))
    wait_for(f"{name} writing on", lambda: disk_records(node, vms.domain(name)) > records)
    assert_log_intact(vms, name, node, disk_records(node, vms.domain(name)))
    vms.delete(name)
    kubectl("delete", "storagepool", "st-same")


def test_a_read_only_pool_cannot_be_written(vms):
    body = lab_guest("st-ro", disks=[{"name": "base", "pool": {"pool": "lab-images", "volume": "blank.qcow2"}}])
    result = vms.apply(body)
    assert result.returncode != 0 and "spec.disks[0].readOnly: StoragePool lab-images is read-only" in result.stderr
    body["spec"]["disks"][0]["readOnly"] = True
    assert vms.apply(body).returncode == 0
    vms.wait_phase("st-ro", "Running", timeout=120)
    vms.delete("st-ro")


def test_a_pool_in_use_cannot_be_deleted(vms):
    dir_pool("st-doomed")
    body = lab_guest("st-user", runStrategy="Halted", storagePool="st-doomed",
                     disks=[{"name": "scratch", "empty": {"size": "16Mi"}}])
    assert vms.apply(body).returncode == 0
    refused = kubectl("delete", "storagepool", "st-doomed", check=False)
    assert refused.returncode != 0, refused.stdout
    assert f"StoragePool st-doomed is in use by VirtualMachine(s) {vms.namespace}/st-user" in refused.stderr
    assert kubectl("get", "storagepool", "st-doomed", check=False).returncode == 0
    vms.delete("st-user")
    wait_for("the pool to be deletable once its VM is gone", lambda: kubectl(
        "delete", "storagepool", "st-doomed", check=False).returncode == 0, timeout=30)
    for node in ("node-1", "node-2"):  # and it leaves the nodes' libvirtd and labels
        wait_for(f"st-doomed gone from {node}", lambda: lab_exec(
            node, "virsh", "-c", "qemu:///system", "pool-info", "st-doomed", check=False).returncode != 0
            and "pool.kopfvirt.io/st-doomed" not in kubectl_json("get", "node", node)["metadata"]["labels"])


def test_two_vms_never_write_one_volume(vms):
    lun = {"name": "lun", "pool": {"pool": "iscsi", "volume": "unit:0:0:3"}}
    assert vms.apply(lab_guest("st-lun-a", runStrategy="Halted", disks=[lun])).returncode == 0
    second = vms.apply(lab_guest("st-lun-b", runStrategy="Halted", disks=[lun]))
    assert second.returncode != 0 and "denied the request" in second.stderr, second.stderr
    assert (f"spec.disks[0].pool: volume unit:0:0:3 of StoragePool iscsi is already attached writable by "
            f"VirtualMachine {vms.namespace}/st-lun-a") in second.stderr
    shared_read = vms.apply(lab_guest("st-lun-b", runStrategy="Halted", disks=[{**lun, "readOnly": True}]))
    assert shared_read.returncode == 0, shared_read.stderr  # reading beside a writer is the admin's call
    vms.delete("st-lun-b")
    vms.delete("st-lun-a")


@pytest.mark.parametrize("backend", ["nfs", "iscsi"])
def test_a_second_copy_of_a_running_vm_is_refused_by_its_disk_lease(vms, backend, tmp_path):
    """QEMU locks no network disk; libvirt's lock manager does, with the lease the agent
    gives every writable one, kept on storage all nodes share. Tried by hand: the running
    VM's own domain XML, started on the other node, is refused, and the guest goes on."""
    name = f"st-lease-{backend}"
    node, uid = writing_vm(vms, name, backend)
    xml = lab_exec(node, "virsh", "-c", "qemu:///system", "dumpxml", vms.domain(name)).stdout
    assert "<lease>" in xml, xml
    (tmp_path / "copy.xml").write_text(xml)
    second = lab_exec(OTHER[node], "virsh", "-c", "qemu:///system", "create", str(tmp_path / "copy.xml"),
                      check=False)
    assert second.returncode != 0 and "resource busy: Lockspace resource" in second.stderr, second.stderr
    assert_on_one_node(uid, node)
    before = disk_records(node, vms.domain(name))
    wait_for(f"{name} still writing", lambda: disk_records(node, vms.domain(name)) > before)
    vms.delete(name)


def test_a_storage_server_that_dies_is_named_on_the_vm_and_no_write_is_lost(vms):
    """tgtd killed under a guest writing to its LUN: the VM says which pool and why;
    `lab up` starts the server again, and the log on the LUN has every record written."""
    name = "st-outage"
    body = lab_guest(name, WRITER, disks=[{"name": "lun", "pool": {"pool": "iscsi", "volume": "unit:0:0:3"}}])
    assert vms.apply(body).returncode == 0
    node = vms.wait_phase(name, "Running", timeout=120)["status"]["nodeName"]
    wait_for(f"{name} writing", lambda: (disk_records(node, vms.domain(name)) or 0) >= 20, timeout=90)
    pid = procs.running(Lab(REPO), "storage-tgtd")
    assert pid, "the lab's iSCSI server does not run"
    os.kill(pid, signal.SIGKILL)
    down = vms.wait_condition(name, "StorageReady", "StoragePoolFailed", timeout=60)
    assert down["status"] == "False" and down["message"].startswith(f"StoragePool iscsi on {node}: "), down
    assert vms.get(name)["status"]["phase"] == "Running"
    run(*KOPFVIRT_LAB, "up", timeout=300)
    vms.wait_condition(name, "StorageReady", "StoragePoolsActive", timeout=60)
    entry = kubectl_json("get", "storagepool", "iscsi")["status"]["nodes"][node]
    assert entry["state"] == "Active" and "message" not in entry, entry
    written = disk_records(node, vms.domain(name))
    assert_log_intact(vms, name, node, written)
    vms.delete(name)


def test_a_deleted_vm_keeps_the_disks_its_policy_retains(vms):
    """diskDeletionPolicy Retain keeps the VM's own disk with what the guest wrote, in its
    pool, and says where; a disk marked Delete and the cloud-init media go."""
    name, root = "retains", "/var/lib/kopfvirt/pools/gluster"
    spec = {**BACKENDS["gluster"], "diskDeletionPolicy": "Retain"}
    spec["disks"] = spec["disks"] + [{"name": "scratch", "empty": {"size": "64Mi"}, "deletionPolicy": "Delete"}]
    assert vms.apply(lab_guest(name, WRITER, **spec)).returncode == 0
    node = vms.wait_phase(name, "Running", timeout=120)["status"]["nodeName"]
    wait_for(f"{name} writing to its disk", lambda: (disk_records(node, vms.domain(name)) or 0) >= 20, timeout=90)
    (directory,) = vm_disk_dirs(vms.namespace, name)
    vms.delete(name)
    path = f"{root}/vms/{vms.namespace}/{directory}"
    try:
        assert lab_exec("node-1", "ls", path).stdout.split() == ["root.qcow2"]
        info = json.loads(lab_exec("node-1", "qemu-img", "info", "--output=json", "-U", f"{path}/root.qcow2").stdout)
        assert info["backing-filename"].endswith("blank.qcow2") and info["actual-size"] > 0, info
        messages = [e["message"] for e in kubectl_json("-n", vms.namespace, "get", "events", "--field-selector",
                                                        f"involvedObject.name={name},reason=DisksRetained")["items"]]
        assert messages and "root.qcow2" in messages[0] and "StoragePool gluster" in messages[0] \
            and path in messages[0], messages
    finally:
        lab_exec("node-1", "rm", "-rf", path)
