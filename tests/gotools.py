"""The project's small Go programs under tools/ (tools/kstatus, tools/argocd-health), built
once into the cache and named by a hash of their sources, so a changed source builds anew
and an unchanged one is never built twice."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from kopfvirt_lab.layout import cache_dir

REPO = Path(__file__).resolve().parents[1]


def go_tool(name: str) -> Path:
    """tools/NAME built from the Go module proxy (the pinned Go from lab/ensure-go.sh) into
    ~/.cache/kopfvirt/bin/NAME-<hash of go.mod, go.sum and its .go files>."""
    source = REPO / "tools" / name
    files = [source / "go.mod", source / "go.sum", *sorted(source.glob("*.go"))]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    binary = cache_dir() / "bin" / f"{name}-{digest[:16]}"
    if not binary.exists():
        found = subprocess.run(["bash", str(REPO / "lab" / "ensure-go.sh")], capture_output=True, text=True,
                               timeout=600)
        assert found.returncode == 0, found.stderr
        binary.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run([found.stdout.strip(), "build", "-o", f"{binary}.tmp", "."], cwd=source,
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr
        os.replace(f"{binary}.tmp", binary)
    return binary
