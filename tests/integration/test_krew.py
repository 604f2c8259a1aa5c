"""The plugin as a krew user gets it: the archive integrations/krew/build.py makes, the
committed manifest checked by krew's own validate-krew-manifest, installed by krew itself
(both built from the Go module proxy, tools/krew) into a fresh KREW_ROOT, and then typed
as `kubectl kopfvirt ...` by the real kubectl, with the machine's python3 and nothing of the
project's environment: version (the operator's too, through the API), create vm piped to
kubectl apply, stop."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from kopfvirt import __version__

from ..gotools import go_tool
from .conftest import KUBECONFIG, REPO, kubectl_json

BUILD = REPO / "integrations" / "krew" / "build.py"
MANIFEST = REPO / "integrations" / "krew" / "kopfvirt.yaml"


def test_the_plugin_installed_by_krew_runs_as_typed(vms, tmp_path):
    built = subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path / "dist")], capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    archive, sha = built.stdout.split()
    assert hashlib.sha256(Path(archive).read_bytes()).hexdigest() == sha
    # Reproducible: a second build is the same bytes, so a release's sha256 names its sources.
    again = subprocess.run([sys.executable, str(BUILD), "--out", str(tmp_path / "again")], capture_output=True,
                           text=True, timeout=300)
    assert again.stdout.split()[1] == sha, "the archive is not reproducible"

    validate = go_tool("krew", "sigs.k8s.io/krew/cmd/validate-krew-manifest")
    checked = subprocess.run([str(validate), "-manifest", str(MANIFEST), "-skip-install"], capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert f"version: v{__version__}" in MANIFEST.read_text()
    # The committed manifest names the last release's archive; this build's is put in.
    sys.path.insert(0, str(BUILD.parent))
    try:
        from build import manifest_for
    finally:
        sys.path.remove(str(BUILD.parent))
    local = tmp_path / "kopfvirt.yaml"
    local.write_text(manifest_for(sha, __version__))
    assert set(re.findall(r"sha256: ([0-9a-f]{64})", local.read_text())) == {sha}

    kubectl = shutil.which("kubectl")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(kubectl, bin_dir / "kubectl")
    env = {"PATH": f"{tmp_path / 'krew' / 'bin'}:{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
           "KREW_ROOT": str(tmp_path / "krew"), "KUBECONFIG": str(KUBECONFIG)}
    krew = go_tool("krew", "sigs.k8s.io/krew/cmd/krew")
    installed = subprocess.run([str(krew), "install", f"--manifest={local}", f"--archive={archive}"],
                               capture_output=True, text=True, timeout=120, env=env)
    assert installed.returncode == 0, installed.stderr
    receipt = tmp_path / "krew" / "receipts" / "kopfvirt.yaml"  # what `krew list` reads, once it has an index
    assert receipt.exists() and f"version: v{__version__}" in receipt.read_text()
    assert (tmp_path / "krew" / "bin" / "kubectl-kopfvirt").is_symlink()

    def typed(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120, env=env)

    version = typed("kopfvirt", "version")
    assert version.returncode == 0, version.stderr
    assert version.stdout == f"Client Version: {__version__}\nServer Version: {__version__}\n"

    manifest = typed("kopfvirt", "-n", vms.namespace, "create", "vm", "krewed", "--memory", "128Mi",
                     "--kernel", "lab-images/lab-guest-vmlinuz", "--initrd", "lab-images/lab-guest-initrd.img",
                     "--cmdline", "console=ttyS0 quiet")
    assert manifest.returncode == 0, manifest.stderr
    applied = typed("apply", "-f", "-", stdin=manifest.stdout)
    assert applied.returncode == 0, applied.stderr
    vms.wait_phase("krewed", "Running")
    stopped = typed("kopfvirt", "-n", vms.namespace, "stop", "krewed")
    assert stopped.returncode == 0 and "runStrategy Always -> Halted" in stopped.stdout, stopped.stderr
    vms.wait_phase("krewed", "Stopped", timeout=60)
    managers = {m["manager"] for m in kubectl_json("-n", vms.namespace, "get", "kvvm", "krewed",
                                                   "--show-managed-fields")["metadata"]["managedFields"]}
    assert "kubectl-kopfvirt" in managers
    refused = typed("kopfvirt", "create", "vm", "bad", "--memory", "lots")
    assert refused.returncode == 1 and "--memory" in refused.stderr
    vms.delete("krewed")
