"""The lab's storage host: GlusterFS, iSCSI and NFS servers, all in user space.

The kernel here has FUSE but no NFS client, iSCSI initiator or nbd, so nodes reach shared
storage only the ways libvirt 9.0 and QEMU 7.2 manage from user space (docs/storage.md):
a GlusterFS volume that a `netfs` pool mounts over FUSE, iSCSI LUNs through an
`iscsi-direct` pool (libiscsi), NFS files as network disks (QEMU's libnfs).

The servers run in a network namespace of their own with an address on the lab bridge,
and a private mount namespace whose /run, glusterd state and logs are their own: a host's
rpcbind or glusterd, if any, is never touched. Their data is machine-wide (STORAGE_DATA),
so a repeated `lab up` starts nothing that runs and recreates nothing that exists.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import time
from pathlib import Path

from . import nodes, procs
from .errors import LabError
from .layout import (BRIDGE, GLUSTER_VOLUME, ISCSI_INITIATOR_PREFIX, ISCSI_LUN_SIZE, ISCSI_LUNS, ISCSI_TARGET,
                     NFS_EXPORT, POOLS_DIR, RUN_DIR, STORAGE_DATA, STORAGE_HOST, STORAGE_IP, Lab, mntns_path,
                     netns)

# server -> the TCP port that answers once it serves (and `lab status` probes)
PORTS = {"glusterd": 24007, "tgtd": 3260, "rpcbind": 111, "ganesha": 2049}


@dataclasses.dataclass(frozen=True)
class Host:
    """Where the servers run and keep their data: the lab's one, or a test's own."""

    netns: str = netns(STORAGE_HOST)
    ip: str = STORAGE_IP
    data: Path = STORAGE_DATA
    run: Path = RUN_DIR / STORAGE_HOST     # the servers' private /run
    mntns: Path = mntns_path(STORAGE_HOST)
    bridge: str = BRIDGE
    tag: str = "st"                        # veth kvsth on the bridge

    def enter(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}", f"--mount={self.mntns}", "--"]

    @property
    def private_dirs(self) -> dict[str, Path]:
        """Host path -> what is mounted over it for the servers only."""
        return {"/run": self.run, "/var/lib/glusterd": self.data / "gluster/state",
                "/var/log/glusterfs": self.data / "gluster/log"}

    @property
    def brick(self) -> Path:
        return self.data / "gluster/brick"

    @property
    def luns(self) -> list[Path]:
        return [self.data / f"iscsi/lun{i}.img" for i in range(1, ISCSI_LUNS + 1)]

    @property
    def export(self) -> Path:
        return self.data / "nfs/export"

    @property
    def ganesha_conf(self) -> Path:
        return self.data / "nfs/ganesha.conf"


LAB = Host()


def ganesha_conf(host: Host) -> str:
    """One VFS export, NFSv3 (by the pseudo path too) and v4, root not squashed (QEMU runs as
    root), no NLM/rquota (they want rpc.statd), no grace period (a restart serves at once)."""
    return f"""\
NFS_CORE_PARAM {{
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Mount_Path_Pseudo = true;
}}
NFSV4 {{
    Graceless = true;
    RecoveryBackend = fs;
    RecoveryRoot = "{host.data / 'nfs/recovery'}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{host.export}";
    Pseudo = "{NFS_EXPORT}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3, 4;
    Transports = TCP;
    SecType = sys;
    FSAL {{
        Name = VFS;
    }}
}}
"""


def gluster_pool_xml(name: str, ip: str = STORAGE_IP, target: Path = POOLS_DIR / "gluster") -> str:
    """A netfs pool that mounts the volume over FUSE: libvirt 9.0 sees fuse.glusterfs as shared
    (the `gluster` pool type, libgfapi, cannot back volume disks in 9.0)."""
    return f"""<pool type='netfs'>
  <name>{name}</name>
  <source>
    <host name='{ip}'/>
    <dir path='{GLUSTER_VOLUME}'/>
    <format type='glusterfs'/>
  </source>
  <target>
    <path>{target}</path>
  </target>
</pool>
"""


def iscsi_direct_pool_xml(name: str, node: str, ip: str = STORAGE_IP) -> str:
    """The target's LUNs through libiscsi (no kernel initiator here); volumes unit:0:0:<lun>."""
    return f"""<pool type='iscsi-direct'>
  <name>{name}</name>
  <source>
    <host name='{ip}'/>
    <device path='{ISCSI_TARGET}'/>
    <initiator>
      <iqn name='{ISCSI_INITIATOR_PREFIX}{node}'/>
    </initiator>
  </source>
</pool>
"""


def nfs_url(file: str, ip: str = STORAGE_IP) -> str:
    """A file of the NFS export as QEMU's libnfs names it (qemu-img, -drive)."""
    return f"nfs://{ip}{NFS_EXPORT}/{file.lstrip('/')}"


def _in(host: Host, *argv: str, check: bool = True):
    return procs.run([*host.enter(), *argv], check=check)


