"""`kubectl kopfvirt create vm`: the manifest its flags make, which the operator's own spec
parser accepts, and refusals that name the flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kopfvirt import __version__
from kopfvirt.core import vmspec
from kopfvirt.vmmanifest import FlagError, vm_manifest

PLUGIN = str(Path(sys.executable).parent / "kubectl-kopfvirt")


def plugin(*args: str) -> subprocess.CompletedProcess:
    # No cluster: create and version --client must not need a kubeconfig.
    return subprocess.run([PLUGIN, "--kubeconfig", "/nonexistent", *args], capture_output=True, text=True,
                          timeout=60)


def test_the_plugin_prints_a_manifest_the_operator_accepts():
    out = plugin("-n", "team-a", "create", "vm", "web", "--cpu", "2", "--memory", "2Gi",
                 "--image", "lab-images/blank.qcow2", "--empty-disk", "data:10Gi", "--disk", "logs:shared/logs.qcow2",
                 "--cloud-init-secret", "web-init", "--interface", "eth0", "--vnc", "--node-selector", "zone=a",
                 "--eviction-strategy", "LiveMigrate")
    assert out.returncode == 0, out.stderr
    vm = yaml.safe_load(out.stdout)
    assert vm["apiVersion"] == "kopfvirt.io/v1alpha1" and vm["kind"] == "VirtualMachine"
    assert vm["metadata"] == {"name": "web", "namespace": "team-a"}
    assert vm["spec"]["disks"] == [
        {"name": "root", "image": {"pool": "lab-images", "volume": "blank.qcow2"}},
        {"name": "logs", "pool": {"pool": "shared", "volume": "logs.qcow2"}},
        {"name": "data", "empty": {"size": "10Gi"}},
        {"name": "cloud-init", "cloudInit": {"secretRef": {"name": "web-init"}}}]
    parsed = vmspec.parse("team-a", "web", "u", vm["spec"])
    assert (parsed.spec.cpu.cores, parsed.memory_bytes, parsed.spec.console.vnc) == (2, 2 * 2**30, True)
    assert parsed.spec.node_selector == {"zone": "a"} and parsed.spec.eviction_strategy == "LiveMigrate"


def test_a_kernel_boot_as_the_lab_guest():
    vm = vm_manifest("guest", kernel="lab-images/lab-guest-vmlinuz", initrd="lab-images/lab-guest-initrd.img",
                     cmdline="console=ttyS0", memory="128Mi")
    assert vm["spec"]["kernelBoot"] == {"pool": "lab-images", "kernel": "lab-guest-vmlinuz",
                                        "initrd": "lab-guest-initrd.img", "cmdline": "console=ttyS0"}
    assert "namespace" not in vm["metadata"]  # kubectl apply puts it in its own


@pytest.mark.parametrize("args, named", [
    ({"memory": "lots"}, "--memory: spec.memory.size"),
    ({"memory": "1Mi"}, "--memory: spec.memory.size: must be at least 16Mi"),
    ({"cpu": 0}, "--cpu: spec.cpu.cores"),
    ({"run_strategy": "Sometimes"}, "--run-strategy: spec.runStrategy"),
    ({"image": "/etc/shadow"}, "--image '/etc/shadow': give POOL/VOLUME"),
    ({"image": "pool/../../etc/shadow"}, "spec.disks[0].image.volume"),
    ({"empty_disks": ["data"]}, "--empty-disk 'data': give NAME:SIZE"),
    ({"empty_disks": ["Data:1Gi"]}, "spec.disks[0].name"),
    ({"initrd": "p/i"}, "--initrd and --cmdline need --kernel"),
    ({"kernel": "a/k", "initrd": "b/i"}, "--initrd 'b/i': the initrd is a volume of the kernel's pool 'a'"),
    ({"node_selector": ["zone"]}, "--node-selector 'zone': give KEY=VALUE"),
    ({"interfaces": ["eth0", "eth0"]}, "spec.interfaces"),
])
def test_a_bad_flag_is_refused_naming_it(args, named):
    with pytest.raises(FlagError) as e:
        vm_manifest("web", **args)
    assert named in str(e.value)


def test_refusals_reach_the_user_on_stderr():
    out = plugin("create", "vm", "web", "--memory", "lots")
    assert out.returncode == 1 and out.stdout == "" and "error: --memory: spec.memory.size" in out.stderr
    out = plugin("create", "vm", "Web")
    assert out.returncode == 1 and "name 'Web'" in out.stderr


def test_the_client_version_needs_no_cluster():
    out = plugin("version", "--client")
    assert out.returncode == 0 and out.stdout == f"Client Version: {__version__}\n"
