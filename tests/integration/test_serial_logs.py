"""A guest's serial log is capped on its node: an admin's annotation sets the cap there,
the agent cuts the log past it (the older part kept once as <log>.1), and the guest's
console goes on in the cut file, never restarted. Deleting the VM takes its logs."""

import re

from .conftest import heartbeat, kubectl, lab_exec, lab_guest, restarts_seen, wait_for

CAP = 1024  # the least a node may set: the guest's heartbeat (about 20 bytes a second) passes it in a minute
LOG_DIR = "/var/log/libvirt/qemu"


def size(node: str, path: str) -> int | None:
    result = lab_exec(node, "stat", "-c", "%s", path, check=False)
    return int(result.stdout) if result.returncode == 0 else None


def test_a_serial_log_past_the_nodes_cap_is_cut_and_the_console_goes_on(vms):
    kubectl("annotate", "--overwrite", "node", "node-1", f"kopfvirt.io/serial-log-max-bytes={CAP}")
    try:
        assert vms.apply(lab_guest("chatty", nodeSelector={"kubernetes.io/hostname": "node-1"})).returncode == 0
        vms.wait_phase("chatty", "Running", timeout=120)
        domain = vms.domain("chatty")
        log = f"{LOG_DIR}/{domain}-serial.log"
        wait_for("the guest's heartbeat", lambda: heartbeat("node-1", domain), timeout=60)
        wait_for("the log cut, its older part kept", lambda: size("node-1", log + ".1") == CAP, timeout=150)
        older = lab_exec("node-1", "cat", log + ".1").stdout
        before = heartbeat("node-1", domain)
        wait_for("the console going on in the cut log", lambda: (heartbeat("node-1", domain) or 0) > before, timeout=30)
        assert size("node-1", log) < CAP, "cut to nothing, then only what the guest wrote since"
        assert "kopfvirt-heartbeat" in older
        assert not re.search(r"kopfvirt-heartbeat 1$", lab_exec("node-1", "cat", log).stdout, re.M)
        assert not restarts_seen("node-1", domain)
    finally:
        kubectl("annotate", "node", "node-1", "kopfvirt.io/serial-log-max-bytes-")
    vms.delete("chatty")
    assert size("node-1", log) is None and size("node-1", log + ".1") is None
