"""The CPU rule on real libvirt data (tests/unit/data/cpu/README.md): labels list every
feature a guest can get, and a guest's CPU decides where it may move."""

from pathlib import Path

import pytest

from kopfvirt.core import cpu, migration, nodelabels, reservation, vmspec
from kopfvirt.core.migration import Node

DATA = Path(__file__).parent / "data" / "cpu"
UID = "11111111-2222-4333-8444-555555555555"


def read(name: str) -> str:
    return (DATA / name).read_text()


def capabilities(host_cpu: str) -> str:
    """cputestdata holds the <cpu> of capabilities' <host>; libvirt prints it there."""
    return f"<capabilities><host>{host_cpu}</host></capabilities>"


INTEL = nodelabels.node_labels(capabilities(read("x86_64-cpuid-Xeon-Platinum-8268-host.xml")),
                               read("intel-graniterapids.domcaps-expanded.xml"), "kvm", True)
AMD = nodelabels.node_labels(capabilities(read("x86_64-cpuid-EPYC-7502-32-Core-host.xml")),
                             read("amd-epyc-genoa.domcaps-expanded.xml"), "kvm", True)


def features(labels):
    return cpu.offered_features(labels)


def test_host_model_becomes_the_cpu_libvirt_expands():
    dom = read("this-machine.domcaps-qemu.xml")
    built = cpu.host_model_cpu(dom)
    assert built.startswith("<cpu mode=\"custom\" match=\"exact\"><model fallback=\"forbid\">EPYC</model>"
                            "<vendor>AMD</vendor>")
    assert cpu.guest_features(built) == cpu.guest_features(dom) and "sse2" not in cpu.guest_features(dom)
    expanded = cpu.guest_features(read("this-machine.host-model-qemu.expanded.xml"))
    assert {"sse2", "aes", "avx2"} <= expanded and cpu.guest_features(dom) <= expanded
    assert "vme" not in expanded  # policy='disable' in domcapabilities and in the expansion
    assert cpu.host_model_cpu("<domainCapabilities><cpu><mode name='host-model' supported='no'/></cpu>"
                              "</domainCapabilities>") is None


def test_labels_of_an_intel_and_an_amd_server():
    assert INTEL[cpu.VENDOR] == "Intel" and AMD[cpu.VENDOR] == "AMD"
    assert {"sse2", "avx2", "avx512f", "amx-tile", "vmx"} <= features(INTEL) and "sse4a" not in features(INTEL)
    assert {"sse2", "avx2", "avx512f", "sse4a", "svm", "clzero"} <= features(AMD) and "amx-tile" not in features(AMD)
    assert "fbsdp-no" not in features(INTEL)  # policy='disable' in the host-model
    models = lambda labels: {k.split("/", 1)[1] for k in labels if k.startswith(cpu.MODEL_PREFIX)}
    assert {"Haswell-noTSX", "Icelake-Server-noTSX", "Cascadelake-Server"} <= models(INTEL)
    assert "EPYC-Rome" not in models(INTEL) and "GraniteRapids" not in models(INTEL)  # usable='no'
    assert {"Haswell-noTSX", "EPYC-Rome", "EPYC-Genoa"} <= models(AMD) and "Cascadelake-Server" not in models(AMD)
    assert len(INTEL[cpu.HOST_DIGEST]) == 32 and INTEL[cpu.HOST_DIGEST] != AMD[cpu.HOST_DIGEST]
    assert all(len(k.split("/", 1)[1]) <= 63 for k in {**INTEL, **AMD})


def vm(**cpu_spec):
    return vmspec.parse("ns", "web", UID, {"memory": {"size": "1Gi"}, "cpu": cpu_spec})


def verdict(v, source_labels, target_labels):
    (out,) = [x for x in migration.node_verdicts(v, "src", [Node("src", source_labels), Node("dst", target_labels)])
              if x.node == "dst"]
    return out


@pytest.mark.parametrize("source, target", [(INTEL, AMD), (AMD, INTEL)])
def test_a_named_model_both_offer_moves_both_ways(source, target):
    assert verdict(vm(model="Haswell-noTSX", features=[{"name": "avx2"}]), source, target).fit
    refused = verdict(vm(model="EPYC-Rome"), AMD, INTEL)
    assert refused.reason == "CPUIncompatible" and "CPU model EPYC-Rome" in refused.message


def test_host_model_needs_every_feature_of_the_source():
    to_amd = verdict(vm(model="host-model"), INTEL, AMD)
    assert to_amd.reason == "CPUIncompatible" and "amx-tile" in to_amd.message and "more" in to_amd.message
    assert "(the host-model CPU of its source, Cascadelake-Server)" in to_amd.message
    to_intel = verdict(vm(model="host-model"), AMD, INTEL)
    assert to_intel.reason == "CPUIncompatible" and "sse4a" in to_intel.message and "clzero" in to_intel.message
    assert verdict(vm(model="host-model"), AMD, dict(AMD)).fit


def test_host_passthrough_needs_an_identical_cpu():
    for source, target in ((INTEL, AMD), (AMD, INTEL)):
        refused = verdict(vm(model="host-passthrough"), source, target)
        assert refused.reason == "CPUIncompatible" and refused.message.startswith(
            "host-passthrough needs an identical CPU: vendor")
    assert "lacks CPU features sse4a" in verdict(vm(model="host-passthrough"), AMD,
                                                  {k: v for k, v in AMD.items() if k != cpu.FEATURE_PREFIX + "sse4a"}
                                                  ).message
    other_host = {**AMD, cpu.HOST_DIGEST: "0" * 32}
    assert verdict(vm(model="host-passthrough"), AMD, other_host).message.endswith(f"differ ({cpu.HOST_DIGEST})")
    assert verdict(vm(model="host-passthrough"), AMD, dict(AMD)).fit


def test_a_vm_requiring_sse2_on_qemu64_is_placeable():
    """sse2 belongs to the qemu64 model; it shows only in libvirt's expansion."""
    wanted = reservation.node_requirements(vm(features=[{"name": "sse2"}]))
    this_machine = nodelabels.node_labels(read("this-machine.capabilities.xml"), read("this-machine.domcaps-qemu.xml"),
                                          "qemu", False, expanded_cpu=read("this-machine.host-model-qemu.expanded.xml"))
    for labels in (this_machine, INTEL, AMD):
        assert all(labels.get(k) == v for k, v in wanted.items()), wanted
    unexpanded = nodelabels.node_labels(read("this-machine.capabilities.xml"), read("this-machine.domcaps-qemu.xml"),
                                        "qemu", False)
    assert cpu.FEATURE_PREFIX + "sse2" not in unexpanded
