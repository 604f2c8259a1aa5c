"""Lab nodes: each its own libvirtd, reachable from the others, sharing one storage path."""

import uuid

from kopfvirt_lab.layout import SHARED_STORAGE, TLS_DIR

from .conftest import lab_exec


def test_sysinfo_answers_from_each_nodes_own_libvirtd(lab):
    for node in ("node-1", "node-2"):
        out = lab_exec(node, "virsh", "-c", "qemu:///system", "sysinfo").stdout
        assert f"<entry name='serial'>{node}</entry>" in out


def test_host_uuids_differ(lab):
    uuids = {lab_exec(n, "virsh", "-c", "qemu:///system", "capabilities").stdout.split("<uuid>")[1][:36]
             for n in ("node-1", "node-2")}
    assert len(uuids) == 2


def test_nodes_reach_each_others_libvirtd(lab):
    out = lab_exec("node-1", "virsh", "-c", f"qemu+tls://198.18.0.12/system?pkipath={TLS_DIR}", "sysinfo").stdout
    assert "<entry name='serial'>node-2</entry>" in out


def test_storage_is_shared_at_one_path(lab):
    marker = SHARED_STORAGE / f"probe-{uuid.uuid4().hex[:8]}"
    try:
        lab_exec("node-1", "sh", "-c", f"echo from-node-1 > {marker}")
        assert lab_exec("node-2", "cat", str(marker)).stdout.strip() == "from-node-1"
    finally:
        marker.unlink(missing_ok=True)


def test_libvirt_state_is_private_per_node(lab):
    name = f"probe-{uuid.uuid4().hex[:8]}"
    xml = f"<domain type='qemu'><name>{name}</name><memory>16384</memory><os><type>hvm</type></os></domain>"
    lab_exec("node-1", "sh", "-c", f"echo \"{xml}\" > /tmp/{name}.xml && "
             f"virsh -c qemu:///system define /tmp/{name}.xml && rm /tmp/{name}.xml")
    try:
        assert name in lab_exec("node-1", "virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
        assert name not in lab_exec("node-2", "virsh", "-c", "qemu:///system", "list", "--all", "--name").stdout
    finally:
        lab_exec("node-1", "virsh", "-c", "qemu:///system", "undefine", name, check=False)
