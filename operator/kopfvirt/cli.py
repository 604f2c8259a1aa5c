"""The `kopfvirt` command: one entry point for the controller and the node agent."""

from __future__ import annotations

import argparse
import os
import socket
import uuid

from . import NODE_TLS_DIR
from .core.reservation import DEFAULT_POD_POLICY, DEFAULT_POD_SETTINGS, PodPolicy, PodSettings
from .names import AGENT_STREAM_PORT
from .runtime import configure_logging


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kopfvirt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="log lines as text, or as JSON objects with namespace, name, node and migration "
                             "fields for log pipelines")
    c = sub.add_parser("controller", help="run the cluster-wide controller", parents=[common])
    c.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (default: in-cluster ServiceAccount)")
    c.add_argument("--resync-seconds", type=float, default=30, help="period of the full pass over all VMs")
    c.add_argument("--webhook-host", help="address the API server calls the admission webhook at (none: no webhook)")
    c.add_argument("--webhook-port", type=int, default=9443)
    c.add_argument("--webhook-secret", help="keep the webhook's CA and serving certificate in this Secret of "
                                            "--namespace: issued, renewed and given to the webhook configuration "
                                            "by the controller (instead of --webhook-cert/-key/-ca)")
    c.add_argument("--webhook-configuration", default="kopfvirt",
                   help="the ValidatingWebhookConfiguration whose caBundle --webhook-secret's CA becomes")
    c.add_argument("--webhook-cert-dir", default="/run/kopfvirt/webhook",
                   help="where the webhook server reads --webhook-secret's certificate from (written here)")
    c.add_argument("--cert-check-seconds", type=_positive, default=600,
                   help="how often --webhook-secret's certificate and the caBundle are checked")
    c.add_argument("--webhook-cert", help="serving certificate (PEM) for --webhook-host, issued elsewhere "
                                          "(cert-manager)")
    c.add_argument("--webhook-key", help="its private key (PEM)")
    c.add_argument("--webhook-ca", help="the CA that signed it, given to the API server as caBundle")
    c.add_argument("--api-host", help="the Service name kube-apiserver reaches the VM subresources (console, vnc, "
                                      "xml) at, an aggregated API; needs --webhook-secret (none: not served)")
    c.add_argument("--api-port", type=int, default=8443)
    c.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kopfvirt-system"),
                   help="the operator's namespace (ConfigMap kopfvirt-migration)")
    c.add_argument("--leader-election-lease", metavar="NAME",
                   help="replicas elect the one that writes by this Lease of --namespace (none: this one writes)")
    c.add_argument("--identity", default=os.environ.get("POD_NAME")
                   or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
                   help="this replica's name in the Lease (default: $POD_NAME, else the host name and a random suffix)")
    c.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port (0: none)")
    c.add_argument("--health-port", type=int, default=0, help="GET /healthz port for probes (0: none)")
    c.add_argument("--reservation-image", default=DEFAULT_POD_SETTINGS.image,
                   help="the image reservation pods run (the Dockerfile's reservation target)")
    c.add_argument("--cpu-allocation-ratio", type=_positive, default=DEFAULT_POD_SETTINGS.cpu_allocation_ratio,
                   help="vCPUs per CPU a reservation pod requests (a vCPU requests 1/ratio of a CPU)")
    c.add_argument("--allowed-priority-classes", default="", metavar="C1,C2",
                   help="the PriorityClasses VMs may name (default: any but the system-* ones, never allowed)")
    c.add_argument("--forbidden-toleration-keys", metavar="K1,K2",
                   default=",".join(DEFAULT_POD_POLICY.forbidden_toleration_keys),
                   help="taint keys VMs may not tolerate (a toleration without a key is never allowed)")
    c.add_argument("--pod-affinity-across-namespaces", action="store_true",
                   help="let VMs' pod (anti-)affinity name pods of other namespaces")

    a = sub.add_parser("agent", help="run the node agent of one node", parents=[common])
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
    a.add_argument("--tls-dir", default=NODE_TLS_DIR,
                   help="where the node's libvirt certificate for migration over TLS is kept (issued through a "
                        "CertificateSigningRequest; libvirtd and QEMU read it there)")
    a.add_argument("--cert-check-seconds", type=_positive, default=600,
                   help="how often the node's certificate is checked (renewed 30 days before it expires)")
    a.add_argument("--serial-log-max-bytes", type=int, default=2 << 20,
                   help="each guest's serial log on the node is cut past this (the older part kept once as "
                        "<log>.1); a Node's annotation kopfvirt.io/serial-log-max-bytes overrides it")
    a.add_argument("--sysfs-root", default="/sys", help="where the node's sysfs is (a built tree in tests and the lab)")
    a.add_argument("--proc-root", default="/proc",
                   help="where the host's /proc is: the agent reads <proc-root>/1/mountinfo, <proc-root>/swaps and "
                        "<proc-root>/1/net/route to keep what the host uses from passthrough (PID 1 must be the "
                        "host's: mount the host's /proc, or run with hostPID)")
    a.add_argument("--pci-ids", help="the pci.ids database (default: where Debian's pci.ids or hwdata puts it)")
    a.add_argument("--device-scan-seconds", type=float, default=10, help="period of the PCI device scan")
    a.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "kopfvirt-system"),
                   help="the operator's namespace (its ConfigMaps)")
    a.add_argument("--stream-port", type=int, default=AGENT_STREAM_PORT,
                   help="port of the console, VNC and XML endpoint the controller relays users to (0: none)")
    a.add_argument("--controller-name", help="the common name of the controller's certificate, the one client "
                                             "of that endpoint (default: kopfvirt-webhook.<namespace>.svc)")
    a.add_argument("--kubelet-dir", default="/var/lib/kubelet",
                   help="the kubelet's root directory on the node (its pods/ mounted here, HostToContainer): the "
                        "cloud-init Secrets of a VM are volumes of its pod there")
    a.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port (0: none)")
    a.add_argument("--health-port", type=int, default=0, help="GET /healthz port for probes (0: none)")
    a.add_argument("--lease-dir", help="libvirt's lockd file_lockspace_dir, on storage every node shares: "
                                       "each writable network disk gets a lease there (default: none)")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, node=getattr(args, "node_name", None) or "")
    if args.command == "controller":
        from .controller.apiserver import API_SERVICE
        from .controller.certificates import WebhookCertificates
        from .controller.handlers import Webhook
        from .controller.main import main as run
        webhook = certs = None
        if args.webhook_host and args.webhook_cert:
            webhook = Webhook(args.webhook_host, args.webhook_port, args.webhook_cert, args.webhook_key,
                              args.webhook_ca)
        elif args.webhook_host and args.webhook_secret:
            certs = WebhookCertificates(args.namespace, args.webhook_secret,
                                        [args.webhook_host, *([args.api_host] if args.api_host else [])],
                                        args.webhook_configuration, args.webhook_cert_dir,
                                        api_service=API_SERVICE if args.api_host else None)
            webhook = Webhook(args.webhook_host, args.webhook_port, certs.certfile, certs.keyfile, certs.cafile)
        elif args.webhook_host:
            parser.error("--webhook-host needs --webhook-secret, or --webhook-cert, --webhook-key and --webhook-ca")
        if args.api_host and not certs:
            parser.error("--api-host needs --webhook-host and --webhook-secret: the agents trust the operator's CA")
        run(args.kubeconfig, args.resync_seconds, webhook, args.namespace, args.metrics_port,
            PodSettings(args.reservation_image, args.cpu_allocation_ratio, PodPolicy(
                _names(args.allowed_priority_classes), _names(args.forbidden_toleration_keys),
                args.pod_affinity_across_namespaces)), certs, args.cert_check_seconds,
            args.health_port, args.leader_election_lease, args.identity, args.api_port if args.api_host else 0)
    elif args.command == "agent":
        from .agent.main import main as run
        run(args.node_name, args.kubeconfig, args.libvirt_uri, args.virt_type, args.vm_network,
            args.resync_seconds, _names(args.hide_cpu_features),
            args.tls_dir, args.sysfs_root, args.pci_ids, args.device_scan_seconds, args.namespace,
            args.metrics_port, args.lease_dir, args.health_port, args.cert_check_seconds,
            args.serial_log_max_bytes, args.stream_port,
            args.controller_name or f"kopfvirt-webhook.{args.namespace}.svc", args.kubelet_dir,
            proc_root=args.proc_root)
