"""The Kubernetes API, for what kopf's handler kwargs do not cover (other objects, status
writes from our own reconcilers, Events)."""

from __future__ import annotations

import base64
import datetime
import logging
import os

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION

PLURAL = "virtualmachines"
log = logging.getLogger(__name__)


def load(kubeconfig: str | None) -> None:
    """kubeconfig if given, else in-cluster; KUBECONFIG is set for kopf's own login too."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi()


def patch_vm_status(namespace: str, name: str, status: dict) -> dict:
    return _custom().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name,
                                                           {"status": status})


def json_patch_vm(namespace: str, name: str, ops: list[dict]) -> dict:
    """A JSON patch; callers lead with a `test` op so a concurrent change fails it."""
    return _custom().patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, ops,
                                             _content_type="application/json-patch+json")


def create_pod(body: dict) -> bool:
    """True if created, False if it already existed (a retry or a restarted controller)."""
    try:
        client.CoreV1Api().create_namespaced_pod(body["metadata"]["namespace"], body)
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        raise


def get_pod(namespace: str, name: str) -> dict | None:
    try:
        return client.ApiClient().sanitize_for_serialization(client.CoreV1Api().read_namespaced_pod(name, namespace))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def delete_pod(namespace: str, name: str, uid: str | None = None) -> None:
    try:
        client.CoreV1Api().delete_namespaced_pod(
            name, namespace, body=client.V1DeleteOptions(preconditions={"uid": uid} if uid else None))
    except ApiException as e:
        if e.status not in (404, 409):
            raise


def secret_data(namespace: str, name: str) -> dict[str, str] | None:
    try:
        secret = client.CoreV1Api().read_namespaced_secret(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


def secret_exists(namespace: str, name: str) -> bool:
    return secret_data(namespace, name) is not None


def post_event(body: dict, reason: str, message: str, warning: bool = False, component: str = "kopfvirt") -> None:
    """An Event on the object, as `kubectl describe` shows them. Never raises."""
    meta = body["metadata"]
    now = datetime.datetime.now(datetime.timezone.utc)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(api_version=body.get("apiVersion"), kind=body.get("kind"),
                                                 name=meta["name"], namespace=meta["namespace"],
                                                 uid=meta["uid"]),
        reason=reason, message=message[:1024], type="Warning" if warning else "Normal",
        source=client.V1EventSource(component=component), first_timestamp=now, last_timestamp=now,
        count=1, reporting_component=component, reporting_instance=component)
    try:
        client.CoreV1Api().create_namespaced_event(meta["namespace"], event)
    except Exception as e:  # an Event is worth a log line, never a failed reconcile
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e)


def patch_node_labels(node: str, labels: dict[str, str | None]) -> None:
    client.CoreV1Api().patch_node(node, {"metadata": {"labels": labels}})


def get_node_labels(node: str) -> dict[str, str]:
    return client.CoreV1Api().read_node(node).metadata.labels or {}
