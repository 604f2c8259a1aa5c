"""The Kubernetes API, for what kopf's handler kwargs do not cover (other objects, status
writes from our own reconcilers, Events)."""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import threading

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import GROUP, VERSION, __version__, names

PLURAL = names.VMS
log = logging.getLogger(__name__)


# Who writes: the API server names a write's field manager (managedFields) after the
# client's User-Agent up to its "/", so each process's writes carry its own name.
USER_AGENT = f"kopfvirt/{__version__}"


def load(kubeconfig: str | None, manager: str = "kopfvirt") -> None:
    """kubeconfig if given, else in-cluster; KUBECONFIG is set for kopf's own login too.
    `manager`: the field manager this process's writes show (kopfvirt-controller, ...)."""
    global USER_AGENT, _shared
    USER_AGENT = f"{manager}/{__version__}"
    _shared = None  # the next call's client takes the configuration loaded here
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig
        config.load_kube_config(kubeconfig)
    else:
        config.load_incluster_config()


# No call may hold a reconcile (and the lock of its VM) on an API server that stopped
# answering: it fails after this (connect, read) and the next event or resync retries it.
REQUEST_TIMEOUT = (5, 30)


class _TimedClient(client.ApiClient):
    """An ApiClient whose every request has REQUEST_TIMEOUT unless the call names its own
    (the generated client's default is to wait forever), named after this process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user_agent = USER_AGENT

    def call_api(self, method, url, header_params=None, body=None, post_params=None, _request_timeout=None):
        return super().call_api(method, url, header_params, body, post_params, _request_timeout or REQUEST_TIMEOUT)


# One client for the process: its connections to the API server are kept and reused by
# every thread (a client per call paid a TCP and TLS handshake per request, several times
# the request itself on a loaded node). Made after load(), from the configuration it set.
_shared: _TimedClient | None = None
_shared_lock = threading.Lock()
POOL_CONNECTIONS = 48  # above the threads that may call at once (reconcile workers, writes)


def _client() -> _TimedClient:
    global _shared
    with _shared_lock:
        if _shared is None:
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = POOL_CONNECTIONS
            _shared = _TimedClient(configuration)
        return _shared


def _api(kind=client.CoreV1Api):
    """An API group's client on the process's _TimedClient."""
    return kind(_client())


def _custom() -> client.CustomObjectsApi:
    return _api(client.CustomObjectsApi)


def patch_status(namespace: str | None, name: str, status: dict, plural: str = PLURAL) -> dict:
    """A merge patch of status; namespace None: a cluster-scoped object."""
    if namespace is None:
        return _custom().patch_cluster_custom_object_status(GROUP, VERSION, plural, name, {"status": status})
    return _custom().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name,
                                                           {"status": status})


def json_patch(namespace: str | None, name: str, ops: list[dict], plural: str = PLURAL, status: bool = False) -> dict:
    """A JSON patch; callers lead with a `test` op so a concurrent change fails it (422)."""
    api = _custom()
    if namespace is None:
        call = api.patch_cluster_custom_object_status if status else api.patch_cluster_custom_object
        return call(GROUP, VERSION, plural, name, ops, _content_type="application/json-patch+json")
    call = api.patch_namespaced_custom_object_status if status else api.patch_namespaced_custom_object
    return call(GROUP, VERSION, namespace, plural, name, ops, _content_type="application/json-patch+json")


def get_object(namespace: str | None, name: str, plural: str = PLURAL) -> dict | None:
    try:
        if namespace is None:
            return _custom().get_cluster_custom_object(GROUP, VERSION, plural, name)
        return _custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def create_object(namespace: str | None, body: dict, plural: str) -> dict:
    if namespace is None:
        return _custom().create_cluster_custom_object(GROUP, VERSION, plural, body)
    return _custom().create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)


def delete_object(namespace: str | None, name: str, plural: str) -> None:
    try:
        if namespace is None:
            _custom().delete_cluster_custom_object(GROUP, VERSION, plural, name)
        else:
            _custom().delete_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as e:
        if e.status != 404:
            raise


def list_objects(plural: str, namespace: str | None = None) -> list[dict]:
    if namespace:
        return _custom().list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]
    return _custom().list_cluster_custom_object(GROUP, VERSION, plural)["items"]


def create_pod(body: dict) -> bool:
    """True if created, False if it already existed (a retry or a restarted controller)."""
    try:
        _api().create_namespaced_pod(body["metadata"]["namespace"], body)
        return True
    except ApiException as e:
        if e.status == 409:
            return False
        raise


def get_pod(namespace: str, name: str) -> dict | None:
    try:
        return _client().sanitize_for_serialization(_api().read_namespaced_pod(name, namespace))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def reservation_pod_on(namespace: str, vm_name: str, node: str) -> dict | None:
    """The VM's live reservation pod bound to `node`, read from the API (not a cache)."""
    pods = _api().list_namespaced_pod(
        namespace, label_selector=f"{GROUP}/vm={vm_name},{GROUP}/role=reservation",
        field_selector=f"spec.nodeName={node}").items
    live = [p for p in pods if p.metadata.deletion_timestamp is None]
    return _client().sanitize_for_serialization(live[0]) if live else None


