"""kubectl-kopfvirt: everyday VM commands as a kubectl plugin (`kubectl kopfvirt ...`).

Named kopfvirt so it never clashes with KubeVirt's `virt`. Requests are written to the
VM object (spec or a timestamped annotation) and carried out by the controller and the
node's agent. console, vnc and xml are VM subresources of the Kubernetes API, asked as
the user (console_client.py): no exec into the operator's pods, no right in its namespace.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from . import GROUP, VERSION, __version__, console_client, names, vmmanifest
from .core import lifecycle, migration, pools, vmspec

PLURAL = names.VMS
DEFAULT_OPERATOR_NAMESPACE = "kopfvirt-system"  # the chart's and the manifests' namespace
MIGRATION_CONFIG = "kopfvirt-migration"
FIELD_MANAGER = "kubectl-kopfvirt"


class PluginError(RuntimeError):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VMs:
    def __init__(self, namespace: str | None, context: str | None, kubeconfig: str | None,
                 operator_namespace: str | None = None):
        config.load_kube_config(config_file=kubeconfig, context=context)
        # One client for every call, named as the field manager of its writes (passed to each
        # API: the krew archive's older kubernetes client has no process-wide default).
        self.client = client.ApiClient()
        self.client.user_agent = f"{FIELD_MANAGER}/{__version__}"
        self._operator_namespace = operator_namespace
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        namespace = namespace or (chosen.get("context") or {}).get("namespace") or "default"
        self.namespace, self.context, self.kubeconfig = namespace, context, kubeconfig
        self.api = client.CustomObjectsApi(self.client)
        self.core = client.CoreV1Api(self.client)

    def get(self, name: str) -> dict:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                raise PluginError(f"virtualmachine {self.namespace}/{name} not found") from None
            raise

    def operator_namespace(self) -> str:
        """Where the operator runs: as given, else where its agent pods are (when this user may
        list pods everywhere), else the chart's default."""
        if not self._operator_namespace:
            self._operator_namespace = DEFAULT_OPERATOR_NAMESPACE
            try:
                pods = self.core.list_pod_for_all_namespaces(label_selector=names.AGENT_SELECTOR, limit=1).items
                if pods:
                    self._operator_namespace = pods[0].metadata.namespace
            except ApiException as e:
                if e.status != 403:
                    raise
        return self._operator_namespace

    def patch(self, name: str, body: dict) -> None:
        self.api.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, body)

    def annotate(self, name: str, key: str) -> None:
        self.patch(name, {"metadata": {"annotations": {key: _now()}}})


def start(vms: VMs, name: str) -> str:
    strategy = vms.get(name)["spec"].get("runStrategy", "Always")
    if strategy == "Halted":
        vms.patch(name, {"spec": {"runStrategy": "Always"}})
        return "runStrategy Halted -> Always"
    vms.annotate(name, lifecycle.START_REQUESTED)
    return "start requested"


def stop(vms: VMs, name: str) -> str:
    strategy = vms.get(name)["spec"].get("runStrategy", "Always")
    if strategy in ("Always", "RerunOnFailure"):
        vms.patch(name, {"spec": {"runStrategy": "Halted"}})
        return f"runStrategy {strategy} -> Halted"
    vms.annotate(name, lifecycle.STOP_REQUESTED)
    return "stop requested"


def restart(vms: VMs, name: str) -> str:
    vms.get(name)
    vms.annotate(name, lifecycle.RESTART_REQUESTED)
    return "restart requested"


def pause(vms: VMs, name: str, paused: bool = True) -> str:
    vms.get(name)
    vms.patch(name, {"spec": {"paused": paused}})
    return "paused" if paused else "unpaused"


def _nodes(vms: VMs) -> list[migration.Node]:
    out = []
    for n in vms.core.list_node().items:
        ready = any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
        out.append(migration.Node(n.metadata.name, dict(n.metadata.labels or {}),
                                  schedulable=ready and not n.spec.unschedulable))
    return out


def _pool_specs(vms: VMs) -> dict:
    items = vms.api.list_cluster_custom_object(GROUP, VERSION, pools.PLURAL)["items"]
    return pools.specs_of({p["metadata"]["name"]: p for p in items})


