"""The node agent's look for stray domains (core/strays.py says which and what to do).

Every resync, and a moment after libvirt reports a domain of no VM of this node's, the
agent lists its libvirtd's domains. Those of VMs labelled for this node belong to the
reconciler; any other Kopfvirt domain is judged from a fresh read of its VM, once it has
been seen for GRACE_SECONDS (a hand-off or a watch may lag that long). A redundant copy is
destroyed with an Event on its VM (on the Node when the VM is gone); one that is not
proven redundant is reported: condition StrayDomain on its VM, an Event, and the gauge
kopfvirt_stray_domains, until someone removes it.
"""

from __future__ import annotations

import logging
import threading
import time

import libvirt
from kubernetes.client.rest import ApiException
from prometheus_client import Counter, Gauge

from ..clients import kube
from ..core import conditions, domainxml, strays, vmspec

log = logging.getLogger("kopfvirt.agent.strays")
GRACE_SECONDS = 10.0
REPORTED = Gauge("kopfvirt_stray_domains", "Domains running on this node that no VM places here and that "
                 "are not proven redundant: left running for a human to judge.", ["node"])
DESTROYED = Counter("kopfvirt_stray_domains_destroyed", "Stray domains the agent destroyed, by why it could.",
                    ["node", "reason"])


class Strays:
    def __init__(self, agent):
        self.agent = agent
        self.first_seen: dict[str, float] = {}  # uid -> when a scan first found it stray
        self.reported: dict[str, tuple[str, str]] = {}  # uid -> its VM (namespace, name), condition set
        self.swept = False  # the conditions an earlier run of this agent set, read back once
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None

    def notice(self) -> None:
        """libvirt reported a domain of no VM of ours: look once the grace has passed."""
        if self.timer is None or not self.timer.is_alive():
            self.timer = threading.Timer(GRACE_SECONDS + 1, self._scan_logged)
            self.timer.daemon = True
            self.timer.start()

    def _scan_logged(self) -> None:
        self.timer = None  # a stray still in its grace asks for the next look
        try:
            self.scan()
        except Exception:  # the next resync scans again
            log.exception("looking for stray domains")

    def scan(self) -> None:
        with self.lock:
            node = self.agent.node
            if not self.swept:
                self._read_back_reports()
            present = set()
            for uid, state, xml in self.agent.hv.domains():
                owner = domainxml.owner(xml)
                if owner is None or uid in self.agent.vms:
                    continue  # not ours, or a VM of this node: the reconciler's
                present.add(uid)
                first = self.first_seen.setdefault(uid, time.monotonic())
                if time.monotonic() - first >= GRACE_SECONDS:
                    self._judge(uid, state, owner)
                elif state in ("running", "paused"):
                    self.notice()  # a running copy is judged as soon as its grace ends
            for uid in set(self.first_seen) - present:
                del self.first_seen[uid]
            for uid in set(self.reported) - present:
                self._clear(uid, f"no copy runs on {node} any more")
            REPORTED.labels(node=node).set(len(self.reported))

    def _judge(self, uid: str, state: str, owner: tuple[str, str, str]) -> None:
        node, (namespace, name, _) = self.agent.node, owner
        vm = kube.get_object(namespace, name)
        where = strays.placement(node, uid, vm)
        its_node = ((vm or {}).get("status") or {}).get("nodeName")
        on_its_node = None
        if where == strays.ELSEWHERE and its_node and state in ("running", "paused"):
            try:
                on_its_node, _ = self.agent.hv.remote(self.agent.migrator.node_uri(its_node), uid)
            except (libvirt.libvirtError, RuntimeError) as e:
                log.warning("stray domain %s of VM %s/%s: cannot ask %s: %s", uid, namespace, name, its_node, e)
        verdict = strays.verdict(where, state in ("running", "paused", "shuttingdown"), on_its_node)
        if verdict == strays.KEEP:
            self.first_seen.pop(uid, None)
            return
        if verdict == strays.DESTROY:
            self.agent.hv.remove(uid)
            self.first_seen.pop(uid, None)
            if where == strays.GONE:
                why = f"its VM {namespace}/{name} (uid {uid}) no longer exists"
                DESTROYED.labels(node=node, reason="VMGone").inc()
                self.agent.event(kube.node_reference(node), "StrayDomainDestroyed",
                                 f"domain {vmspec.domain_name(namespace, name)} destroyed on {node}: {why}", warning=True)
            else:
                why = f"the VM runs on {its_node} ({on_its_node})"
                DESTROYED.labels(node=node, reason="RunsElsewhere").inc()
                self.agent.event(vm, "StrayDomainDestroyed",
                                 f"a second copy of this VM's domain on {node} was destroyed: {why}", warning=True)
            log.warning("stray domain %s of VM %s/%s destroyed on %s: %s", uid, namespace, name, node, why)
            if uid in self.reported:
                self._clear(uid, f"the copy on {node} was destroyed: {why}")
            return
        if uid not in self.reported:
            message = (f"{node}: a copy of this VM's domain runs on {node}, where the cluster does not place "
                       f"it, and the VM's own node ({its_node or 'none: the VM is not running'}) does not run it; "
                       f"left running: destroy it there (virsh destroy {uid}) or stop the VM's other copy")
            if self._set(vm, True, "StrayDomain", message):
                self.reported[uid] = (namespace, name)
                self.agent.event(vm, "StrayDomain", message, warning=True)
                log.warning("stray domain %s of VM %s/%s on %s: %s", uid, namespace, name, node, message)

    def _clear(self, uid: str, why: str) -> None:
        namespace, name = self.reported[uid]
        vm = kube.get_object(namespace, name)
        if vm is None or vm["metadata"]["uid"] != uid or self._set(vm, False, "NoStrayDomain", why):
            del self.reported[uid]

    def _set(self, vm: dict, status: bool, reason: str, message: str) -> bool:
        """The VM's StrayDomain condition, written only if the VM did not change since read
        (its owner writes its status too); False when it did: the next scan tries again."""
        meta, current = vm["metadata"], vm.get("status") or {}
        conds = conditions.set_condition(current.get("conditions"), strays.CONDITION, status, reason, message,
                                         meta.get("generation"))
        ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
               {"op": "add", "path": "/status" if not current else "/status/conditions",
                "value": {"conditions": conds} if not current else conds}]
        try:
            kube.json_patch(meta["namespace"], meta["name"], ops, status=True)
            return True
        except ApiException as e:
            if e.status in (404, 409, 422):
                return False
            raise

    def _read_back_reports(self) -> None:
        """The StrayDomain conditions this node's agent set before it restarted, so that
        they are cleared once their copies are gone."""
        prefix = f"{self.agent.node}: "
        for vm in kube.list_objects(kube.PLURAL):
            found = conditions.get((vm.get("status") or {}).get("conditions"), strays.CONDITION) or {}
            if found.get("status") == "True" and found.get("message", "").startswith(prefix):
                self.reported[vm["metadata"]["uid"]] = (vm["metadata"]["namespace"], vm["metadata"]["name"])
        self.swept = True
