import pytest

from kopfvirt.core import quantity, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"


def parse(spec):
    return vmspec.parse("default", "demo", UID, spec)


@pytest.mark.parametrize("text,value", [("128Mi", 128 * 2**20), ("1Gi", 2**30), ("1G", 10**9),
                                        ("512", 512), ("1.5Gi", 3 * 2**29), ("2k", 2000)])
def test_quantities(text, value):
    assert quantity.to_bytes(text) == value


def test_quantity_refuses_garbage():
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.to_bytes("lots")


def test_defaults():
    vm = parse({"memory": "64Mi"})
    assert (vm.run_strategy, vm.cores, vm.memory_bytes, vm.kernel_boot) == ("Always", 1, 64 * 2**20, None)
    assert vm.domain_name == "default_demo"


@pytest.mark.parametrize("spec,field", [
    ({}, "spec.memory: is required"),
    ({"memory": "8Mi"}, "spec.memory: must be at least 16Mi"),
    ({"memory": "lots"}, "spec.memory: 'lots' is not a quantity"),
    ({"memory": "64Mi", "cpu": {"cores": 0}}, "spec.cpu.cores: must be a whole number"),
    ({"memory": "64Mi", "runStrategy": "Sometimes"}, "spec.runStrategy: must be one of"),
    ({"memory": "64Mi", "kernelBoot": {"initrd": "/i"}}, "spec.kernelBoot.kernel: is required"),
])
def test_refusals_name_the_field(spec, field):
    with pytest.raises(vmspec.SpecError) as e:
        parse(spec)
    assert str(e.value).startswith(field)
