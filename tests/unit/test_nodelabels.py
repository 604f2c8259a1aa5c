from kopfvirt.core.nodelabels import node_labels, ours

CAPS = """<capabilities><host><cpu><arch>x86_64</arch><model>EPYC-Rome</model><vendor>AMD</vendor>
<feature name='x2apic'/><feature name='sse4a'/></cpu></host></capabilities>"""
DOMCAPS = """<domainCapabilities><domain>qemu</domain><cpu>
<mode name='host-model' supported='yes'><model>EPYC-Rome</model><feature policy='require' name='clzero'/>
<feature policy='disable' name='svm'/></mode>
<mode name='custom' supported='yes'><model usable='yes'>qemu64</model><model usable='no'>Skylake-Client</model>
<model usable='yes'>EPYC</model></mode></cpu></domainCapabilities>"""


def test_labels_follow_the_documented_scheme():
    labels = node_labels(CAPS, DOMCAPS, "qemu", False)
    assert labels["kopfvirt.io/virt-type"] == "qemu" and labels["kopfvirt.io/kvm-available"] == "false"
    assert labels["cpu.kopfvirt.io/vendor"] == "AMD" and labels["cpu.kopfvirt.io/host-model"] == "EPYC-Rome"
    assert {k for k in labels if k.startswith("cpu-feature.")} == {
        "cpu-feature.kopfvirt.io/x2apic", "cpu-feature.kopfvirt.io/sse4a", "cpu-feature.kopfvirt.io/clzero"}
    assert {k for k in labels if k.startswith("cpu-model.")} == {
        "cpu-model.kopfvirt.io/qemu64", "cpu-model.kopfvirt.io/EPYC"}
    assert all(ours(k) for k in labels) and not ours("kubernetes.io/hostname")
