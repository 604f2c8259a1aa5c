"""Admission, fuzzed: VirtualMachine specs drawn from the CRD's schema (tests/specs.py),
hostile strings included. Each is refused with a message naming a field, or accepted, and
then its domain XML is well-formed, carries the user's text escaped, and passes
virt-xml-validate. Never a crash. The lab's API server judges a bounded number of specs of
every kind too, its CEL rules and our webhook together (tests/integration/test_admission_fuzz.py)."""

from __future__ import annotations

import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET

from hypothesis import HealthCheck, event, given, settings

from kopfvirt.core import disks, domainxml, reservation, vmspec

from ..specs import spec_of

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"
# KOPFVIRT_FUZZ_EXAMPLES=20000 for a long run.
FUZZ = settings(max_examples=int(os.environ.get("KOPFVIRT_FUZZ_EXAMPLES", 400)), deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


def _valid(xml: str, kind: str) -> None:
    ET.fromstring(xml)  # well-formed: no user text breaks out of its element
    with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
        f.write(xml)
        f.flush()
        result = subprocess.run(["virt-xml-validate", f.name, kind], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + xml


def _names_a_field(message: str) -> None:
    assert message.startswith("spec") and ":" in message, message


@FUZZ
@given(spec=spec_of("virtualmachine.yaml"))
def test_a_vm_spec_is_refused_naming_a_field_or_becomes_a_valid_domain(spec):
    try:
        vm = vmspec.parse("fuzz", "vm", UID, spec)
    except vmspec.SpecError as e:
        _names_a_field(str(e))
        event(f"refused: {str(e).split(':')[0]}")
        return
    event("accepted")
    refusal = reservation.policy_refusal(vm)
    if refusal:
        _names_a_field(refusal)
    volumes = {(p, v): f"/var/lib/kopfvirt/pools/{p}/{v}" for p, v in disks.named_volumes(vm)}
    plan = disks.plan(vm, disks.vm_dir("/var/lib/kopfvirt/pools/gluster", vm.namespace, vm.name, vm.uid), volumes,
                      own_pool_shared=True, lease_dir="/var/lib/kopfvirt/pools/gluster/.leases")
    hostdevs = [(h.name, f"0000:0{i % 10}:00.0") for i, h in enumerate(vm.spec.host_devices)]
    xml = domainxml.domain_xml(vm, plan, "qemu", {"default": "kopfvirt"}, hostdevs)
    _valid(xml, "domain")
    if vm.spec.kernel_boot and vm.spec.kernel_boot.cmdline:
        assert ET.fromstring(xml).findtext("os/cmdline") == vm.spec.kernel_boot.cmdline

