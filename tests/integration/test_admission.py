"""Bad specs are refused by the API server, naming the field, and leave nothing behind."""

import pytest

from .conftest import kubectl, lab_guest


@pytest.mark.parametrize("change,expected", [
    ({"memory": {"size": "8Mi"}}, "spec.memory.size: Invalid value: \"8Mi\": must be at least 16Mi"),
    ({"memory": {"size": "lots"}}, "spec.memory.size: Invalid value: \"lots\""),
    ({"disks": [{"name": "a", "empty": {"size": "1Gi"}, "target": "vdb"},
                {"name": "b", "empty": {"size": "1Gi"}, "target": "vdb"}]},
     "spec.disks: Invalid value: two disks have the same target"),
    ({"disks": [{"name": "a"}]}, "must have exactly one of image, pool, empty or cloudInit"),
    ({"disks": [{"name": "a", "cloudInit": {}}]}, "spec.disks[0].cloudInit: Invalid value: needs userData or secretRef"),
    ({"cpu": {"cores": 0}}, "spec.cpu.cores: Invalid value: 0"),
    ({"runStrategy": "Sometimes"}, "spec.runStrategy: Unsupported value: \"Sometimes\""),
    ({"kernelBoot": {"initrd": "/x"}}, "spec.kernelBoot.kernel: Required value"),
])
def test_invalid_spec_is_refused_naming_the_field(vms, change, expected):
    body = lab_guest("bad")
    body["spec"].update(change)
    result = vms.apply(body)
    assert result.returncode != 0
    assert expected in result.stderr
    assert vms.get("bad") is None
    assert kubectl("-n", vms.namespace, "get", "pod", "kopfvirt-bad", check=False).returncode != 0


def test_missing_memory_is_refused(vms):
    body = lab_guest("nomem")
    del body["spec"]["memory"]
    result = vms.apply(body)
    assert result.returncode != 0 and "spec.memory: Required value" in result.stderr


@pytest.mark.parametrize("change,expected", [
    ({"memory": {"size": "65Mi", "hugepages": {"pageSize": "2Mi"}}},
     "spec.memory.size: 65Mi is not a multiple of the 2Mi hugepage size"),
    ({"cpu": {"sockets": 16, "cores": 64}}, "spec.cpu: sockets x cores x threads is 1024, more than 256"),
    ({"cpu": {"model": "Bogus-CPU"}}, "spec.cpu.model: no node offers CPU model Bogus-CPU"),
])
def test_webhook_refuses_what_the_schema_cannot_say(vms, change, expected):
    body = lab_guest("webhooked")
    body["spec"].update(change)
    result = vms.apply(body)
    assert result.returncode != 0
    assert "denied the request" in result.stderr and expected in result.stderr, result.stderr
    assert vms.get("webhooked") is None


@pytest.mark.parametrize("define,expected", [
    ({"type": "netfs", "host": "nfs.example", "sourcePath": "/export", "path": "/mnt/x"},
     "netfs needs host, sourcePath, path and format"),
    ({"type": "iscsi", "host": "san.example"}, "iscsi needs host and target"),
    ({"type": "rbd", "sourceName": "vms"}, "rbd needs host and sourceName"),
    ({"type": "dir"}, "dir needs path"),
    ({"type": "iscsi", "host": "san.example", "target": "disks"}, "spec.disks[0].pool.define.target: Invalid value"),
])
def test_pool_descriptions_are_validated(vms, define, expected):
    body = lab_guest("pooldef")
    body["spec"]["disks"] = [{"name": "data", "pool": {"pool": "p", "volume": "v", "define": define}}]
    result = vms.apply(body)
    assert result.returncode != 0 and expected in result.stderr, result.stderr
