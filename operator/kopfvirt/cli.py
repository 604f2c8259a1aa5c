"""The `kopfvirt` command: one entry point for the controller, the node agent and the lab."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .core.reservation import DEFAULT_POD_SETTINGS, PodSettings


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _repo() -> Path:
    """The checkout the lab belongs to: this source tree, else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "lab" / "build-kubernetes.sh").exists() else Path.cwd()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kopfvirt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("controller", help="run the cluster-wide controller")
    c.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster ServiceAccount)")
    c.add_argument("--resync-seconds", type=float, default=30, help="period of the full pass over all VMs")
    c.add_argument("--webhook-host", help="address the API server calls the admission webhook at (none: no webhook)")
    c.add_argument("--webhook-port", type=int, default=9443)
    c.add_argument("--webhook-cert", help="serving certificate (PEM) for --webhook-host")
    c.add_argument("--webhook-key", help="its private key (PEM)")
    c.add_argument("--webhook-ca", help="the CA that signed it, given to the API server as caBundle")
    c.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kopfvirt-system"),
                   help="the operator's namespace (ConfigMap kopfvirt-migration)")
    c.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: none)")
    c.add_argument("--reservation-image", default=DEFAULT_POD_SETTINGS.image,
                   help="the image reservation pods run (the Dockerfile's reservation target)")
    c.add_argument("--cpu-allocation-ratio", type=_positive, default=DEFAULT_POD_SETTINGS.cpu_allocation_ratio,
                   help="vCPUs per CPU a reservation pod requests (a vCPU requests 1/ratio of a CPU)")

    a = sub.add_parser("agent", help="run the node agent of one node")
    a.add_argument("--node-name", default=os.environ.get("NODE_NAME"), required="NODE_NAME" not in os.environ)
    a.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    a.add_argument("--libvirt-uri", default="qemu:///system")
    a.add_argument("--virt-type", choices=("qemu", "kvm"), default="qemu",
                   help="qemu (TCG, works everywhere) unless KVM is known to work on the node")
    a.add_argument("--vm-network", default="kopfvirt",
                   help="the node's libvirt network that interfaces with network 'default' join")
    a.add_argument("--resync-seconds", type=float, default=30, help="period of the full pass over the node's VMs")
    a.add_argument("--hide-cpu-features", default="", metavar="F1,F2",
                   help="CPU features not to offer guests here (narrow a newer node to its older peers)")
    a.add_argument("--migration-transport", choices=("tls", "tcp"), default="tls",
                   help="how libvirtd reaches the target's libvirtd: tls (certificates the controller issues), "
                        "or tcp, for the lab only")
    a.add_argument("--sysfs-root", default="/sys", help="where the node's sysfs is (a built tree in tests and the lab)")
    a.add_argument("--pci-ids", help="the pci.ids database (default: where Debian's pci.ids or hwdata puts it)")
    a.add_argument("--device-scan-seconds", type=float, default=10, help="period of the PCI device scan")
    a.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kopfvirt-system"),
                   help="the operator's namespace (its ConfigMaps)")
    a.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: none)")
    a.add_argument("--lease-dir", help="libvirt's lockd file_lockspace_dir, on storage every node shares: "
                                       "each writable network disk gets a lease there (default: none)")

    lab = sub.add_parser("lab", help="the lab: a real control plane and libvirt nodes on this machine")
    lsub = lab.add_subparsers(dest="lab_command", required=True)
    up = lsub.add_parser("up", help="start (or repair) the lab")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--virt-type", choices=("qemu", "kvm"), default="qemu")
    lsub.add_parser("down", help="remove everything the lab made but the build cache")
    lsub.add_parser("status", help="show the lab's parts and their health")
    ex = lsub.add_parser("exec", help="run a command inside a lab node's namespaces")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "controller":
        from .controller.handlers import Webhook
        from .controller.main import main as run
        webhook = Webhook(args.webhook_host, args.webhook_port, args.webhook_cert, args.webhook_key,
                          args.webhook_ca) if args.webhook_host else None
        run(args.kubeconfig, args.resync_seconds, webhook, args.namespace, args.metrics_port,
            PodSettings(args.reservation_image, args.cpu_allocation_ratio))
    elif args.command == "agent":
        from .agent.main import main as run
        run(args.node_name, args.kubeconfig, args.libvirt_uri, args.virt_type, args.vm_network,
            args.resync_seconds, tuple(f for f in args.hide_cpu_features.split(",") if f),
            args.migration_transport, args.sysfs_root, args.pci_ids, args.device_scan_seconds, args.namespace,
            args.metrics_port, args.lease_dir)
    else:
        sys.exit(_lab(args))


def _lab(args) -> int:
    from .lab.errors import LabError
    from .lab.layout import Lab
    lab = Lab(_repo())
    try:
        if args.lab_command == "up":
            from .lab.manage import up
            up(lab, args.nodes, args.virt_type)
        elif args.lab_command == "down":
            from .lab.manage import down
            down(lab)
        elif args.lab_command == "status":
            from .lab.manage import status
            return status(lab)
        elif args.lab_command == "exec":
            from .lab.manage import exec_
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                raise LabError("nothing to run: kopfvirt lab exec NODE -- CMD...")
            exec_(lab, args.node, argv)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
