"""Who a request comes from and whether they may: the bodies of the TokenReviews and
SubjectAccessReviews the operator asks kube-apiserver, as kube-rbac-proxy and aggregated
API servers do, so that the operator's own endpoints judge callers by Kubernetes' RBAC."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    uid: str = ""


def admission_user(userinfo: dict) -> User:
    """The writer of an admission request (its userInfo), to ask about in a review."""
    return User(userinfo.get("username") or "", tuple(userinfo.get("groups") or ()),
                dict(userinfo.get("extra") or {}), userinfo.get("uid") or "")


def cloud_init_secrets(spec: dict | None) -> dict[str, str]:
    """Disk name -> the Secret its cloud-init data comes from, of a VM's spec as written."""
    out = {}
    for disk in (spec or {}).get("disks") or []:
        name = (((disk or {}).get("cloudInit") or {}).get("secretRef") or {}).get("name")
        if name:
            out[disk.get("name", "")] = name
    return out


def new_secret_reviews(user: User, namespace: str, spec: dict, old_spec: dict | None) -> list[tuple[str, str, dict]]:
    """(disk, Secret, review) for each Secret the spec names that the old one did not: the
    writer must be allowed to read it, for the guest will carry its data (the kubelet
    mounts it for the VM's pod whoever asked). One named before was judged then."""
    before = set(cloud_init_secrets(old_spec).values())
    return [(disk, name, resource_review(user, "get", "", "v1", "secrets", namespace, name))
            for disk, name in sorted(cloud_init_secrets(spec).items()) if name not in before]


def _review(user: User, attributes: dict) -> dict:
    spec = {"user": user.name, "groups": list(user.groups), "extra": user.extra, **attributes}
    if user.uid:
        spec["uid"] = user.uid
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def resource_review(user: User, verb: str, group: str, version: str, resource: str, namespace: str = "",
                    name: str = "", subresource: str = "") -> dict:
    return _review(user, {"resourceAttributes": {"namespace": namespace, "verb": verb, "group": group,
                                                 "version": version, "resource": resource,
                                                 "subresource": subresource, "name": name}})


def path_review(user: User, path: str, verb: str = "get") -> dict:
    """May the user `verb` this non-resource URL (e.g. get /metrics)?"""
    return _review(user, {"nonResourceAttributes": {"path": path, "verb": verb}})


def token_review(token: str) -> dict:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}


def user_of_token_review(status: dict) -> User | None:
    """The user a TokenReview's status names; None if the token was not authenticated."""
    if not status.get("authenticated"):
        return None
    info = status.get("user") or {}
    return User(info.get("username") or "", tuple(info.get("groups") or ()), dict(info.get("extra") or {}),
                info.get("uid") or "")


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
