"""Specs that cannot run are reported with a condition naming the cause, and leave
nothing behind: no pod, no domain, no disk."""

import pytest

from .conftest import domains_of, kubectl, lab_exec, lab_guest, vm_disk_dirs, wait_for


def _nothing_left(vms, name, uid):
    assert kubectl("-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0
    assert domains_of(uid) == {}
    assert vm_disk_dirs(vms.namespace, name) == []


@pytest.mark.parametrize("name,change,reason,words", [
    ("badflag", {"cpu": {"features": [{"name": "no-such-flag"}]}}, "CPUFeaturesUnavailable", "no-such-flag"),
])
def test_unrunnable_spec_is_reported_and_leaves_nothing(vms, name, change, reason, words):
    body = lab_guest(name)
    body["spec"].update(change)
    assert vms.apply(body).returncode == 0
    condition = vms.wait_condition(name, "Ready", reason)
    assert words in condition["message"] and condition["status"] == "False"
    vm = vms.get(name)
    assert vm["status"]["phase"] == "Pending"
    _nothing_left(vms, name, vm["metadata"]["uid"])
    vms.delete(name)


def test_vm_too_big_for_any_node_stays_pending_and_says_why(vms):
    assert vms.apply(lab_guest("huge", memory={"size": "64Gi"})).returncode == 0
    condition = vms.wait_condition("huge", "Scheduled", "Unschedulable")
    assert "Insufficient memory" in condition["message"]
    vm = vms.get("huge")
    assert vm["status"]["phase"] == "Pending" and domains_of(vm["metadata"]["uid"]) == {}
    vms.delete("huge")
    wait_for("the pending pod to go", lambda: kubectl(
        "-n", vms.namespace, "get", "pod", "kopfvirt-huge", check=False).returncode != 0)


def test_missing_volume_in_an_existing_pool_is_reported(vms):
    body = lab_guest("novol")
    body["spec"]["disks"] = [{"name": "data", "readOnly": True, "pool": {"pool": "lab-images", "volume": "absent"}}]
    assert vms.apply(body).returncode == 0
    condition = vms.wait_condition("novol", "Ready", "VolumeNotFound")
    assert "volume absent is not in StoragePool lab-images" in condition["message"]
    assert domains_of(vms.get("novol")["metadata"]["uid"]) == {}
    vms.delete("novol")


def test_a_vm_whose_cloud_init_secret_is_missing_waits_for_it_then_runs_with_it(vms):
    """No Kopfvirt process reads Secrets: the kubelet mounts the one a cloud-init disk names
    into the VM's pod, and waits while it does not exist, as for any pod. The VM says so,
    and starts with its data once it is made."""
    body = lab_guest("nosecret")
    body["spec"]["disks"] = [{"name": "seed", "cloudInit": {"secretRef": {"name": "late-seed"}}}]
    assert vms.apply(body).returncode == 0
    cond = vms.wait_condition("nosecret", "Ready", "CloudInitUnavailable", timeout=90)
    assert "waiting for the kubelet to mount Secret late-seed into pod kopfvirt-nosecret" in cond["message"], cond
    vm = vms.get("nosecret")
    assert vm["status"]["phase"] == "Pending" and domains_of(vm["metadata"]["uid"]) == {}
    marker = f"late-seed-{vms.namespace}"
    kubectl("-n", vms.namespace, "create", "secret", "generic", "late-seed",
            f"--from-literal=userdata=#cloud-config\nhostname: {marker}\n")
    vm = vms.wait_phase("nosecret", "Running", timeout=180)  # the kubelet retries its mount with a back-off
    (vm_dir,) = vm_disk_dirs(vms.namespace, "nosecret")
    iso = f"/var/lib/kopfvirt/pools/gluster/vms/{vms.namespace}/{vm_dir}/seed-cidata.iso"
    assert lab_exec(vm["status"]["nodeName"], "grep", "-c", marker, iso).stdout.strip() != "0"
    vms.delete("nosecret")
