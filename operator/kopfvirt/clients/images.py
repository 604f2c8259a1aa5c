"""Disk files on the node's storage: qcow2 overlays and empty disks (qemu-img) and
cloud-init NoCloud ISOs (genisoimage). Only the node agent imports this."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.disks import PlannedDisk


class DiskError(RuntimeError):
    """A disk could not be prepared; the message names the disk and the cause."""


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise DiskError(f"{argv[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _overlay(d: PlannedDisk) -> None:
    if not Path(d.backing).is_file():
        raise DiskError(f"disk {d.name}: base image {d.backing} does not exist on this node")
    info = json.loads(_run("qemu-img", "info", "--output=json", "-U", d.backing))
    if info.get("backing-filename"):  # it would let a volume name reach any file of the node
        raise DiskError(f"disk {d.name}: base image {d.backing} has a backing file of its own "
                        f"({info['backing-filename']}); base images must stand alone")
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-F", info["format"], "-b", d.backing, d.path)


def _empty(d: PlannedDisk) -> None:
    _run("qemu-img", "create", "-q", "-f", "qcow2", d.path, str(d.size_bytes))


def _cidata(d: PlannedDisk, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            names.append(str(Path(tmp) / name))
        _run("genisoimage", "-quiet", "-output", d.path, "-volid", "cidata", "-joliet", "-rock", *names)


def ensure(plan: list[PlannedDisk], vm_dir: str | None, cloud_init: dict[str, dict[str, str]]) -> None:
    """Create what is missing; on failure remove what this call created (nothing half-done).

    `vm_dir`: where the VM's own disks go (None: it has none); `cloud_init` maps a
    cloud-init disk's name to its files (meta-data, user-data, ...).
    """
    if vm_dir is None:
        return
    created: list[Path] = []
    directory = Path(vm_dir)
    new_dir = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for d in plan:
            if d.path is None or Path(d.path).exists():
                continue
            if d.kind == "overlay":
                _overlay(d)
            elif d.kind == "empty":
                _empty(d)
            elif d.kind == "cloudinit":
                _cidata(d, cloud_init[d.name])
            created.append(Path(d.path))
    except Exception:
        for path in created:
            path.unlink(missing_ok=True)
        if new_dir:
            shutil.rmtree(directory, ignore_errors=True)
        raise


def remove(vm_dir: str) -> None:
    shutil.rmtree(vm_dir, ignore_errors=True)
