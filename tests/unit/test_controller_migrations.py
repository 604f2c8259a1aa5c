"""The controller's Migrations: the source agent writes a move's Succeeded as the guest
runs on the target, a moment before the controller hands the VM over; a Migration of the
VM asked in that moment waits for the hand-over, instead of being refused as already
moving."""

from kopfvirt.controller import migrations as controller_migrations
from kopfvirt.controller.reconciler import Controller
from kopfvirt.core import migration


def test_a_migration_asked_during_a_hand_over_waits_for_it(monkeypatch):
    writes = []
    monkeypatch.setattr(controller_migrations, "write_migration_status",
                        lambda namespace, name, status, phase=None, *a, **k: writes.append((name, phase, status)))
    monkeypatch.setattr(controller_migrations.kube, "json_patch", lambda namespace, name, ops, **k: writes.append(ops))
    monkeypatch.setattr(controller_migrations.kube, "config_map_data", lambda namespace, name: None)
    c = Controller()
    monkeypatch.setattr(c, "submit", lambda uid: None)
    monkeypatch.setattr(c.migrations, "kick", lambda: None)
    monkeypatch.setattr(c, "event", lambda *a, **k: None)
    for name in ("node-1", "node-2"):
        c.nodes[name] = migration.Node(name, {})
    record = {"name": "m0", "mode": "Live", "sourceNode": "node-2", "targetNode": "node-1", "targetPod": "p"}
    vm = {"metadata": {"uid": "u", "namespace": "ns", "name": "vm", "resourceVersion": "5"},
          "spec": {"runStrategy": "Always", "cpu": {"cores": 1}, "memory": {"size": "128Mi"}},
          "status": {"phase": "Running", "nodeName": "node-1", "migration": record}}
    c.observe_vm(vm)
    asked = {"metadata": {"uid": "m1", "namespace": "ns", "name": "m1", "resourceVersion": "7",
                          "creationTimestamp": "2026-11-29T13:00:00Z", "finalizers": [controller_migrations.FINALIZER],
                          "labels": {migration.SOURCE_NODE_LABEL: "node-1"}},
             "spec": {"vmName": "vm"}}
    assert c.migrations._handle(asked) is False  # not judged: no refusal written
    assert writes == []
    # Handed over (status.migration cleared): judged, and it fits.
    c.observe_vm({**vm, "metadata": {**vm["metadata"], "resourceVersion": "6"},
                  "status": {"phase": "Running", "nodeName": "node-1"}})
    assert c.migrations._handle(asked) is True
    assert writes == []
