"""Lab nodes: a network namespace, a mount namespace and a libvirtd each (and a kubelet
and containerd: lab/kopfvirt_lab/kubelet.py, lab/kopfvirt_lab/containerd.py).

Every node sees the host's filesystem except libvirt's, the kubelet's and containerd's own
directories, which are bind-mounted from .lab/nodes/<node>/ so each daemon has its own
config, state and sockets. SHARED_STORAGE is the host's, hence the same path on every node: it holds the
read-only kernels and base images (StoragePool lab-images). Writable disks live on the
storage host's servers (lab/kopfvirt_lab/storage.py), which libvirt treats as shared storage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kopfvirt.agent.tls import LIBVIRTD_PATHS

from . import kubelet, procs
from .errors import LabError
from .layout import (K8S_VERSION, BRIDGE, HOST_IP, LAB_PROC, LAB_SYSFS, LEASE_DIR, NETNS_PREFIX, NODE_PRIVATE_DIRS, NETWORK,
                     PCI_TREE_NODES, RUN_DIR, SHARED_STORAGE, STORAGE_HOST, TLS_DIR, Lab, mntns_path, netns, netns_path, node_ip,
                     pod_cidr)

PREFIXLEN = NETWORK.prefixlen
LIBVIRT_TLS_PORT = 16514
# libvirt matches a client certificate's distinguished name (as GnuTLS prints it) with these.
TLS_ALLOWED_DN = "*O=kopfvirt:nodes*"


def enter(node: str) -> list[str]:
    """The argv prefix that runs a command inside a node's namespaces."""
    return ["nsenter", f"--net={netns_path(node)}", f"--mount={mntns_path(node)}", "--"]


def _ip(*args: str, check: bool = True):
    return procs.run(["ip", *args], check=check)


def ensure_bridge() -> None:
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "replace", f"{HOST_IP}/{PREFIXLEN}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def ensure_ns_dir() -> None:
    """Mount-namespace files must live on a private mount, or the bind that keeps them fails."""
    ns_dir = RUN_DIR / "ns"
    ns_dir.mkdir(parents=True, exist_ok=True)
    if procs.run(["findmnt", "-n", str(ns_dir)], check=False).returncode != 0:
        procs.run(["mount", "--bind", str(ns_dir), str(ns_dir)])
        procs.run(["mount", "--make-private", str(ns_dir)])


def ensure_netns(name: str, ip: str, tag: str, bridge: str = BRIDGE) -> None:
    """A network namespace with `ip` on eth0, a veth kv<tag>h on `bridge` to the host."""
    if (Path("/run/netns") / name).exists():
        return
    host_end, peer_end = f"kv{tag}h", f"kv{tag}n"
    _ip("link", "del", host_end, check=False)
    _ip("netns", "add", name)
    _ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
    _ip("link", "set", host_end, "master", bridge, "up")
    _ip("link", "set", peer_end, "netns", name)
    _ip("-n", name, "link", "set", peer_end, "name", "eth0")
    _ip("-n", name, "addr", "add", f"{ip}/{PREFIXLEN}", "dev", "eth0")
    _ip("-n", name, "link", "set", "eth0", "up")
    _ip("-n", name, "link", "set", "lo", "up")
    _ip("-n", name, "route", "add", "default", "via", HOST_IP)


def mounted(path: Path) -> bool:
    return path.exists() and procs.run(["findmnt", "-n", str(path)], check=False).returncode == 0


def make_mntns(ns: Path, binds: list[str], what: str) -> None:
    """A private mount namespace kept at `ns`, set up by the shell commands `binds`."""
    if mounted(ns):
        return
    ns.touch()
    result = procs.run(["unshare", f"--mount={ns}", "--propagation", "private", "sh", "-c", " && ".join(binds)],
                       check=False)
    if result.returncode != 0:
        procs.run(["umount", "-l", str(ns)], check=False)
        raise LabError(f"could not make the mount namespace of {what}: {result.stderr.strip()}")


