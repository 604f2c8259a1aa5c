"""The Kubernetes API, for what kopf's handler kwargs do not cover (other objects)."""

from __future__ import annotations

import os

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION

PLURAL = "virtualmachines"


def load(kubeconfig: str | None) -> None:
    """kubeconfig if given, else in-cluster; KUBECONFIG is set for kopf's own login too."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()


def patch_vm_status(namespace: str, name: str, status: dict) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status})


def patch_vm_labels(namespace: str, name: str, labels: dict) -> None:
    client.CustomObjectsApi().patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"labels": labels}})


def get_vm(namespace: str, name: str) -> dict | None:
    try:
        return client.CustomObjectsApi().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def create_pod(body: dict) -> bool:
    """True if created, False if it already existed (a retry or a restarted controller)."""
    try:
        client.CoreV1Api().create_namespaced_pod(body["metadata"]["namespace"], body)
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        raise
