import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from kopfvirt.core import domainxml, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"
CASES = {
    "minimal": {"memory": "64Mi"},
    "lab-guest": {"memory": "128Mi", "cpu": {"cores": 2},
                  "kernelBoot": {"kernel": "/var/lib/kopfvirt/storage/images/lab-guest/vmlinuz",
                                 "initrd": "/var/lib/kopfvirt/storage/images/lab-guest/initrd.img",
                                 "cmdline": "console=ttyS0 quiet"}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, golden):
    vm = vmspec.parse("default", case, UID, CASES[case])
    golden(f"domain-{case}.xml", domainxml.domain_xml(vm, "qemu"))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.skipif(not shutil.which("virt-xml-validate"), reason="libvirt-clients not installed")
def test_validates_against_libvirt_schema(case, tmp_path):
    vm = vmspec.parse("default", case, UID, CASES[case])
    path = tmp_path / "domain.xml"
    path.write_text(domainxml.domain_xml(vm, "kvm"))
    result = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_uuid_is_the_vm_uid_and_metadata_names_the_vm():
    vm = vmspec.parse("ns1", "web", UID, {"memory": "1Gi"})
    root = ET.fromstring(domainxml.domain_xml(vm))
    assert root.findtext("uuid") == UID
    assert root.findtext("name") == "ns1_web"
    owner = root.find(f"metadata/{{{domainxml.METADATA_NS}}}vm")
    assert owner.attrib == {"namespace": "ns1", "name": "web", "uid": UID}
    assert root.find("memory").text == str(2**20)


def test_unknown_virt_type_refused():
    vm = vmspec.parse("ns1", "web", UID, {"memory": "1Gi"})
    with pytest.raises(ValueError, match="virt_type"):
        domainxml.domain_xml(vm, "xen")