def pods_of_vm(namespace: str, vm_name: str) -> list[dict]:
    """Every pod of the VM (reservation and migration target), read from the API."""
    pods = _api().list_namespaced_pod(namespace, label_selector=f"{GROUP}/vm={vm_name}").items
    return [_client().sanitize_for_serialization(p) for p in pods]


def pod_uids(label_selector: str) -> set[str]:
    """The UIDs of every pod in the cluster with these labels."""
    return {p.metadata.uid for p in _api().list_pod_for_all_namespaces(label_selector=label_selector).items}


def node_names() -> set[str]:
    return {n.metadata.name for n in _api().list_node().items}


def patch_pod_labels(namespace: str, name: str, labels: dict[str, str | None]) -> None:
    _api().patch_namespaced_pod(name, namespace, {"metadata": {"labels": labels}})


def delete_pod(namespace: str, name: str, uid: str | None = None, force: bool = False) -> None:
    """`force`: gone at once, without waiting for its kubelet (only for a node known dead)."""
    try:
        _api().delete_namespaced_pod(
            name, namespace, body=client.V1DeleteOptions(preconditions={"uid": uid} if uid else None,
                                                         grace_period_seconds=0 if force else None))
    except ApiException as e:
        if e.status not in (404, 409):
            raise


def read_secret(namespace: str, name: str) -> tuple[dict[str, str], str] | None:
    """A Secret's data (decoded) and resourceVersion, for a guarded rewrite; None if absent."""
    try:
        secret = _api().read_namespaced_secret(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return ({k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()},
            secret.metadata.resource_version)


def write_secret(namespace: str, name: str, data: dict[str, str], resource_version: str | None,
                 labels: dict[str, str], secret_type: str = "Opaque") -> None:
    """Create the Secret (resource_version None) or replace the one read at that version:
    of two writers, one wins and the other gets a 409 and reads again."""
    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels,
                                     resource_version=resource_version),
        type=secret_type, data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()})
    api = _api()
    if resource_version is None:
        api.create_namespaced_secret(namespace, body)
    else:
        api.replace_namespaced_secret(name, namespace, body)


def api_service_ca_bundle(name: str) -> str | None:
    """The caBundle (base64) of an APIService; "" if it has none, None if it is absent."""
    try:
        found = _api(client.ApiregistrationV1Api).read_api_service(name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    ca = found.spec.ca_bundle or ""
    return ca if isinstance(ca, str) else base64.b64encode(ca).decode()


def set_api_service_ca_bundle(name: str, ca_bundle: str) -> None:
    _api(client.ApiregistrationV1Api).patch_api_service(name, {"spec": {"caBundle": ca_bundle}})


def review_token(review: dict) -> dict:
    """Ask a TokenReview; its status (authenticated, user)."""
    api = _api(client.AuthenticationV1Api)
    return api.api_client.sanitize_for_serialization(api.create_token_review(review).status) or {}


def access_allowed(review: dict) -> tuple[bool, str]:
    """Ask a SubjectAccessReview: (allowed, the authorizer's reason)."""
    status = _api(client.AuthorizationV1Api).create_subject_access_review(review).status
    return bool(status.allowed), status.reason or ""


def agent_pod_ip(namespace: str, node: str, selector: str) -> str | None:
    """The address of the running agent pod on `node`."""
    pods = _api().list_namespaced_pod(namespace, label_selector=selector, field_selector=f"spec.nodeName={node}").items
    return next((p.status.pod_ip for p in pods if p.status.phase == "Running" and p.status.pod_ip
                 and not p.metadata.deletion_timestamp), None)


def webhook_ca_bundles(name: str) -> list[str] | None:
    """The caBundle (base64) of each webhook of a ValidatingWebhookConfiguration; None if absent."""
    try:
        config = _api(client.AdmissionregistrationV1Api).read_validating_webhook_configuration(name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return [w.client_config.ca_bundle or "" for w in config.webhooks or []]


def set_webhook_ca_bundle(name: str, ca_bundle: str, count: int) -> None:
    """Give the first `count` webhooks of the configuration this caBundle (a JSON patch by
    index: if webhooks were removed since they were counted, it fails and is tried again)."""
    ops = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle} for i in range(count)]
    _api(client.AdmissionregistrationV1Api).patch_validating_webhook_configuration(name, ops)


def post_event(body: dict, reason: str, message: str, warning: bool = False, component: str = "kopfvirt") -> None:
    """An Event on the object, as `kubectl describe` shows them (those of cluster-scoped
    objects live in the default namespace). Never raises."""
    meta = dict(body["metadata"])
    meta["namespace"] = meta.get("namespace") or "default"
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
        _api().create_namespaced_event(meta["namespace"], event)
    except Exception as e:  # an Event is worth a log line, never a failed reconcile
        log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e)


