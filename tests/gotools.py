"""The project's Go programs under tools/ (tools/kstatus, tools/argocd-health, and the
Prometheus and promtool that tools/prometheus pins), built once into the cache and named by
a hash of their sources, so a changed source builds anew and an unchanged one is never
built twice."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from kopfvirt_lab.layout import cache_dir

REPO = Path(__file__).resolve().parents[1]


def go_tool(name: str, package: str = ".", tags: str = "") -> Path:
    """`package` (tools/NAME itself, or a main package of a module it requires) built from
    the Go module proxy with the pinned Go of lab/ensure-go.sh into
    ~/.cache/kopfvirt/bin/<its last path element>-<hash of go.mod, go.sum and the .go files>."""
    source = REPO / "tools" / name
    files = [source / "go.mod", source / "go.sum", *sorted(source.glob("*.go"))]
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files) + tags.encode()).hexdigest()
    program = name if package == "." else package.rsplit("/", 1)[-1]
    binary = cache_dir() / "bin" / f"{program}-{digest[:16]}"
    if not binary.exists():
        found = subprocess.run(["bash", str(REPO / "lab" / "ensure-go.sh")], capture_output=True, text=True,
                               timeout=600)
        assert found.returncode == 0, found.stderr
        binary.parent.mkdir(parents=True, exist_ok=True)
        built = subprocess.run([found.stdout.strip(), "build", "-trimpath", "-ldflags=-s -w",
                                *([f"-tags={tags}"] if tags else []), "-o", f"{binary}.tmp", package],
                               cwd=source, capture_output=True, text=True, timeout=1200)
        assert built.returncode == 0, built.stderr
        os.replace(f"{binary}.tmp", binary)
    return binary


def promtool() -> Path:
    return go_tool("prometheus", "github.com/prometheus/prometheus/cmd/promtool", tags="remove_all_sd")


def prometheus() -> Path:
    return go_tool("prometheus", "github.com/prometheus/prometheus/cmd/prometheus", tags="remove_all_sd")
