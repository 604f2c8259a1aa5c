"""A token of the agent's ServiceAccount, for tests that act as an agent (its RBAC, the
chart's): .lab/agent.kubeconfig. The operator's pods have their own."""

from __future__ import annotations

import subprocess

from . import kubeconfig
from .errors import LabError
from .layout import Lab

NAMESPACE = "kopfvirt-system"
ACCOUNTS = {"agent": "kopfvirt-agent"}
DURATION = "168h"


def write_kubeconfigs(lab: Lab, server: str) -> None:
    for role, account in ACCOUNTS.items():
        target = lab.root / f"{role}.kubeconfig"
        if target.exists() and _valid(lab, target):
            continue
        result = subprocess.run(lab.kubectl_as_admin("-n", NAMESPACE, "create", "token", account,
                                                      f"--duration={DURATION}"),
                                text=True, capture_output=True)
        if result.returncode != 0:
            raise LabError(f"could not issue a token for {account}: {result.stderr.strip()}")
        kubeconfig.write(target, server, lab.pki / "ca.crt", f"system:serviceaccount:{NAMESPACE}:{account}",
                         token=result.stdout.strip(), namespace=NAMESPACE)


def _valid(lab: Lab, kubeconfig_file) -> bool:
    """Does the token still log in? (A ServiceAccount deleted and made again, as by a
    reinstall of the chart, voids the tokens of the old one.)"""
    result = subprocess.run([lab.kubectl, "--kubeconfig", str(kubeconfig_file), "auth", "whoami"],
                            text=True, capture_output=True)
    return result.returncode == 0