def ensure_pod_routes(names: list[str]) -> None:
    """Each node forwards for its pods and routes the other nodes' pod subnets to them; the
    host routes every node's (the API server answers pods, and reaches them as webhooks), and
    so does the storage host (the agents' pods reach its NFS server), each straight to the
    node: the host itself forwards nothing."""
    storage_ns = netns(STORAGE_HOST)
    for index, node in enumerate(names, start=1):
        procs.run(["ip", "netns", "exec", netns(node), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _ip("route", "replace", pod_cidr(index), "via", node_ip(index))
        if Path(f"/run/netns/{storage_ns}").exists():
            _ip("-n", storage_ns, "route", "replace", pod_cidr(index), "via", node_ip(index))
        for other in range(1, len(names) + 1):
            if other != index:
                _ip("-n", netns(node), "route", "replace", pod_cidr(other), "via", node_ip(other))


def remove_netns(name: str, ns: Path) -> None:
    """Kill what runs in a lab namespace, then remove it and its mount namespace."""
    for pid in _ip("netns", "pids", name, check=False).stdout.split():
        procs.kill(int(pid), grace=5)
    procs.run(["umount", "-l", str(ns)], check=False)
    ns.unlink(missing_ok=True)
    _ip("netns", "del", name, check=False)


def _libvirt_config(node_root: Path, node: str, index: int) -> bool:
    """The node's libvirt configuration; True when it changed (a running libvirtd must
    restart to read it)."""
    etc = node_root / "etc/libvirt"
    if not (etc / "libvirtd.conf").exists():
        shutil.copytree("/etc/libvirt", etc, dirs_exist_ok=True)
        # No default NAT network (it would want dnsmasq and a private range).
        shutil.rmtree(etc / "qemu/networks", ignore_errors=True)
        (etc / "qemu/networks/autostart").mkdir(parents=True)
    files = ("libvirtd.conf", "qemu.conf", "qemu-lockd.conf")
    before = [(etc / f).read_text() if (etc / f).exists() else None for f in files]
    ip = node_ip(index)
    (etc / "libvirtd.conf").write_text(f"""\
# kopfvirt lab node {node}: peers reach it for migration over TLS only, with the node's
# certificate the agent has the controller sign (its --tls-dir), as in a cluster.
listen_tls = 1
listen_tcp = 0
listen_addr = "{ip}"
# Its certificate at libvirt's default paths, links into {TLS_DIR} (the agent's).
# Only nodes: the operator's CA signs the webhook's certificate too.
tls_allowed_dn_list = ["{TLS_ALLOWED_DN}"]
auth_tls = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "{host_uuid(node)}"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
""")
    (etc / "qemu.conf").write_text(f"""\
# kopfvirt lab node {node}: several libvirtds share one machine and one storage path.
cgroup_controllers = [ ]
stdio_handler = "file"
security_driver = "none"
dynamic_ownership = 0
remember_owner = 0
user = "root"
group = "root"
migration_host = "{ip}"
migration_address = "{ip}"
# The migration stream is encrypted too (VIR_MIGRATE_TLS), with the same certificate.
migrate_tls_x509_cert_dir = "{TLS_DIR}"
migrate_tls_x509_verify = 1
# virtlockd holds a lease on every disk file a domain opens (fcntl locks, which GlusterFS
# carries between its clients): no second domain, on this node or another, opens it writable.
lock_manager = "lockd"
""")
    (etc / "qemu-lockd.conf").write_text(f"""\
# kopfvirt lab node {node}: leases on storage every node shares, so they hold between nodes.
# Files are leased by libvirt itself (auto_disk_leases); the agent (--lease-dir) adds a
# lease for each writable network disk, which libvirt cannot lease on its own.
file_lockspace_dir = "{LEASE_DIR}"
""")
    _pki_links(node_root)
    return before != [(etc / f).read_text() for f in files]


def _pki_links(node_root: Path) -> None:
    """libvirtd's default certificate paths (the node's own /etc/pki) linked to the agent's files."""
    for path, name in LIBVIRTD_PATHS.items():
        link = node_root / path.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(f"{TLS_DIR}/{name}")


def _smbios_stand_in(node_root: Path, node: str, index: int) -> None:
    """libvirtd runs /usr/sbin/dmidecode for `virsh sysinfo`; in the node's mount namespace
    that path is this script: the real dmidecode where the host exposes SMBIOS, else a
    per-node System Information, so sysinfo answers and says which node it is."""
    bin_dir = node_root / "var/lib/libvirt/lab-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "dmidecode"
    script.write_text(f"""#!/bin/sh
/var/lib/libvirt/lab-bin/dmidecode.real "$@" 2>/dev/null && exit 0
cat <<SMBIOS
# dmidecode stand-in of kopfvirt lab {node}
Handle 0x0000, DMI type 0, 24 bytes
BIOS Information
\tVendor: kopfvirt lab
\tVersion: {K8S_VERSION}
\tRelease Date: 01/01/2026

Handle 0x0100, DMI type 1, 27 bytes
System Information
\tManufacturer: kopfvirt lab
\tProduct Name: lab node
\tVersion: {index}
\tSerial Number: {node}
\tUUID: {host_uuid(node)}
\tSKU Number: {node}
\tFamily: kopfvirt

SMBIOS
""")
    script.chmod(0o755)


def host_uuid(node: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.kopfvirt.lab"))


def _ensure_mntns(lab: Lab, node: str) -> None:
    ns = mntns_path(node)
    node_root = lab.node_dir(node)
    for d in (*NODE_PRIVATE_DIRS, "/var/log/libvirt/qemu"):  # the package's layout; QEMU logs there
        (node_root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for d in NODE_PRIVATE_DIRS:
        Path(d).mkdir(parents=True, exist_ok=True)
    # /var/lib/kopfvirt shared within the node: the pools libvirtd mounts there later reach
    # the agent's pod (its hostPath is HostToContainer), and so does the TLS directory.
    binds = ["mount --bind /var/lib/kopfvirt /var/lib/kopfvirt", "mount --make-shared /var/lib/kopfvirt"]
    binds += [f"mount --bind {node_root / d.lstrip('/')} {d}" for d in NODE_PRIVATE_DIRS]
    # The kubelet's too: the Secret volumes it mounts into pods reach the agent's pod (its
    # hostPath of the kubelet's pods/ is HostToContainer), as on a host whose / is shared.
    binds.append("mount --make-shared /var/lib/kubelet")
    for shown, real, built in ((LAB_SYSFS, "/sys", lab.sysfs_root(node)), (LAB_PROC, "/proc", lab.proc_root(node))):
        Path(shown).mkdir(parents=True, exist_ok=True)
        if node in PCI_TREE_NODES:
            built.mkdir(parents=True, exist_ok=True)
            binds.append(f"mount --bind {built} {shown}")
        else:
            binds.append(f"mount --rbind {real} {shown}")
    binds += kubelet.sysctl_binds(node_root)
    lab_bin = node_root / "var/lib/libvirt/lab-bin"
    if Path("/usr/sbin/dmidecode").exists():
        (lab_bin / "dmidecode.real").touch()
        binds += [f"mount --bind /usr/sbin/dmidecode {lab_bin}/dmidecode.real",
                  f"mount --bind {lab_bin}/dmidecode /usr/sbin/dmidecode"]
    make_mntns(ns, binds, node)


def libvirtd_pid(lab: Lab, node: str) -> int | None:
    return procs.read_pid(lab.node_dir(node) / "run/libvirt/libvirtd.pid")


def virtlockd_pid(lab: Lab, node: str) -> int | None:
    return procs.read_pid(lab.node_dir(node) / "run/libvirt/virtlockd.pid")


def _start_virtlockd(lab: Lab, node: str) -> None:
    """The node's lock manager; libvirtd (qemu.conf lock_manager) refuses to start domains
    without it. A virtlockd that died took its leases with it: the domains keep running,
    and a new one leases what starts from now on."""
    if not virtlockd_pid(lab, node):
        _start_reaped(lab, node, "virtlockd", [], "virtlockd-sock", timeout=10)


def _tls_ready(lab: Lab, node: str) -> bool:
    tls = lab.node_dir(node) / TLS_DIR.lstrip("/")
    return all((tls / f).exists() for f in ("cacert.pem", "servercert.pem", "serverkey.pem"))


def _start_libvirtd(lab: Lab, node: str) -> None:
    """Listening for peers once the node has its certificate (libvirtd refuses to listen
    without one); `ensure_tls_listeners` restarts it when the agent has got it."""
    if not libvirtd_pid(lab, node):
        _start_reaped(lab, node, "libvirtd", ["--listen"] if _tls_ready(lab, node) else [], "libvirt-sock",
                      timeout=20, see=lab.node_dir(node) / "var/log/libvirt/libvirtd.log")


def listening(node: str, port: int) -> bool:
    out = procs.run(["ip", "netns", "exec", netns(node), "ss", "-Hltn", f"sport = :{port}"], check=False).stdout
    return bool(out.strip())


def ensure_tls_listeners(lab: Lab, names: list[str], timeout: float = 90) -> None:
    """Each libvirtd listening on TLS: wait for the certificate each agent asks the
    controller for, then restart a libvirtd that started without it (guests keep running)."""
    deadline = time.monotonic() + timeout
    for node in names:
        while not _tls_ready(lab, node):
            if time.monotonic() > deadline:
                raise LabError(f"{node} got no libvirt certificate from its agent within {timeout:.0f}s; see "
                               "`kubectl -n kopfvirt-system logs` of its agent pod and of the controller")
            time.sleep(0.2)
        if not listening(node, LIBVIRT_TLS_PORT) and (pid := libvirtd_pid(lab, node)):
            procs.kill(pid, grace=10)
            _start_libvirtd(lab, node)


def _start_reaped(lab: Lab, node: str, daemon: str, args: list[str], socket: str, timeout: float,
                  see: Path | None = None) -> None:
    """Start one of the node's libvirt daemons under a subreaper (lab/kopfvirt_lab/reaper.py), so its
    orphans, the QEMUs among them, are reaped as soon as they exit; wait for its pid file
    and socket."""
    lab.logs.mkdir(parents=True, exist_ok=True)
    log = lab.logs / f"{daemon}-{node}.log"
    with open(log, "ab") as out:
        subprocess.Popen([*enter(node), sys.executable, "-m", "kopfvirt_lab.reaper", daemon, "-d", *args,
                          "-p", f"/run/libvirt/{daemon}.pid"], stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    run_dir = lab.node_dir(node) / "run/libvirt"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if procs.read_pid(run_dir / f"{daemon}.pid") and (run_dir / socket).exists():
            return
        time.sleep(0.1)
    raise LabError(f"{daemon} on {node} did not start: see {log}" + (f" and {see}" if see else ""))


def _virsh(node: str) -> list[str]:
    return [*enter(node), "virsh", "-c", "qemu:///system"]


# Pool types the lab's storage host is reached by (lab/kopfvirt_lab/storage.py) -> their libvirt backend.
STORAGE_BACKENDS = {"iscsi-direct": "iscsi-direct", "netfs": "fs"}


def _missing_backends(node: str) -> list[str]:
    """Installed storage backends this libvirtd lacks: it loads them only when it starts, so
    one started before their package was installed misses them."""
    caps = procs.run([*_virsh(node), "pool-capabilities"], check=False).stdout
    return [pool for pool, backend in STORAGE_BACKENDS.items()
            if f"<pool type='{pool}' supported='yes'>" not in caps
            and any(Path("/usr/lib").glob(f"*/libvirt/storage-backend/libvirt_storage_backend_{backend}.so"))]


def _ensure_storage_backends(lab: Lab, node: str) -> None:
    """Restart a libvirtd that misses a storage backend (its guests keep running)."""
    pid = libvirtd_pid(lab, node)
    if pid and _missing_backends(node):
        procs.kill(pid, grace=10)
        _start_libvirtd(lab, node)


VM_NETWORK = "kopfvirt"
VM_NETWORK_XML = f"""<network>
  <name>{VM_NETWORK}</name>
  <bridge name="kvvm0" stp="off"/>
</network>
"""


def _ensure_vm_network(node: str) -> None:
    """The node's VM network: an isolated bridge in the node's namespace (no NAT, no DHCP)."""
    virsh = _virsh(node)
    if procs.run([*virsh, "net-info", VM_NETWORK], check=False).returncode != 0:
        procs.run([*virsh, "net-define", "/dev/stdin"], input=VM_NETWORK_XML)
        procs.run([*virsh, "net-autostart", VM_NETWORK])
    if "Active:         yes" not in procs.run([*virsh, "net-info", VM_NETWORK]).stdout:
        procs.run([*virsh, "net-start", VM_NETWORK])


def up(lab: Lab, names: list[str]) -> None:
    SHARED_STORAGE.mkdir(parents=True, exist_ok=True)
    ensure_bridge()
    ensure_ns_dir()
    for index, node in enumerate(names, start=1):
        ensure_netns(netns(node), node_ip(index), str(index))
        changed = _libvirt_config(lab.node_dir(node), node, index)
        _smbios_stand_in(lab.node_dir(node), node, index)
        _ensure_mntns(lab, node)
        _start_virtlockd(lab, node)
        if changed and (pid := libvirtd_pid(lab, node)):  # its guests keep running
            procs.kill(pid, grace=10)
        _start_libvirtd(lab, node)
        _ensure_storage_backends(lab, node)
        _ensure_vm_network(node)
    ensure_pod_routes(names)


def existing_netns() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(NETNS_PREFIX)]


def teardown() -> list[str]:
    """Remove every lab node on the machine, whichever checkout made it."""
    done = []
    for name in existing_netns():
        node = name[len(NETNS_PREFIX):]
        remove_netns(name, mntns_path(node))
        kubelet.remove_cgroup_root(node)
        done.append(node)
    ns_dir = RUN_DIR / "ns"
    if ns_dir.exists():
        for leftover in ns_dir.iterdir():
            procs.run(["umount", "-l", str(leftover)], check=False)
            leftover.unlink(missing_ok=True)
        procs.run(["umount", "-l", str(ns_dir)], check=False)
    _ip("link", "del", BRIDGE, check=False)
    return done


def status(lab: Lab, names: list[str]) -> dict[str, str]:
    out = {}
    for index, node in enumerate(names, start=1):
        if not netns_path(node).exists():
            out[node] = "absent"
            continue
        pid, lockd = libvirtd_pid(lab, node), virtlockd_pid(lab, node)
        out[node] = (f"{node_ip(index)}, libvirtd " + (f"running (pid {pid})" if pid else "stopped") +
                     ", virtlockd " + (f"running (pid {lockd})" if lockd else "stopped"))
    return out
