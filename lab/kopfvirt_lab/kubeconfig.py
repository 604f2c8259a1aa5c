"""Kubeconfig files for the lab's users: certificate users and ServiceAccount tokens."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write(path: Path, server: str, ca: Path, user: str, *, cert: Path | None = None,
          key: Path | None = None, token: str | None = None, namespace: str | None = None) -> None:
    creds: dict = {}
    if cert and key:
        creds = {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)}
    if token:
        creds = {"token": token}
    context = {"cluster": "kopfvirt-lab", "user": user}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "kopfvirt-lab",
        "clusters": [{"name": "kopfvirt-lab",
                      "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "kopfvirt-lab", "context": context}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
