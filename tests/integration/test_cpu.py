"""The CPU rule on real nodes: labels carry every feature a guest can be given there (the
host-model CPU as libvirt expands it), so a VM requiring a flag its model includes runs."""

from .conftest import domains_of, kubectl, kubectl_json, lab_exec, lab_guest, wait_for


def test_labels_carry_the_models_own_features(lab):
    for node in ("node-1", "node-2"):
        labels = kubectl_json("get", "node", node)["metadata"]["labels"]
        features = {k.split("/", 1)[1] for k in labels if k.startswith("cpu-feature.kopfvirt.io/")}
        assert {"sse2", "sse4.2", "popcnt"} <= features, sorted(features)
        assert labels.get("cpu.kopfvirt.io/host-cpu-digest")
    assert "cpu-feature.kopfvirt.io/sse4a" not in kubectl_json("get", "node", "node-2")["metadata"]["labels"]


def test_an_admin_hides_a_flag_with_an_annotation_and_gives_it_back(lab):
    def offered() -> bool:
        return "cpu-feature.kopfvirt.io/popcnt" in kubectl_json("get", "node", "node-1")["metadata"]["labels"]
    assert offered()
    try:
        kubectl("annotate", "node", "node-1", "kopfvirt.io/hide-cpu-features=popcnt")
        wait_for("node-1's popcnt label gone", lambda: not offered(), timeout=60)
    finally:
        kubectl("annotate", "node", "node-1", "kopfvirt.io/hide-cpu-features-")
    wait_for("node-1's popcnt label back", offered, timeout=60)


def test_a_vm_requiring_a_flag_of_its_model_runs(vms):
    body = lab_guest("cpu-sse2", cpu={"cores": 1, "model": "qemu64", "features": [{"name": "sse2"}]})
    assert vms.apply(body).returncode == 0, body
    vm = vms.wait_phase("cpu-sse2", "Running", timeout=120)
    node, uid = vm["status"]["nodeName"], vm["metadata"]["uid"]
    assert domains_of(uid) == {node: "running"}
    xml = lab_exec(node, "virsh", "-c", "qemu:///system", "dumpxml", uid).stdout
    assert "<model fallback='forbid'>qemu64</model>" in xml and "name='sse2'" in xml, xml
    vms.delete("cpu-sse2")
