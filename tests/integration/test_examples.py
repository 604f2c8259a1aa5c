"""Every example in examples/ gives a guest that boots, and deleting it leaves nothing."""

from pathlib import Path

import pytest
import yaml

from .conftest import REPO, domains_of, heartbeat, kubectl, vm_disk_dirs, wait_for

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# Where the lab's file pools keep VMs' own disks (lab/storagepools.yaml); gluster is the default.
POOL_ROOTS = {"gluster": "/var/lib/kopfvirt/pools/gluster", "nfs": "nfs://198.18.0.5/export"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_boots_and_leaves_nothing(vms, path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    vm = next(d for d in docs if d["kind"] == "VirtualMachine")
    name = vm["metadata"]["name"]
    kubectl("-n", vms.namespace, "apply", "-f", str(path))
    vm = vms.wait_phase(name, "Running", timeout=120)
    node, uid = vm["status"]["nodeName"], vm["metadata"]["uid"]
    first = wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)), timeout=60)
    wait_for(f"{name} to keep counting", lambda: heartbeat(node, vms.domain(name)) > first)
    own_disks = any("pool" not in d for d in vm["spec"].get("disks", []))
    pool_root = POOL_ROOTS[vm["spec"].get("storagePool", "gluster")]
    assert bool(vm_disk_dirs(vms.namespace, name, pool_root)) == own_disks  # in its pool, on shared storage
    kubectl("-n", vms.namespace, "delete", "-f", str(path), "--wait=true", "--timeout=90s")
    assert domains_of(uid) == {}
    assert vm_disk_dirs(vms.namespace, name, pool_root) == [], "the VM's disks outlived it"
    wait_for("the reservation pod to go", lambda: kubectl(
        "-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0)
