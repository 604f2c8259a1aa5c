import yaml

from kopfvirt.core import reservation, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"


def test_golden(golden):
    vm = vmspec.parse("default", "demo", UID, {"memory": "128Mi", "cpu": {"cores": 2},
                                               "nodeSelector": {"kopfvirt.io/lab-node": "true"}})
    golden("reservation-pod.yaml", yaml.safe_dump(reservation.reservation_pod(vm), sort_keys=False))


def test_requests_are_vm_size_plus_overhead_and_guaranteed():
    vm = vmspec.parse("default", "demo", UID, {"memory": "1Gi", "cpu": {"cores": 3}})
    container = reservation.reservation_pod(vm)["spec"]["containers"][0]
    want = {"cpu": "3", "memory": f"{1024 + reservation.MEMORY_OVERHEAD_MIB}Mi"}
    assert container["resources"] == {"requests": want, "limits": want}


def test_owned_by_the_vm():
    vm = vmspec.parse("default", "demo", UID, {"memory": "1Gi"})
    owner, = reservation.reservation_pod(vm)["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("VirtualMachine", "demo", UID, True)
