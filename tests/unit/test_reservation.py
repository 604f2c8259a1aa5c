import pytest
import yaml

from kopfvirt.core import reservation, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"


def _vm(spec):
    return vmspec.parse("default", "demo", UID, spec)


def test_golden(golden):
    vm = _vm({"memory": {"size": "128Mi"}, "cpu": {"cores": 2, "model": "EPYC", "features": [{"name": "avx2"}]},
              "nodeSelector": {"kopfvirt.io/lab-node": "true"}, "priorityClassName": "vm-high",
              "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule"}],
              "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                  "nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "zone", "operator": "In", "values": ["a"]}]}]}}}})
    golden("reservation-pod.yaml", yaml.safe_dump(reservation.reservation_pod(vm), sort_keys=False))


def test_requests_are_vm_size_plus_overhead_and_guaranteed():
    vm = _vm({"memory": {"size": "1Gi"}, "cpu": {"sockets": 1, "cores": 3}})
    container = reservation.reservation_pod(vm)["spec"]["containers"][0]
    assert reservation.overhead_mib(vm) == 64 + 8 * 3 + 2
    want = {"cpu": "300m", "memory": f"{1024 + 64 + 24 + 2}Mi"}  # 3 vCPUs at the default ratio 10
    assert container["resources"] == {"requests": want, "limits": want}


@pytest.mark.parametrize("ratio, vcpus, want", [(1, 3, "3000m"), (10, 1, "100m"), (4, 3, "750m"), (3, 1, "334m"),
                                                (10000, 1, "1m")])
def test_cpu_allocation_ratio(ratio, vcpus, want):
    vm = _vm({"cpu": {"cores": vcpus}, "memory": {"size": "1Gi"}})
    settings = reservation.PodSettings(image="x:1", cpu_allocation_ratio=ratio)
    container = reservation.reservation_pod(vm, settings=settings)["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == want and container["image"] == "x:1"


def test_reservation_pods_pass_the_restricted_pod_security_profile():
    pod = reservation.reservation_pod(_vm({"memory": {"size": "1Gi"}}))
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] != 0 and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod["spec"] and "volumes" not in pod["spec"]


def test_hugepages_are_requested_as_hugepages():
    vm = _vm({"memory": {"size": "1Gi", "hugepages": {"pageSize": "2Mi"}}})
    requests = reservation.reservation_pod(vm)["spec"]["containers"][0]["resources"]["requests"]
    assert requests["hugepages-2Mi"] == "1024Mi" and requests["memory"] == "74Mi"


def test_owned_by_the_vm():
    owner, = reservation.reservation_pod(_vm({"memory": {"size": "1Gi"}}))["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("VirtualMachine", "demo", UID, True)


def test_host_cpu_modes_need_no_node_labels():
    assert reservation.node_requirements(_vm({"memory": {"size": "1Gi"}, "cpu": {"model": "host-model"}})) == {}


def test_a_vm_with_host_devices_is_pinned_to_their_node_within_its_own_affinity():
    term = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    vm = vmspec.parse("ns", "gpu", "u", {"memory": {"size": "64Mi"}, "affinity": {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}})
    terms = reservation.reservation_pod(vm, "node-2")["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{**term, "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["node-2"]}]}]
    plain = vmspec.parse("ns", "plain", "u", {"memory": {"size": "64Mi"}})
    assert "affinity" not in reservation.reservation_pod(plain)["spec"]


POLICY = reservation.PodPolicy()


@pytest.mark.parametrize("spec, field", [
    ({"priorityClassName": "system-node-critical"}, "spec.priorityClassName: system-node-critical is the cluster's"),
    ({"priorityClassName": "system-cluster-critical"}, "spec.priorityClassName"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations[0]: a toleration without a key tolerates every"),
    ({"tolerations": [{"key": "dedicated", "operator": "Exists"}, {"operator": "Exists", "effect": "NoExecute"}]},
     "spec.tolerations[1]"),
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
     "spec.tolerations[0].key: VMs may not tolerate node-role.kubernetes.io/control-plane"),
    ({"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}, "spec.tolerations[0].key"),
    ({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "namespaceSelector": {}, "labelSelector": {}}]}}},
     "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]: pods of other namespaces"),
    ({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "podAffinityTerm": {"topologyKey": "zone", "namespaces": ["default", "kube-system"]}}]}}},
     "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0]"),
])
def test_the_admins_policy_refuses_what_would_take_the_nodes_share(spec, field):
    refusal = reservation.policy_refusal(_vm({"memory": {"size": "128Mi"}, **spec}), POLICY)
    assert refusal and refusal.startswith(field), refusal


@pytest.mark.parametrize("spec", [
    {"priorityClassName": "vm-high"},
    {"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "vms", "effect": "NoSchedule"},
                     {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                      "tolerationSeconds": 30}]},
    {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "namespaces": ["default"], "labelSelector": {}}]}}},
])
def test_the_policy_lets_ordinary_placement_through(spec):
    assert reservation.policy_refusal(_vm({"memory": {"size": "128Mi"}, **spec}), POLICY) is None


def test_an_admin_may_narrow_priority_classes_and_widen_affinity():
    policy = reservation.PodPolicy(allowed_priority_classes=("vm-high",), pod_affinity_across_namespaces=True)
    assert "not allowed here (allowed: vm-high)" in reservation.policy_refusal(
        _vm({"memory": {"size": "128Mi"}, "priorityClassName": "vm-low"}), policy)
    assert reservation.policy_refusal(_vm({"memory": {"size": "128Mi"}, "affinity": {"podAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "zone", "namespaceSelector": {}}]}}}),
        policy) is None


def test_only_a_tolerations_own_fields_reach_the_pod():
    vm = _vm({"memory": {"size": "128Mi"}, "tolerations": [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule", "hostPath": "/", "privileged": True}]})
    assert reservation.reservation_pod(vm)["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]


def test_a_vms_cloud_init_secrets_are_read_only_volumes_of_its_pod():
    """The kubelet fetches them (no Kopfvirt process reads a Secret); one volume per Secret,
    whichever disks name it; only Secret volumes, which the restricted profile allows."""
    vm = _vm({"memory": {"size": "1Gi"}, "disks": [
        {"name": "seed", "cloudInit": {"secretRef": {"name": "web-seed"}}},
        {"name": "inline", "cloudInit": {"userData": "#cloud-config"}},
        {"name": "again", "cloudInit": {"secretRef": {"name": "web-seed"}}},
        {"name": "net", "cloudInit": {"secretRef": {"name": "a-net"}}}]})
    assert reservation.cloud_init_volumes(vm) == {"a-net": "cloud-init-0", "web-seed": "cloud-init-1"}
    spec = reservation.reservation_pod(vm)["spec"]
    assert spec["volumes"] == [{"name": "cloud-init-0", "secret": {"secretName": "a-net"}},
                               {"name": "cloud-init-1", "secret": {"secretName": "web-seed"}}]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "cloud-init-0", "mountPath": "/var/run/kopfvirt/cloud-init/a-net", "readOnly": True},
        {"name": "cloud-init-1", "mountPath": "/var/run/kopfvirt/cloud-init/web-seed", "readOnly": True}]
    assert reservation.cloud_init_path("/var/lib/kubelet", UID, "cloud-init-1") == \
        f"/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~secret/cloud-init-1"
