import subprocess

import pytest

from kopfvirt.api.schema import from_dict
from kopfvirt.api.virtualmachine import PoolDefinition
from kopfvirt.core.pools import pool_xml

CASES = {
    "dir": {"type": "dir", "path": "/var/lib/kopfvirt/storage/extra"},
    "netfs-nfs": {"type": "netfs", "host": "nfs.example", "sourcePath": "/export/vms", "path": "/mnt/vms",
                  "format": "nfs"},
    "netfs-gluster": {"type": "netfs", "host": "gluster.example", "sourcePath": "vmvol", "path": "/mnt/gluster",
                      "format": "glusterfs"},
    "iscsi": {"type": "iscsi", "host": "san.example", "target": "iqn.2026-01.io.kopfvirt:disks"},
    "rbd": {"type": "rbd", "host": "mon1.example", "sourceName": "vms"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, golden):
    golden(f"pool-{case}.xml", pool_xml("shared", from_dict(PoolDefinition, CASES[case], "define")))


@pytest.mark.parametrize("case", sorted(CASES))
def test_validates_against_libvirt_schema(case, tmp_path):
    path = tmp_path / "pool.xml"
    path.write_text(pool_xml("shared", from_dict(PoolDefinition, CASES[case], "define")))
    result = subprocess.run(["virt-xml-validate", str(path), "storagepool"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_iqn_is_checked():
    with pytest.raises(ValueError, match=r"define\.target: 'disks' does not match"):
        from_dict(PoolDefinition, {"type": "iscsi", "host": "h", "target": "disks"}, "define")
