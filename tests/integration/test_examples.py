"""Every example in examples/ gives a guest that boots, and deleting it leaves nothing."""

from pathlib import Path

import pytest
import yaml

from kopfvirt.lab.layout import SHARED_STORAGE

from .conftest import REPO, domains_of, heartbeat, kubectl, lab_exec, wait_for

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_boots_and_leaves_nothing(vms, path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    vm = next(d for d in docs if d["kind"] == "VirtualMachine")
    name = vm["metadata"]["name"]
    for d in vm["spec"].get("disks", []):  # the pool example names a volume to create first
        if "pool" in d:
            lab_exec("node-1", "virsh", "-c", "qemu:///system", "vol-create-as", d["pool"]["pool"],
                     d["pool"]["volume"], "64M", "--format", "raw", check=False)
    kubectl("-n", vms.namespace, "apply", "-f", str(path))
    vm = vms.wait_phase(name, "Running", timeout=120)
    node, uid = vm["status"]["nodeName"], vm["metadata"]["uid"]
    first = wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)), timeout=60)
    wait_for(f"{name} to keep counting", lambda: heartbeat(node, vms.domain(name)) > first)
    vm_dir = next((SHARED_STORAGE / "vms" / vms.namespace).glob(f"{name}-*"), None)
    kubectl("-n", vms.namespace, "delete", "-f", str(path), "--wait=true", "--timeout=90s")
    assert domains_of(uid) == {}
    assert vm_dir is None or not vm_dir.exists(), f"{vm_dir} outlived its VM"
    wait_for("the reservation pod to go", lambda: kubectl(
        "-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0)
    for d in vm.get("spec", {}).get("disks", []):
        if "pool" in d:
            lab_exec("node-1", "virsh", "-c", "qemu:///system", "vol-delete", d["pool"]["volume"],
                     "--pool", d["pool"]["pool"], check=False)
