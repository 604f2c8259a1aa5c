"""The lab's storage host: GlusterFS, iSCSI and NFS servers that both nodes reach from user
space (no kernel NFS client or iSCSI initiator here), as docs/storage.md describes."""

from __future__ import annotations

import uuid
from xml.etree import ElementTree

import pytest

from kopfvirt_lab import storage
from kopfvirt_lab.layout import GLUSTER_VOLUME, ISCSI_LUNS, POOLS_DIR, STORAGE_DATA

from .conftest import KOPFVIRT_LAB, lab_exec, run

NODES = ("node-1", "node-2")


def virsh(node: str, *args: str, check: bool = True):
    return lab_exec(node, "virsh", "-c", "qemu:///system", *args, check=check)


@pytest.fixture
def uid() -> str:
    return f"it-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def pools(lab, tmp_path, uid):
    """Make transient pools on a node from XML; every one is destroyed afterwards."""
    made = []

    def create(node: str, xml: str) -> None:
        path = tmp_path / f"pool-{len(made)}.xml"
        path.write_text(xml)
        virsh(node, "pool-create", str(path), "--build")
        made.append((node, ElementTree.fromstring(xml).findtext("name")))

    yield create
    for node, name in made:
        virsh(node, "pool-destroy", name, check=False)
    if (POOLS_DIR / uid).is_dir():
        (POOLS_DIR / uid).rmdir()


def gluster_pool(node: str, pools, uid: str) -> str:
    """The node's pool on the lab's volume: the lab's own where it has one (libvirt refuses a
    second pool of the same source), else a transient one."""
    for name in virsh(node, "pool-list", "--name").stdout.split():
        source = ElementTree.fromstring(virsh(node, "pool-dumpxml", name).stdout).find("source")
        if source.find("format[@type='glusterfs']") is not None and \
                source.find(f"dir[@path='{GLUSTER_VOLUME}']") is not None:
            return name
    pools(node, storage.gluster_pool_xml(uid, target=POOLS_DIR / uid))
    return uid


def test_gluster_volume_is_shared_by_both_nodes(pools, uid):
    one, two = (gluster_pool(node, pools, uid) for node in NODES)
    virsh("node-1", "vol-create-as", one, f"{uid}.qcow2", "16M", "--format", "qcow2")
    try:
        virsh("node-2", "pool-refresh", two)
        path = virsh("node-2", "vol-path", f"{uid}.qcow2", "--pool", two).stdout.strip()
        mount = lab_exec("node-2", "findmnt", "-n", "-o", "FSTYPE", "--target", path).stdout.strip()
        assert mount == "fuse.glusterfs"  # what libvirt counts as shared storage
        assert "file format: qcow2" in lab_exec("node-2", "qemu-img", "info", path).stdout
    finally:
        virsh("node-1", "vol-delete", f"{uid}.qcow2", "--pool", one, check=False)


def test_iscsi_luns_are_volumes_of_an_iscsi_direct_pool(pools, uid):
    for node in NODES:
        pools(node, storage.iscsi_direct_pool_xml(uid, node))
        volumes = virsh(node, "vol-list", uid, "--details").stdout
        for lun in range(1, ISCSI_LUNS + 1):
            assert f"unit:0:0:{lun} " in volumes and "1024.00 MiB" in volumes, volumes


def test_image_made_over_nfs_by_one_node_is_read_by_the_other(lab, uid):
    url = storage.nfs_url(f"{uid}.qcow2")
    try:
        lab_exec("node-1", "qemu-img", "create", "-f", "qcow2", url, "16M")
        lab_exec("node-1", "qemu-io", "-c", "write -P 0x5a 0 64k", url)
        read = lab_exec("node-2", "qemu-io", "-c", "read -P 0x5a 0 64k", url).stdout
        assert "read 65536/65536 bytes" in read
    finally:
        (STORAGE_DATA / "nfs/export" / f"{uid}.qcow2").unlink(missing_ok=True)


def test_a_domain_takes_a_disk_of_each_backend(pools, uid, tmp_path):
    gluster = gluster_pool("node-1", pools, uid)
    virsh("node-1", "vol-create-as", gluster, f"{uid}.qcow2", "16M", "--format", "qcow2")
    lab_exec("node-1", "qemu-img", "create", "-f", "qcow2", storage.nfs_url(f"{uid}.qcow2"), "16M")
    iscsi = f"{uid}-iscsi"
    pools("node-1", storage.iscsi_direct_pool_xml(iscsi, "node-1"))
    domain = tmp_path / "domain.xml"
    domain.write_text(f"""<domain type='qemu'>
  <name>{uid}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
      <source pool='{gluster}' volume='{uid}.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='volume' device='disk'><driver name='qemu' type='raw'/>
      <source pool='{iscsi}' volume='unit:0:0:3'/><target dev='vdb' bus='virtio'/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='qcow2'/>
      <source protocol='nfs' name='/export/{uid}.qcow2'><host name='{storage.STORAGE_IP}'/></source>
      <target dev='vdc' bus='virtio'/></disk>
  </devices>
</domain>
""")
    try:
        virsh("node-1", "create", str(domain))
        disks = virsh("node-1", "domblklist", uid).stdout
        assert f"{uid}.qcow2" in disks and "unit:0:0:3" in disks and f"/export/{uid}.qcow2" in disks
    finally:
        virsh("node-1", "destroy", uid, check=False)
        virsh("node-1", "vol-delete", f"{uid}.qcow2", "--pool", gluster, check=False)
        (STORAGE_DATA / "nfs/export" / f"{uid}.qcow2").unlink(missing_ok=True)


def test_lab_status_lists_the_storage_servers(lab):
    out = run(*KOPFVIRT_LAB, "status", check=False).stdout
    assert f"storage servers ({storage.STORAGE_IP}):" in out
    for server, port in storage.PORTS.items():
        line = next(line for line in out.splitlines() if line.split()[:1] == [server])
        assert "running" in line and f"{storage.STORAGE_IP}:{port} reachable" in line, line
