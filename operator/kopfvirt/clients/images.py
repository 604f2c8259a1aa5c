"""Disk files on the node's storage: qcow2 overlays and empty disks (qemu-img) and
cloud-init NoCloud ISOs (genisoimage). A location is a path on the node or an nfs://
URL: qemu-img reaches NFS with QEMU's own client, and directories there are made and
removed through libnfs (clients/nfs.py). Only the node agent imports this."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.disks import Plan, PlannedDisk, nfs_parts
from . import nfs


class DiskError(RuntimeError):
    """A disk could not be prepared; the message names the disk and the cause."""


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise DiskError(f"{argv[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _exists(location: str) -> bool:
    return nfs.exists(location) if nfs_parts(location) else Path(location).exists()


def _makedirs(location: str) -> bool:
    """mkdir -p; True when the directory is new."""
    if nfs_parts(location):
        return nfs.makedirs(location)
    new = not Path(location).exists()
    Path(location).mkdir(parents=True, exist_ok=True)
    return new


def _remove(location: str) -> None:
    if nfs_parts(location):
        nfs.remove(location)
    else:
        Path(location).unlink(missing_ok=True)


def fixed_length(location: str) -> list[str]:
    """qemu-img options that make a qcow2 on NFS as long as it will ever be (sparse), so
    that its file never grows. QEMU's NFS client learns a file's length when it opens it
    and never asks again: a live move's target opens the disk before the switch-over, and
    clusters the source allocated past that length meanwhile read as zeros there (and a
    guest's read-modify-write then stores the zeros): writes lost. Metadata preallocation
    maps every cluster at creation; with a backing file it needs subclusters
    (extended_l2), so that unwritten parts still read from the base image."""
    return ["-o", "preallocation=metadata,extended_l2=on"] if nfs_parts(location) else []


def _overlay(d: PlannedDisk) -> None:
    if not (nfs.exists(d.backing) if nfs_parts(d.backing) else Path(d.backing).is_file()):
        raise DiskError(f"disk {d.name}: base image {d.backing} does not exist on this node")
    info = json.loads(_run("qemu-img", "info", "--output=json", "-U", d.backing))
    if info.get("backing-filename"):  # it would let a volume name reach any file of the node
        raise DiskError(f"disk {d.name}: base image {d.backing} has a backing file of its own "
                        f"({info['backing-filename']}); base images must stand alone")
    _run("qemu-img", "create", "-q", "-f", "qcow2", *fixed_length(d.path), "-F", info["format"], "-b", d.backing,
         d.path)


def _empty(d: PlannedDisk) -> None:
    _run("qemu-img", "create", "-q", "-f", "qcow2", *fixed_length(d.path), d.path, str(d.size_bytes))


def _cidata(d: PlannedDisk, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
            names.append(str(Path(tmp) / name))
        iso = str(Path(tmp) / "cidata.iso") if nfs_parts(d.path) else d.path
        _run("genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock", *names)
        if iso != d.path:
            _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "raw", iso, d.path)


def ensure(plan: list[PlannedDisk], vm_dir: str | None, cloud_init: dict[str, dict[str, str]]) -> None:
    """Create what is missing; on failure remove what this call created (nothing half-done).

    `vm_dir`: where the VM's own disks go (None: it has none); `cloud_init` maps a
    cloud-init disk's name to its files (meta-data, user-data, ...).
    """
    if vm_dir is None:
        return
    created: list[str] = []
    new_dir = False
    try:
        new_dir = _makedirs(vm_dir)
        for d in plan:
            if d.path is None or d.kind == "volume" or _exists(d.path):
                continue
            if d.kind == "overlay":
                _overlay(d)
            elif d.kind == "empty":
                _empty(d)
            elif d.kind == "cloudinit":
                _cidata(d, cloud_init[d.name])
            created.append(d.path)
    except Exception as e:
        with contextlib.suppress(OSError):  # a server gone mid-way: its error is the one to tell
            for location in created:
                _remove(location)
            if new_dir:
                remove(vm_dir)
        if isinstance(e, nfs.NFSError):
            raise DiskError(str(e)) from None
        raise


def ensure_leases(plan: Plan) -> None:
    """The lockspace and the lease files libvirt's lockd locks: it creates the leases of
    the files it leases itself, but neither the others nor the directory, which it made
    when libvirtd started, maybe before the shared storage was mounted over it."""
    if not plan.lease_dir:
        return
    keys = [d.lease for d in plan.disks if d.lease]
    try:
        Path(plan.lease_dir).mkdir(parents=True, exist_ok=True)
        for key in keys:
            (Path(plan.lease_dir) / key).touch()
    except OSError as e:
        raise DiskError(f"lease directory {plan.lease_dir}: {e.strerror}") from None


def remove(vm_dir: str, keep: list[str] = ()) -> None:
    """A VM's own directory, all of it, or every file in it but those named in `keep`."""
    if keep:
        if nfs_parts(vm_dir):
            names = nfs.listdir(vm_dir)
        else:
            names = sorted(os.listdir(vm_dir)) if Path(vm_dir).is_dir() else []
        for name in names:
            if name not in keep:
                _remove(posixpath.join(vm_dir, name))
    elif nfs_parts(vm_dir):
        nfs.remove_tree(vm_dir)
    else:
        shutil.rmtree(vm_dir, ignore_errors=True)
