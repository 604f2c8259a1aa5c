"""A controller that starts to lead acts on nothing until its watches have delivered what
the API lists: half a cache makes wrong decisions (a running VM placed anew)."""

import time

from kopfvirt.controller import reconciler
from kopfvirt.controller.reconciler import Controller


def vm(uid):
    return {"metadata": {"uid": uid, "namespace": "ns", "name": uid, "resourceVersion": "1"}}


def listing(monkeypatch, api: dict):
    """The API's lists: plural -> objects, and the pods' UIDs and nodes' names."""
    monkeypatch.setattr(reconciler.kube, "list_objects", lambda plural: list(api.get(plural, [])))
    monkeypatch.setattr(reconciler.kube, "pod_uids", lambda selector: set(api.get("pods", [])))
    monkeypatch.setattr(reconciler.kube, "node_names", lambda: set(api.get("nodes", [])))


def wait(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_it_acts_once_every_listed_object_was_delivered(monkeypatch):
    api = {"virtualmachines": [vm("a"), vm("b")], "nodes": ["node-1"]}
    listing(monkeypatch, api)
    c = Controller()
    submitted = []
    monkeypatch.setattr(c, "submit", submitted.append)
    monkeypatch.setattr(c.migrations, "kick", lambda: None)
    monkeypatch.setattr(c, "enqueue", lambda key, task: None)
    c.observe_vm(vm("a"))
    c.lead()
    time.sleep(1.5)
    assert not c.active()  # b and the node not delivered yet
    c.observe_vm(vm("b"))
    c.observe_node({"metadata": {"name": "node-1"}, "status": {}})
    assert wait(c.active)
    assert {"a", "b"} <= set(submitted)


def test_an_object_deleted_before_its_watch_delivered_it_is_not_waited_for(monkeypatch):
    api = {"virtualmachines": [vm("a"), vm("gone")]}
    listing(monkeypatch, api)
    c = Controller()
    monkeypatch.setattr(c, "submit", lambda uid: None)
    monkeypatch.setattr(c.migrations, "kick", lambda: None)
    monkeypatch.setattr(c, "enqueue", lambda key, task: None)
    c.observe_vm(vm("a"))
    c.lead()
    time.sleep(1.5)
    assert not c.active()
    api["virtualmachines"] = [vm("a")]  # deleted: the next list no longer has it
    assert wait(c.active)
