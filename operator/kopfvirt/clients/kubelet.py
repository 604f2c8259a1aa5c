"""Read what the kubelet mounted for a pod on this node: the Secret volumes of a VM's
reservation pod (core/reservation.py), which carry its cloud-init data. The kubelet fetched
them as the node authorizer allows (only Secrets of pods bound to its node), so the agent
needs no Secret access of its own.

A Secret volume is a directory the kubelet fills atomically: each key a link into a
timestamped directory, published by renaming the `..data` link into place last. Until
`..data` exists nothing was written (the Secret may not exist yet: the pod waits for it).
"""

from __future__ import annotations

from pathlib import Path


def secret_volume(directory: str | Path, keys: tuple[str, ...]) -> dict[str, str] | None:
    """Those of `keys` the volume holds (text); None while the kubelet has not filled it."""
    root = Path(directory)
    if not (root / "..data").exists():
        return None
    return {key: (root / key).read_text() for key in keys if (root / key).is_file()}
