"""Stop, start, restart, pause and delete, from the spec and from the plugin; guests that
power off by themselves are handled per runStrategy."""

import time

from .conftest import domains_of, heartbeat, kubectl, kubectl_json, lab_guest, wait_for


def _running(vms, name):
    vm = vms.wait_phase(name, "Running")
    node = vm["status"]["nodeName"]
    wait_for(f"{name}'s heartbeat", lambda: heartbeat(node, vms.domain(name)))
    return vm, node


def _pod_gone(vms, name):
    wait_for(f"reservation pod of {name} to go", lambda: kubectl(
        "-n", vms.namespace, "get", "pod", f"kopfvirt-{name}", check=False).returncode != 0)


def test_stop_and_start_from_the_spec(vms):
    assert vms.apply(lab_guest("specops")).returncode == 0
    vm, node = _running(vms, "specops")
    uid = vm["metadata"]["uid"]
    kubectl("-n", vms.namespace, "patch", "virtualmachine", "specops", "--type=merge",
            "-p", '{"spec":{"runStrategy":"Halted"}}')
    vm = vms.wait_phase("specops", "Stopped", timeout=60)
    assert vm["status"]["stopReason"] == "Requested" and "nodeName" not in vm["status"]
    _pod_gone(vms, "specops")
    assert domains_of(uid) == {}
    kubectl("-n", vms.namespace, "patch", "virtualmachine", "specops", "--type=merge",
            "-p", '{"spec":{"runStrategy":"Always"}}')
    _running(vms, "specops")
    assert list(domains_of(uid).values()) == ["running"]
    vms.delete("specops")
    assert domains_of(uid) == {}


def test_a_start_asked_while_the_guest_shuts_down_comes_after_the_stop(vms):
    """A guest asked to power off cannot be asked back: the stop ends (Requested, as it
    began) and then the guest starts again; its power-off never reads as the guest's own."""
    name = "changed-mind"
    assert vms.apply(lab_guest(name, cmdline="kopfvirt.shutdown_delay=5")).returncode == 0
    first = _running(vms, name)[0]["status"]["startTime"]
    kubectl("-n", vms.namespace, "patch", "virtualmachine", name, "--type=merge", "-p",
            '{"spec":{"runStrategy":"Halted"}}')
    vms.wait_phase(name, "Stopping", timeout=30)
    kubectl("-n", vms.namespace, "patch", "virtualmachine", name, "--type=merge", "-p",
            '{"spec":{"runStrategy":"Always"}}')
    vm = wait_for("the guest started again", lambda: (v := vms.get(name))["status"].get("phase") == "Running"
                  and v["status"].get("startTime", "") > first and v, timeout=90)
    assert vm["status"]["stopReason"] == "Requested", vm["status"]
    events = kubectl_json("-n", vms.namespace, "get", "events", "--field-selector",
                          f"involvedObject.name={name},involvedObject.kind=VirtualMachine")["items"]
    assert "GuestShutdown" not in {e["reason"] for e in events}, [e["message"] for e in events]
    vms.delete(name)


def test_plugin_pause_restart_stop_start(vms):
    assert vms.apply(lab_guest("plugged")).returncode == 0
    vm, node = _running(vms, "plugged")
    domain, uid = vms.domain("plugged"), vm["metadata"]["uid"]

    vms.plugin("pause", "plugged")
    vms.wait_phase("plugged", "Paused")
    paused = vms.condition("plugged", "Paused")
    assert (paused["status"], vms.condition("plugged", "Ready")) == ("True", {})  # paused as asked: no Ready
    frozen = heartbeat(node, domain)
    time.sleep(2.5)
    assert heartbeat(node, domain) == frozen, "a paused guest kept counting"
    vms.plugin("unpause", "plugged")
    vms.wait_phase("plugged", "Running")
    wait_for("the guest to count again", lambda: heartbeat(node, domain) > frozen)

    started = vms.get("plugged")["status"]["startTime"]
    vms.plugin("restart", "plugged")
    wait_for("a new startTime", lambda: vms.get("plugged")["status"].get("startTime", "") > started)
    vms.wait_phase("plugged", "Running")

    assert "runStrategy Always -> Halted" in vms.plugin("stop", "plugged").stdout
    vms.wait_phase("plugged", "Stopped")
    _pod_gone(vms, "plugged")
    assert "runStrategy Halted -> Always" in vms.plugin("start", "plugged").stdout
    _running(vms, "plugged")
    # Each write names its writer (managedFields): the plugin's spec fields, the
    # controller's and the agent's status, the pod's creator.
    managed = {(f["manager"], f.get("subresource", "")): f["fieldsV1"]
               for f in kubectl_json("-n", vms.namespace, "get", "virtualmachine", "plugged",
                                     "--show-managed-fields")["metadata"]["managedFields"]}
    assert "f:runStrategy" in managed["kubectl-kopfvirt", ""]["f:spec"], managed.keys()
    assert {("kopfvirt-controller", "status"), ("kopfvirt-agent", "status")} <= set(managed), managed.keys()
    assert not [m for m, _ in managed if m.startswith("OpenAPI-Generator")], managed.keys()
    pod = kubectl_json("-n", vms.namespace, "get", "pod", "kopfvirt-plugged", "--show-managed-fields")
    assert {f["manager"] for f in pod["metadata"]["managedFields"]} >= {"kopfvirt-controller"}
    vms.delete("plugged")
    assert domains_of(uid) == {}


