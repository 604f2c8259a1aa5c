"""Where the lab keeps things: what is per checkout, machine-wide, or a shared cache."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

from kopfvirt import NODE_TLS_DIR

from .errors import LabError

K8S_VERSION = "v1.36.3"
CONTAINERD_VERSION = "v2.4.2"  # built by lab/build-kubernetes.sh with the kubelet

# Machine-wide names: a lab left by another checkout must be found and cleared.
RUN_DIR = Path("/run/kopfvirt-lab")          # owner marker and mount-namespace files
NETNS_PREFIX = "kvlab-"                       # ip netns names: kvlab-node-1, ...
BRIDGE = "kvlab0"
SHARED_STORAGE = Path("/var/lib/kopfvirt/storage")   # same path on every node

NETWORK = ipaddress.ip_network("198.18.0.0/24")
HOST_IP = "198.18.0.1"                       # the control plane, seen from the nodes
SERVICE_CIDR = "198.19.0.0/16"
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")  # node-N's pods: 10.244.N.0/24
APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
# A lab node has the machine's 2 CPUs: at 50 vCPUs per CPU (the chart's default is 10)
# bench/vm_start.py's 100 tiny VMs fit, and tests fill nodes by memory instead.
CPU_ALLOCATION_RATIO = 50
# A narrower CPU for node-2: an older host beside node-1, so the CPU rule of migration
# has a real pair to judge (sse4a is AMD-only: like moving from an EPYC to a Xeon).
HIDDEN_CPU_FEATURES = {"node-2": ("sse4a",)}
# node-1's agent reads the machine's own /sys (virtio devices, no IOMMU); node-2's a built
# tree of a GPU server (lab/kopfvirt_lab/pcitree.py), whose kernel side a lab process plays.
# Each node's mount namespace shows its own at LAB_SYSFS, the chart's agent.sysfsPath.
LAB_SYSFS = "/var/lib/kopfvirt-lab/sysfs"
# Likewise the host's /proc as the agent reads it (agent.procPath): the machine's on node-1,
# on node-2 a built one whose mounts, swap and default route use the tree's boot disk and port.
LAB_PROC = "/var/lib/kopfvirt-lab/proc"
PCI_TREE_NODES = ("node-2",)

LIBVIRT_DIRS = ("/run/libvirt", "/var/lib/libvirt", "/etc/libvirt",
                "/var/log/libvirt", "/var/cache/libvirt")
# Per node, bind-mounted from .lab/nodes/<node>/: libvirt's own, and the GlusterFS client's
# logs (every node mounts the volume at the same path, hence the same log name).
# The kubelet's and containerd's state, pod logs and CNI's configuration and leases too.
KUBELET_DIRS = ("/var/lib/kubelet", "/var/lib/containerd", "/run/containerd", "/var/lib/cni", "/etc/cni/net.d",
                "/var/log/pods", "/var/log/containers")
# The agent's directory for the node's libvirt certificate (its --tls-dir) is the node's own
# too, and /etc/pki, where libvirtd finds links to it.
TLS_DIR = NODE_TLS_DIR
NODE_PRIVATE_DIRS = (*LIBVIRT_DIRS, "/var/log/glusterfs", *KUBELET_DIRS, TLS_DIR, "/etc/pki")

# The storage host: GlusterFS, iSCSI and NFS servers in their own namespaces (lab/kopfvirt_lab/storage.py).
# Their data is machine-wide like SHARED_STORAGE, so a repeated `lab up` finds it.
STORAGE_HOST = "storage"
STORAGE_IP = "198.18.0.5"
STORAGE_DATA = Path("/var/lib/kopfvirt/storage-server")
# libvirt's lock manager (virtlockd) keeps its leases here, on the GlusterFS pool every node
# mounts (StoragePool gluster in lab/storagepools.yaml): a lease taken on one node holds on all.
LEASE_DIR = "/var/lib/kopfvirt/pools/gluster/.leases"
POOLS_DIR = Path("/var/lib/kopfvirt/pools")   # where nodes mount pools (same path everywhere)
GLUSTER_VOLUME = "kopfvirt"
ISCSI_TARGET = "iqn.2026-11.io.kopfvirt.lab:storage"
ISCSI_INITIATOR_PREFIX = "iqn.2026-11.io.kopfvirt.lab:"  # + node name
ISCSI_LUNS = 3
ISCSI_LUN_SIZE = 1 << 30                      # sparse files
NFS_EXPORT = "/export"                        # NFSv3 mount path and NFSv4 pseudo path


def node_ip(index: int) -> str:
    """node-1 is 198.18.0.11, node-2 .12, ..."""
    return str(NETWORK.network_address + 10 + index)


def pod_cidr(index: int) -> str:
    return str(list(POD_CIDR.subnets(new_prefix=24))[index])


def cache_dir() -> Path:
    return Path(os.environ.get("KOPFVIRT_CACHE", Path.home() / ".cache" / "kopfvirt"))


@dataclasses.dataclass(frozen=True)
class Lab:
    """The paths of one checkout's lab."""

    repo: Path

    @property
    def root(self) -> Path:
        return self.repo / ".lab"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    def sysfs_root(self, node: str) -> Path:
        return self.root / "sysfs" / node

    def proc_root(self, node: str) -> Path:
        return self.root / "proc" / node

    def libvirt_uri(self, node: str, index: int) -> str:
        """A node's libvirtd as a client on the host reaches it: over TLS like its peers,
        with that node's own certificate (its TLS_DIR, seen from the host)."""
        return f"qemu+tls://{node_ip(index)}/system?pkipath={self.node_dir(node) / TLS_DIR.lstrip('/')}"

    def node_dir(self, node: str) -> Path:
        return self.root / "nodes" / node

    @property
    def k8s_bin(self) -> Path:
        return cache_dir() / "k8s" / K8S_VERSION / "bin"

    def k8s_binary(self, name: str) -> Path:
        """One of the pinned release's binaries; missing: the step that builds it is named."""
        binary = self.k8s_bin / name
        if not binary.exists():
            raise LabError(f"{binary} is missing: lab/build-kubernetes.sh builds it")
        return binary

    @property
    def containerd_bin(self) -> Path:
        """containerd, its runc shim and ctr (lab/build-kubernetes.sh)."""
        return cache_dir() / "containerd" / CONTAINERD_VERSION / "bin"

    @property
    def kubectl(self) -> str:
        """The pinned release's kubectl (lab/build-kubernetes.sh), not whatever the machine has."""
        return str(self.k8s_bin / "kubectl")

    def kubectl_as_admin(self, *args: str) -> list[str]:
        """argv of that kubectl on this lab as its admin."""
        return [self.kubectl, "--kubeconfig", str(self.kubeconfig), *args]

    @property
    def guest_cache(self) -> Path:
        return cache_dir() / "guest-v6"  # GUEST_VERSION of lab/build-guest.sh

    @property
    def venv_bin(self) -> Path:
        return self.repo / ".venv" / "bin"


def netns(node: str) -> str:
    return NETNS_PREFIX + node


def netns_path(node: str) -> Path:
    return Path("/run/netns") / netns(node)


def mntns_path(node: str) -> Path:
    return RUN_DIR / "ns" / node


def node_names(count: int) -> list[str]:
    return [f"node-{i}" for i in range(1, count + 1)]