def patch_node_labels(node: str, labels: dict[str, str | None]) -> None:
    _api().patch_node(node, {"metadata": {"labels": labels}})


def get_node_metadata(node: str) -> tuple[dict[str, str], dict[str, str]]:
    """A Node's labels and annotations."""
    meta = _api().read_node(node).metadata
    return meta.labels or {}, meta.annotations or {}


def get_node(node: str) -> dict | None:
    """A Node as a plain dict; None when it does not exist."""
    api = _api()
    try:
        return api.api_client.sanitize_for_serialization(api.read_node(node))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def node_reference(node: str) -> dict:
    """A Node as post_event takes it (an Event about the node itself)."""
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "uid": _api().read_node(node).metadata.uid}}


def node_address(node: str) -> str | None:
    """The node's InternalIP, where its libvirtd listens for migrations."""
    addresses = _api().read_node(node).status.addresses or []
    return next((a.address for a in addresses if a.type == "InternalIP"), None)


def config_map_data(namespace: str, name: str) -> dict[str, str] | None:
    try:
        return _api().read_namespaced_config_map(name, namespace).data or {}
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def node_addresses(node: str) -> list[str]:
    """Every address the Node reports (InternalIP first), then its name."""
    status = _api().read_node(node).status
    addresses = sorted(status.addresses or [], key=lambda a: a.type != "InternalIP")
    return list(dict.fromkeys([a.address for a in addresses] + [node]))


def write_config_map(namespace: str, name: str, data: dict[str, str], labels: dict[str, str]) -> None:
    """Create or replace a ConfigMap the operator owns."""
    body = client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=labels),
                              data=data)
    api = _api()
    try:
        api.replace_namespaced_config_map(name, namespace, body)
    except ApiException as e:
        if e.status != 404:
            raise
        api.create_namespaced_config_map(namespace, body)


def create_csr(name: str, request_pem: bytes, signer: str, usages: list[str]) -> None:
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(request_pem).decode(), "signerName": signer, "usages": usages}}
    _api(client.CertificatesV1Api).create_certificate_signing_request(body)


def read_csr(name: str) -> dict | None:
    """A CertificateSigningRequest as the API serves it (camelCase dict); None if absent."""
    api = _api(client.CertificatesV1Api)
    try:
        return api.api_client.sanitize_for_serialization(api.read_certificate_signing_request(name))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def settle_csr(csr: dict, approved: bool, reason: str, message: str) -> dict:
    """Approve or deny a CSR read by read_csr (a replace of its approval, guarded by its version)."""
    condition = {"type": "Approved" if approved else "Denied", "status": "True", "reason": reason,
                 "message": message[:1024]}
    csr.setdefault("status", {}).setdefault("conditions", []).append(condition)
    api = _api(client.CertificatesV1Api)
    return api.api_client.sanitize_for_serialization(
        api.replace_certificate_signing_request_approval(csr["metadata"]["name"], csr))


def issue_csr(csr: dict, certificate_pem: bytes) -> None:
    """Give an approved CSR its certificate (status.certificate)."""
    csr.setdefault("status", {})["certificate"] = base64.b64encode(certificate_pem).decode()
    _api(client.CertificatesV1Api).replace_certificate_signing_request_status(csr["metadata"]["name"], csr)


def read_lease(namespace: str, name: str, timeout: float) -> tuple[dict, str] | None:
    """A Lease's spec and resourceVersion; None if absent."""
    try:
        lease = _api(client.CoordinationV1Api).read_namespaced_lease(name, namespace, _preload_content=False,
                                                                 _request_timeout=timeout)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    body = json.loads(lease.data)
    return body.get("spec") or {}, body["metadata"]["resourceVersion"]


def write_lease(namespace: str, name: str, spec: dict, resource_version: str | None, timeout: float) -> str:
    """Create the Lease (resource_version None) or replace the one read at that version (a
    409 when another replica wrote it meanwhile); the new resourceVersion."""
    metadata = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}
    api = _api(client.CoordinationV1Api)
    if resource_version is None:
        written = api.create_namespaced_lease(namespace, body, _preload_content=False, _request_timeout=timeout)
    else:
        written = api.replace_namespaced_lease(name, namespace, body, _preload_content=False,
                                               _request_timeout=timeout)
    return json.loads(written.data)["metadata"]["resourceVersion"]


def node_conditions(node: str) -> list[dict]:
    api = _api()
    body = api.api_client.sanitize_for_serialization(api.read_node_status(node))
    return (body.get("status") or {}).get("conditions") or []


def set_node_condition(node: str, condition: dict) -> None:
    """One condition of the Node's status, merged by its type (the kubelet's stay)."""
    _api().patch_node_status(node, {"status": {"conditions": [condition]}},
                                         _content_type="application/strategic-merge-patch+json")