def test_plugin_shows_both_xmls(vms):
    assert vms.apply(lab_guest("xmls")).returncode == 0
    _running(vms, "xmls")
    live = vms.plugin("xml", "xmls").stdout
    inactive = vms.plugin("xml", "--inactive", "xmls").stdout
    assert "<domain type='qemu' id=" in live and "<domain type='qemu'>" in inactive
    assert f"<name>{vms.domain('xmls')}</name>" in inactive
    vms.delete("xmls")


def test_guest_power_off_is_handled_per_run_strategy(vms):
    # RerunOnFailure: a clean power-off is final; the node is released.
    assert vms.apply(lab_guest("once-off", cmdline="kopfvirt.poweroff_after=3",
                               runStrategy="RerunOnFailure")).returncode == 0
    vm = vms.wait_phase("once-off", "Stopped", timeout=90)
    assert vm["status"]["stopReason"] == "GuestShutdown"
    _pod_gone(vms, "once-off")
    # Always: the guest is started again on its own.
    assert vms.apply(lab_guest("again", cmdline="kopfvirt.poweroff_after=3")).returncode == 0
    first = vms.wait_phase("again", "Running")["status"]["startTime"]
    wait_for("a restart after the guest powered off",
             lambda: (vms.get("again")["status"].get("stopReason") == "GuestShutdown"
                      and vms.get("again")["status"].get("startTime", "") > first), timeout=90)
    vms.delete("again")
    vms.delete("once-off")


def test_lost_reservation_pod_stops_the_vm_and_it_comes_back(vms):
    assert vms.apply(lab_guest("evicted")).returncode == 0
    vm, node = _running(vms, "evicted")
    pod_uid = kubectl("-n", vms.namespace, "get", "pod", "kopfvirt-evicted", "-o", "jsonpath={.metadata.uid}").stdout
    kubectl("-n", vms.namespace, "delete", "pod", "kopfvirt-evicted", "--wait=false")
    wait_for("the VM to stop with reason Evicted",
             lambda: (vms.get("evicted")["status"].get("stopReason") == "Evicted"), timeout=60)
    # runStrategy Always: a new reservation pod, and the VM runs again where it is bound.
    vm = wait_for("the VM running again", lambda: (v := vms.get("evicted"))["status"].get("phase") == "Running"
                  and v["status"].get("stopReason") == "Evicted" and v, timeout=90)
    new_pod = kubectl("-n", vms.namespace, "get", "pod", "kopfvirt-evicted", "-o", "json").stdout
    assert pod_uid not in new_pod
    assert list(domains_of(vm["metadata"]["uid"]).values()) == ["running"]
    vms.delete("evicted")


def test_deleting_the_namespace_cleans_its_vms(lab):
    from .conftest import VMs
    ns = "it-doomed"
    kubectl("create", "namespace", ns)
    doomed = VMs(ns)
    assert doomed.apply(lab_guest("doomed")).returncode == 0
    uid = doomed.wait_phase("doomed", "Running")["metadata"]["uid"]
    kubectl("delete", "namespace", ns, "--timeout=120s")
    assert domains_of(uid) == {}


def test_plugin_console_is_interactive(vms):
    """The serial console through the plugin: the heartbeat shows, Ctrl+] leaves."""
    import os
    import pty
    import select
    import subprocess
    import sys
    from pathlib import Path

    from .conftest import KUBECONFIG

    assert vms.apply(lab_guest("talker")).returncode == 0
    _running(vms, "talker")
    main, child = pty.openpty()
    plugin = str(Path(sys.executable).parent / "kubectl-kopfvirt")
    proc = subprocess.Popen([plugin, "--kubeconfig", str(KUBECONFIG), "-n", vms.namespace, "console", "talker"],
                            stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    seen, deadline = b"", time.monotonic() + 30
    try:
        while b"kopfvirt-heartbeat" not in seen and time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                seen += os.read(main, 4096)
        assert b"kopfvirt-heartbeat" in seen, seen[-500:]
        os.write(main, b"\x1d")  # Ctrl+]
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    vms.delete("talker")