def _cluster_options(vms: VMs) -> dict:
    """The cluster's migration defaults; the built-in ones when the ConfigMap is not readable."""
    try:
        data = vms.core.read_namespaced_config_map(MIGRATION_CONFIG, vms.operator_namespace()).data
    except ApiException:
        data = None
    return migration.cluster_config(data)[0]


def migrate(vms: VMs, name: str, offline: bool = False, target: str | None = None, dry_run: bool = False) -> str:
    vm_body = vms.get(name)
    spec = {"vmName": name, "mode": "Offline" if offline else "Live", **({"targetNode": target} if target else {})}
    if dry_run:
        meta = vm_body["metadata"]
        vm = vmspec.parse(meta["namespace"], name, meta["uid"], vm_body.get("spec") or {})
        refusal, verdicts = migration.preflight(vm, vm_body.get("status") or {}, spec, _cluster_options(vms), _nodes(vms),
                                                _pool_specs(vms))
        lines = [f"{spec['mode']} migration of {vms.namespace}/{name} from "
                 f"{(vm_body.get('status') or {}).get('nodeName') or '(not running)'}:",
                 f"  {'refused: ' + refusal[0] + ': ' + refusal[1] if refusal else 'would start'}",
                 f"{'NODE':<20} {'FIT':<4} {'REASON':<22} DETAIL"]
        lines += [f"{v.node:<20} {'yes' if v.fit else 'no':<4} {v.reason:<22} {v.message}" for v in verdicts]
        if refusal:
            raise PluginError("\n".join(lines), code=2)
        return "\n".join(lines)
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Migration",
            "metadata": {"generateName": f"{name}-migration-", "namespace": vms.namespace}, "spec": spec}
    created = vms.api.create_namespaced_custom_object(GROUP, VERSION, vms.namespace, "migrations", body)
    return f"migration {created['metadata']['name']} created ({spec['mode']})"


def migrate_cancel(vms: VMs, name: str) -> str:
    """Deletes the VM's unfinished Migrations: a deleted Migration is cancelled."""
    vms.get(name)
    cancelled = []
    for m in vms.api.list_namespaced_custom_object(GROUP, VERSION, vms.namespace, "migrations")["items"]:
        if m["spec"]["vmName"] == name and (m.get("status") or {}).get("phase") not in migration.FINAL_PHASES:
            vms.api.delete_namespaced_custom_object(GROUP, VERSION, vms.namespace, "migrations",
                                                    m["metadata"]["name"])
            cancelled.append(m["metadata"]["name"])
    if not cancelled:
        raise PluginError(f"virtualmachine {vms.namespace}/{name} has no unfinished migration")
    return "cancelling " + ", ".join(cancelled)


def _create_parser(sub) -> None:
    create = sub.add_parser("create", help="print a manifest made from flags (for kubectl apply -f -)")
    what = create.add_subparsers(dest="kind", required=True)
    c = what.add_parser("vm", help="a VirtualMachine", description=vmmanifest.__doc__.split("\n\n")[0])
    c.add_argument("name")
    c.add_argument("--cpu", type=int, default=1, help="virtual CPU cores (default 1)")
    c.add_argument("--memory", default="1Gi", help="guest memory (default 1Gi)")
    c.add_argument("--run-strategy", default="Always", help="Always (default), RerunOnFailure, Once, Manual, Halted")
    c.add_argument("--image", metavar="POOL/VOLUME", help="root disk: a copy-on-write overlay on this base image")
    c.add_argument("--disk", action="append", default=[], metavar="NAME:POOL/VOLUME",
                   help="a StoragePool volume attached as it is (repeatable)")
    c.add_argument("--empty-disk", action="append", default=[], metavar="NAME:SIZE",
                   help="a new empty disk, e.g. data:10Gi (repeatable)")
    c.add_argument("--cloud-init-secret", metavar="SECRET", help="cloud-init NoCloud data from this Secret")
    c.add_argument("--kernel", metavar="POOL/VOLUME", help="boot this kernel directly")
    c.add_argument("--initrd", metavar="POOL/VOLUME", help="its initrd (a volume of the same pool)")
    c.add_argument("--cmdline", help="its command line")
    c.add_argument("--interface", action="append", default=[], metavar="NAME", help="a virtio NIC (repeatable)")
    c.add_argument("--storage-pool", metavar="POOL", help="where its own disks are made (default: the default pool)")
    c.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE", help="(repeatable)")
    c.add_argument("--eviction-strategy", help="LiveMigrate, Stop or None")
    c.add_argument("--vnc", action="store_true", help="a VNC display (kubectl kopfvirt vnc)")
    c.add_argument("--guest-agent", action="store_true", help="the QEMU guest agent channel")


