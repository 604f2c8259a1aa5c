"""The lab's node stand-in: what a kubelet does towards the API, and nothing more.

There is no container runtime in the lab. This process registers its Node with capacity
and a Ready condition, renews the node Lease, reports pods bound to the node Running
(they are reservation pods whose container only waits) and finishes their deletion as a
kubelet would, so scheduling, eviction and garbage collection behave as in a cluster.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from .layout import K8S_VERSION

log = logging.getLogger("kopfvirt.lab.kubelet")
LEASE_SECONDS = 40
RENEW_EVERY = 10
STATUS_EVERY = 30


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _ts(t: datetime.datetime | None = None) -> str:
    return (t or _now()).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeStandIn:
    def __init__(self, node: str, ip: str, cpu: str, memory: str, pods: str = "110"):
        self.node, self.ip = node, ip
        self.capacity = {"cpu": cpu, "memory": memory, "pods": pods, "ephemeral-storage": "100Gi"}
        self.core = client.CoreV1Api()
        self.coord = client.CoordinationV1Api()
        self.started = _now()

    def _conditions(self) -> list[dict]:
        now = _ts()
        ok = {"status": "False", "lastHeartbeatTime": now, "lastTransitionTime": _ts(self.started)}
        return [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kopfvirt lab node stand-in is posting ready status",
             "lastHeartbeatTime": now, "lastTransitionTime": _ts(self.started)},
            {**ok, "type": "MemoryPressure", "reason": "KubeletHasSufficientMemory", "message": "ok"},
            {**ok, "type": "DiskPressure", "reason": "KubeletHasNoDiskPressure", "message": "ok"},
            {**ok, "type": "PIDPressure", "reason": "KubeletHasSufficientPID", "message": "ok"},
        ]

    def _status(self) -> dict:
        return {
            "capacity": self.capacity, "allocatable": self.capacity,
            "conditions": self._conditions(),
            "addresses": [{"type": "InternalIP", "address": self.ip},
                          {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"kubeletVersion": K8S_VERSION, "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": "amd64",
                         "containerRuntimeVersion": "kopfvirt-lab://none", "kernelVersion": "",
                         "osImage": "kopfvirt lab node", "machineID": "", "systemUUID": "",
                         "bootID": ""},
        }

    def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": {
                    "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64", "kopfvirt.io/lab-node": "true"}}}
        try:
            self.core.create_node(body)
            log.info("registered node %s", self.node)
        except ApiException as e:
            if e.status != 409:
                raise
        self.post_status()

    def post_status(self) -> None:
        self.core.patch_node_status(self.node, {"status": self._status()})

    def renew_lease(self) -> None:
        body = {"metadata": {"name": self.node, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                         "renewTime": _now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
        try:
            self.coord.patch_namespaced_lease(self.node, "kube-node-lease", body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def heartbeat_forever(self) -> None:
        last_status = 0.0
        while True:
            try:
                self.renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self.post_status()
                    last_status = time.monotonic()
            except Exception:  # keep beating: a blip of the API must not make the node NotReady
                log.exception("heartbeat of %s failed", self.node)
            time.sleep(RENEW_EVERY)

    def handle_pod(self, pod) -> None:
        meta = pod.metadata
        if meta.deletion_timestamp:
            # The container (which only waits) is gone at once; finish as a kubelet does.
            try:
                self.core.delete_namespaced_pod(meta.name, meta.namespace, grace_period_seconds=0,
                                                body=client.V1DeleteOptions(
                                                    grace_period_seconds=0,
                                                    preconditions={"uid": meta.uid}))
                log.info("finished deletion of pod %s/%s", meta.namespace, meta.name)
            except ApiException as e:
                if e.status not in (404, 409):
                    raise
            return
        if pod.status.phase in ("Running", "Succeeded", "Failed"):
            return
        now = _ts()
        conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                      for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
        statuses = [{"name": c.name, "image": c.image, "imageID": "", "ready": True, "started": True,
                     "restartCount": 0, "state": {"running": {"startedAt": now}}}
                    for c in pod.spec.containers]
        self.core.patch_namespaced_pod_status(meta.name, meta.namespace, {"status": {
            "phase": "Running", "conditions": conditions, "hostIP": self.ip,
            "hostIPs": [{"ip": self.ip}], "startTime": now, "containerStatuses": statuses}})
        log.info("pod %s/%s is Running", meta.namespace, meta.name)

    def pods_forever(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while True:
            try:
                for pod in self.core.list_pod_for_all_namespaces(field_selector=selector).items:
                    self.handle_pod(pod)
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces,
                                              field_selector=selector, timeout_seconds=300)
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self.handle_pod(event["object"])
            except Exception:
                log.exception("pod watch of %s failed; retrying", self.node)
                time.sleep(2)


def run(node: str, ip: str, kubeconfig: str, cpu: str, memory: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config.load_kube_config(kubeconfig)
    stand_in = NodeStandIn(node, ip, cpu, memory)
    while True:
        try:
            stand_in.register()
            break
        except Exception:
            log.exception("registering %s failed; retrying", node)
            time.sleep(2)
    threading.Thread(target=stand_in.heartbeat_forever, daemon=True, name="heartbeat").start()
    stand_in.pods_forever()
