"""kubectl-kopfvirt: everyday VM commands as a kubectl plugin (`kubectl kopfvirt ...`).

Named kopfvirt so it never clashes with KubeVirt's `virt`. Requests are written to the
VM object (spec or a timestamped annotation) and carried out by the controller and the
node's agent; console and xml reach the node's libvirt through the agent pod
(`kubectl exec`) or, in the lab, through `kopfvirt lab exec`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from . import GROUP, VERSION
from .core import lifecycle

PLURAL = "virtualmachines"
AGENT_NAMESPACE = "kopfvirt-system"
AGENT_SELECTOR = "app.kubernetes.io/name=kopfvirt,app.kubernetes.io/component=agent"
LAB_NODE_LABEL = f"{GROUP}/lab-node"


class PluginError(RuntimeError):
    pass


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class VMs:
    def __init__(self, namespace: str | None, context: str | None, kubeconfig: str | None):
        config.load_kube_config(config_file=kubeconfig, context=context)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
        chosen = next((c for c in contexts if c["name"] == context), active) if context else active
        namespace = namespace or (chosen.get("context") or {}).get("namespace") or "default"
        self.namespace, self.context, self.kubeconfig = namespace, context, kubeconfig
        self.api = client.CustomObjectsApi()

    def get(self, name: str) -> dict:
        try:
            return self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as e:
            if e.status == 404:
                raise PluginError(f"virtualmachine {self.namespace}/{name} not found") from None
            raise

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


def _on_node(vms: VMs, name: str, virsh_args: list[str], interactive: bool = False) -> int:
    """Run virsh against the VM's node: through the agent pod, or in the lab its namespaces."""
    vm = vms.get(name)
    node = (vm.get("status") or {}).get("nodeName")
    if not node:
        raise PluginError(f"virtualmachine {vms.namespace}/{name} is not running on any node")
    domain = f"{vms.namespace}_{name}"
    virsh = ["virsh", "-c", "qemu:///system", *virsh_args, domain]
    labels = client.CoreV1Api().read_node(node).metadata.labels or {}
    if labels.get(LAB_NODE_LABEL) == "true":
        kopfvirt = shutil.which("kopfvirt") or os.path.join(os.path.dirname(sys.executable), "kopfvirt")
        argv = [kopfvirt, "lab", "exec", node, "--", *virsh]
    else:
        pods = client.CoreV1Api().list_namespaced_pod(AGENT_NAMESPACE, label_selector=AGENT_SELECTOR,
                                                      field_selector=f"spec.nodeName={node}").items
        if not pods:
            raise PluginError(f"no kopfvirt agent pod runs on {node}")
        kubectl = ["kubectl", *(["--kubeconfig", vms.kubeconfig] if vms.kubeconfig else []),
                   *(["--context", vms.context] if vms.context else [])]
        argv = [*kubectl, "exec", "-n", AGENT_NAMESPACE, *(["-it"] if interactive else []),
                pods[0].metadata.name, "--", *virsh]
    return subprocess.call(argv)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kubectl kopfvirt", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--namespace")
    p.add_argument("--context")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    sub = p.add_subparsers(dest="command", required=True)
    for command, text in (("start", "start a stopped VM"), ("stop", "stop a VM gracefully"),
                          ("restart", "restart a running VM"), ("pause", "pause a running VM"),
                          ("unpause", "resume a paused VM"),
                          ("console", "attach to the serial console (Ctrl+] leaves)"),
                          ("xml", "show the domain XML: the live one, or the definition with --inactive")):
        c = sub.add_parser(command, help=text)
        c.add_argument("name")
        if command == "xml":
            c.add_argument("--inactive", action="store_true", help="the persistent definition, not the live XML")
    args = p.parse_args(argv)
    try:
        vms = VMs(args.namespace, args.context, args.kubeconfig)
        if args.command == "console":
            sys.exit(_on_node(vms, args.name, ["console", "--force"], interactive=True))
        if args.command == "xml":
            sys.exit(_on_node(vms, args.name, ["dumpxml", *(["--inactive"] if args.inactive else [])]))
        action = {"start": start, "stop": stop, "restart": restart, "pause": pause,
                  "unpause": lambda v, n: pause(v, n, paused=False)}[args.command]
        print(f"virtualmachine {vms.namespace}/{args.name}: {action(vms, args.name)}")
    except PluginError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