def _create(args) -> dict:
    return vmmanifest.vm_manifest(
        args.name, args.namespace, cpu=args.cpu, memory=args.memory, run_strategy=args.run_strategy,
        image=args.image, disks=args.disk, empty_disks=args.empty_disk, cloud_init_secret=args.cloud_init_secret,
        kernel=args.kernel, initrd=args.initrd, cmdline=args.cmdline, interfaces=args.interface,
        storage_pool=args.storage_pool, node_selector=args.node_selector, vnc=args.vnc,
        guest_agent=args.guest_agent, eviction_strategy=args.eviction_strategy)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kubectl kopfvirt", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--namespace")
    p.add_argument("--context")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--operator-namespace", default=os.environ.get("KOPFVIRT_NAMESPACE"),
                   help="where Kopfvirt runs (default: found from its agent pods, else kopfvirt-system)")
    sub = p.add_subparsers(dest="command", required=True)
    for command, text in (("start", "start a stopped VM"), ("stop", "stop a VM gracefully"),
                          ("restart", "restart a running VM"), ("pause", "pause a running VM"),
                          ("unpause", "resume a paused VM"),
                          ("console", "attach to the serial console (Ctrl+] leaves)"),
                          ("vnc", "open a local port for a VNC viewer to the VM's display"),
                          ("xml", "show the domain XML: the live one, or the definition with --inactive")):
        c = sub.add_parser(command, help=text)
        c.add_argument("name")
        if command == "xml":
            c.add_argument("--inactive", action="store_true", help="the persistent definition, not the live XML")
        if command == "vnc":
            c.add_argument("--port", type=int, default=0, help="the local port (default: any free one)")
            c.add_argument("--address", default="127.0.0.1", help="the local address to listen on")
    c = sub.add_parser("migrate", help="move a running VM to another node (a Migration object)")
    c.add_argument("name")
    c.add_argument("--offline", action="store_true", help="shut down here, boot there (default: live)")
    c.add_argument("--target", metavar="NODE", help="the node to move to (default: kube-scheduler picks)")
    c.add_argument("--dry-run", action="store_true", help="only show each node's verdict; exit 2 if refused")
    c = sub.add_parser("migrate-cancel", help="cancel the VM's unfinished migration (the VM stays put)")
    c.add_argument("name")
    c = sub.add_parser("version", help="this plugin's version and the operator's (the API's subresource server)")
    c.add_argument("--client", action="store_true", help="only this plugin's, without asking the cluster")
    _create_parser(sub)
    args = p.parse_args(argv)
    try:
        if args.command == "create":
            print(yaml.safe_dump(_create(args), sort_keys=False), end="")
            return
        if args.command == "version" and args.client:
            print(f"Client Version: {__version__}")
            return
        vms = VMs(args.namespace, args.context, args.kubeconfig, args.operator_namespace)
        if args.command == "version":
            print(f"Client Version: {__version__}\nServer Version: {console_client.server_version()}")
            return
        if args.command == "console":
            console_client.console(vms.namespace, args.name)
            return
        if args.command == "vnc":
            console_client.vnc(vms.namespace, args.name, args.port, args.address)
            return
        if args.command == "xml":
            sys.stdout.write(console_client.xml(vms.namespace, args.name, args.inactive))
            return
        if args.command == "migrate":
            print(migrate(vms, args.name, args.offline, args.target, args.dry_run))
            return
        action = {"start": start, "stop": stop, "restart": restart, "pause": pause, "migrate-cancel": migrate_cancel,
                  "unpause": lambda v, n: pause(v, n, paused=False)}[args.command]
        print(f"virtualmachine {vms.namespace}/{args.name}: {action(vms, args.name)}")
    except vmmanifest.FlagError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except console_client.SubresourceError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except PluginError as e:
        print(f"error: {e}" if e.code == 1 else str(e), file=sys.stderr if e.code == 1 else sys.stdout)
        sys.exit(e.code)