def _ensure_namespaces(host: Host) -> None:
    nodes.ensure_ns_dir()
    if not nodes.mounted(host.mntns):
        nodes.remove_netns(host.netns, host.mntns)  # servers left without their mount namespace
        shutil.rmtree(host.run, ignore_errors=True)  # a new /run: no stale pid files or sockets
        for target, source in host.private_dirs.items():
            source.mkdir(parents=True, exist_ok=True)
            Path(target).mkdir(parents=True, exist_ok=True)
        nodes.make_mntns(host.mntns, [f"mount --bind {s} {t}" for t, s in host.private_dirs.items()],
                         "the storage host")
    nodes.ensure_netns(host.netns, host.ip, host.tag, host.bridge)


def _wait(what: str, ready, lab: Lab, log: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise LabError(f"{what} did not come up in {timeout:.0f}s:\n{procs.log_tail(lab, log)}")
        time.sleep(0.2)


def _serve(lab: Lab, host: Host, name: str, argv: list[str], ready) -> None:
    """Start one server unless it runs, and wait until `ready()`."""
    if not procs.running(lab, f"storage-{name}"):
        procs.start(lab, f"storage-{name}", [*host.enter(), *argv])
    _wait(name, lambda: procs.running(lab, f"storage-{name}") and ready(), lab, f"storage-{name}")


def _gluster(lab: Lab, host: Host) -> None:
    host.brick.mkdir(parents=True, exist_ok=True)
    cli = ["gluster", "--mode=script"]
    _serve(lab, host, "glusterd", ["glusterd", "-N", "--log-file=-"],
           lambda: _in(host, *cli, "volume", "list", check=False).returncode == 0)
    info = _in(host, *cli, "volume", "info", GLUSTER_VOLUME, check=False)
    if info.returncode != 0:
        _in(host, *cli, "volume", "create", GLUSTER_VOLUME, f"{host.ip}:{host.brick}", "force")
    if "Status: Started" not in info.stdout:
        _in(host, *cli, "volume", "start", GLUSTER_VOLUME)


def _tgtadm(host: Host, *args: str, check: bool = True):
    return _in(host, "tgtadm", "--lld", "iscsi", *args, check=check)


def _iscsi(lab: Lab, host: Host) -> None:
    _serve(lab, host, "tgtd", ["tgtd", "-f"],
           lambda: _tgtadm(host, "--op", "show", "--mode", "target", check=False).returncode == 0)
    if _tgtadm(host, "--op", "show", "--mode", "target", "--tid", "1", check=False).returncode == 0:
        return  # tgtd keeps no config of its own: a target it shows is one this module made
    _tgtadm(host, "--op", "new", "--mode", "target", "--tid", "1", "-T", ISCSI_TARGET)
    for lun, path in enumerate(host.luns, start=1):
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(ISCSI_LUN_SIZE)
        _tgtadm(host, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun), "-b", str(path))
    _tgtadm(host, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL")


def _nfs(lab: Lab, host: Host) -> None:
    host.export.mkdir(parents=True, exist_ok=True)
    (host.data / "nfs/recovery").mkdir(parents=True, exist_ok=True)
    host.ganesha_conf.write_text(ganesha_conf(host))
    _serve(lab, host, "rpcbind", ["rpcbind", "-f", "-w"], lambda: (host.run / "rpcbind.sock").exists())
    _serve(lab, host, "ganesha", ["ganesha.nfsd", "-F", "-f", str(host.ganesha_conf), "-L", "STDERR",
                                  "-p", "/run/ganesha.pid"],
           lambda: _in(host, "rpcinfo", "-t", "127.0.0.1", "mountd", "3", check=False).returncode == 0)


def up(lab: Lab, host: Host = LAB) -> None:
    """Start whichever server is missing; the bridge must exist."""
    _ensure_namespaces(host)
    _gluster(lab, host)
    _iscsi(lab, host)
    _nfs(lab, host)


def quiesce(host: Host = LAB) -> None:
    """Ask tgtd to exit (it ignores SIGTERM, and refuses while it has a target), so a teardown's
    SIGTERM ends every server at once."""
    if Path(f"/run/netns/{host.netns}").exists() and nodes.mounted(host.mntns):
        _tgtadm(host, "--op", "delete", "--mode", "target", "--tid", "1", "--force", check=False)
        _in(host, "tgtadm", "--op", "delete", "--mode", "system", check=False)


def remove_data(host: Host = LAB) -> None:
    """`lab down` leaves no data behind, as it does with SHARED_STORAGE."""
    shutil.rmtree(host.data, ignore_errors=True)
    shutil.rmtree(host.run, ignore_errors=True)


def reachable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False


def status(lab: Lab, host: Host = LAB) -> dict[str, str]:
    """server -> running (pid) or stopped, and whether its port answers from the host."""
    out = {}
    for name, port in PORTS.items():
        pid = procs.running(lab, f"storage-{name}")
        state = f"running (pid {pid})" if pid else "stopped"
        out[name] = f"{state}, {host.ip}:{port} " + ("reachable" if reachable(host.ip, port) else "unreachable")
    return out
