"""The VM subresources a user reaches through the Kubernetes API (console, vnc, xml), as
an aggregated API: kube-apiserver authenticates the user, authorizes the path, and proxies
the request to the controller with the user's identity in request headers; the controller
checks the front proxy's client certificate, asks a SubjectAccessReview, and relays the
stream to the agent on the VM's node. What can be said without I/O is here: paths, the
discovery document, who the front proxy says the user is, and the review to ask.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse

from .access import User, resource_review

GROUP = "subresources.kopfvirt.io"
VERSION = "v1alpha1"
PREFIX = f"/apis/{GROUP}/{VERSION}"
RESOURCE = "virtualmachines"
STREAMS = ("console", "vnc")  # WebSocket: raw bytes in binary messages, both ways
DOCUMENTS = ("xml",)          # plain GET
SUBRESOURCES = STREAMS + DOCUMENTS
PROTOCOL = "plain.kopfvirt.io"  # the WebSocket subprotocol, echoed by every hop
# The operator's version (`kubectl kopfvirt version`): cluster-scoped resource "version" of
# the group, which the chart lets every authenticated user get (as KubeVirt's virtctl asks).
VERSION_RESOURCE = "version"
VERSION_PATH = f"{PREFIX}/{VERSION_RESOURCE}"
AUTH_CONFIG_MAP = ("kube-system", "extension-apiserver-authentication")  # kube-apiserver publishes it

# Namespaces are DNS labels; VM names DNS subdomains (the API server enforces both on the
# objects, but a path is anything a caller sends).
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
_PATH = rf"/namespaces/(?P<ns>{_LABEL})/{RESOURCE}/(?P<name>{_SUBDOMAIN})/(?P<sub>{'|'.join(SUBRESOURCES)})"
AGENT_PREFIX = "/v1"  # the agent serves the same paths under this prefix


class Unauthenticated(Exception):
    """The request did not come from the front proxy kube-apiserver is."""


@dataclasses.dataclass(frozen=True)
class Target:
    namespace: str
    name: str
    subresource: str


@dataclasses.dataclass(frozen=True)
class FrontProxy:
    """How kube-apiserver passes users on (its --requestheader-* flags)."""

    ca_pem: str
    allowed_names: tuple[str, ...]  # empty: any certificate the CA signed
    user_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)
    uid_headers: tuple[str, ...] = ()


def parse_path(path: str, prefix: str = PREFIX) -> Target | None:
    """The VM and subresource a request path names; None for any other path."""
    m = re.fullmatch(re.escape(prefix) + _PATH, path)
    if not m or len(m["name"]) > 253:
        return None
    return Target(m["ns"], m["name"], m["sub"])


def path(namespace: str, name: str, subresource: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/namespaces/{namespace}/{RESOURCE}/{name}/{subresource}"


def resource_list() -> dict:
    """The discovery document of the group version (kube-aggregator's availability probe
    reads it every few seconds; kubectl's discovery too)."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
            "resources": [{"name": f"{RESOURCE}/{sub}", "singularName": "", "namespaced": True,
                           "kind": "VirtualMachine", "verbs": ["get"]} for sub in SUBRESOURCES]}


def front_proxy(data: dict[str, str]) -> FrontProxy:
    """From ConfigMap kube-system/extension-apiserver-authentication (lists are JSON)."""
    ca = data.get("requestheader-client-ca-file")
    if not ca:
        raise Unauthenticated("kube-apiserver runs without --requestheader-client-ca-file: it cannot pass users "
                              "to aggregated APIs")

    def listed(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = data.get(key)
        return tuple(json.loads(raw)) if raw else default
    return FrontProxy(ca, listed("requestheader-allowed-names", ()),
                      listed("requestheader-username-headers", ("X-Remote-User",)),
                      listed("requestheader-group-headers", ("X-Remote-Group",)),
                      listed("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
                      listed("requestheader-uid-headers", ()))


def common_name(peercert: dict | None) -> str | None:
    """The CN of a peer certificate as Python's ssl module gives it (getpeercert())."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def user_of(headers: list[tuple[str, str]], peer_name: str | None, proxy: FrontProxy) -> User:
    """Who the front proxy says made the request. Its headers are believed only from a
    client certificate the front proxy's CA signed (the TLS handshake checked that) whose
    CN kube-apiserver allows; anyone else's X-Remote-* headers are ignored, and refused."""
    if peer_name is None:
        raise Unauthenticated("no client certificate from the front proxy")
    if proxy.allowed_names and peer_name not in proxy.allowed_names:
        raise Unauthenticated(f"client certificate {peer_name!r} is not a front proxy kube-apiserver names")
    lowered = [(k.lower(), v) for k, v in headers]

    def values(names: tuple[str, ...]) -> list[str]:
        wanted = {n.lower() for n in names}
        return [v for k, v in lowered if k in wanted]
    users = values(proxy.user_headers)
    if not users or not users[0]:
        raise Unauthenticated("the front proxy named no user")
    extra: dict[str, list[str]] = {}
    for prefix in (p.lower() for p in proxy.extra_prefixes):
        for k, v in lowered:
            if k.startswith(prefix) and len(k) > len(prefix):
                extra.setdefault(urllib.parse.unquote(k[len(prefix):]), []).append(v)
    uids = values(proxy.uid_headers)
    return User(users[0], tuple(values(proxy.group_headers)), extra, uids[0] if uids else "")


def access_review(user: User, target: Target) -> dict:
    """The SubjectAccessReview kube-apiserver asked before proxying, asked again here: a
    request that reached us some other way than through it proves nothing."""
    return resource_review(user, "get", GROUP, VERSION, RESOURCE, target.namespace, target.name, target.subresource)


def status(code: int, reason: str, message: str) -> dict:
    """A metav1.Status, as kubectl and client libraries read an API error."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
