from pathlib import Path

from kopfvirt.core.nodelabels import node_labels, ours

DATA = Path(__file__).parent / "data" / "cpu"
CAPS, DOMCAPS, EXPANDED = ((DATA / f).read_text() for f in (
    "this-machine.capabilities.xml", "this-machine.domcaps-qemu.xml", "this-machine.host-model-qemu.expanded.xml"))


def test_labels_follow_the_documented_scheme():
    """This machine's libvirt 9.0: an Intel host CPU; TCG's host-model (EPYC, expanded)."""
    labels = node_labels(CAPS, DOMCAPS, "qemu", False, expanded_cpu=EXPANDED)
    assert labels["kopfvirt.io/virt-type"] == "qemu" and labels["kopfvirt.io/kvm-available"] == "false"
    assert labels["cpu.kopfvirt.io/vendor"] == "Intel" and labels["cpu.kopfvirt.io/host-model"] == "Broadwell"
    assert len(labels["cpu.kopfvirt.io/host-cpu-digest"]) == 32
    features = {k.split("/", 1)[1] for k in labels if k.startswith("cpu-feature.")}
    assert {"sse2", "aes", "avx2", "sse4a", "svm", "3dnow"} <= features  # the model's own and the listed ones
    assert not {"vme", "rdseed", "sha-ni"} & features  # policy='disable'
    assert not {"avx512f", "amx-tile"} & features  # the host's, which TCG cannot give a guest
    models = {k.split("/", 1)[1] for k in labels if k.startswith("cpu-model.")}
    assert {"qemu64", "Penryn"} <= models and "EPYC" not in models  # usable="no" under TCG
    assert all(ours(k) for k in labels) and not ours("kubernetes.io/hostname")


def test_hidden_features_stay_out_and_the_digest_stays():
    shown, hidden = (node_labels(CAPS, DOMCAPS, "qemu", False, hidden_features=h, expanded_cpu=EXPANDED)
                     for h in ((), ("sse4a",)))
    assert "cpu-feature.kopfvirt.io/sse4a" in shown and "cpu-feature.kopfvirt.io/sse4a" not in hidden
    assert shown["cpu.kopfvirt.io/host-cpu-digest"] == hidden["cpu.kopfvirt.io/host-cpu-digest"]


def test_without_libvirts_expansion_only_the_listed_features():
    labels = node_labels(CAPS, DOMCAPS, "qemu", False)
    assert "cpu-feature.kopfvirt.io/sse4a" not in labels and "cpu-feature.kopfvirt.io/3dnow" in labels


def test_an_admins_annotation_hides_flags_beside_the_agents_own():
    from kopfvirt.core.nodelabels import hidden_features
    assert hidden_features({"kopfvirt.io/hide-cpu-features": "sse4a, avx512f,,"}) == ("sse4a", "avx512f")
    assert hidden_features({"kopfvirt.io/hide-cpu-features": "sse4a"}, ("clzero", "sse4a")) == ("clzero", "sse4a")
    assert hidden_features(None) == () and hidden_features({"other": "x"}, ("clzero",)) == ("clzero",)
