"""What the product's image holds, read from the very archive `lab up` built and imported
into the nodes: the operator (controller, agent, plugin) and none of the lab."""

from __future__ import annotations

import json
import tarfile

from kopfvirt_lab import images


def _files_of(archive) -> set[str]:
    """Every path in every layer of a docker-archive image."""
    names: set[str] = set()
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                names.update(m.name.lstrip("./") for m in inner)
    return names


def test_the_operator_image_ships_the_operator_and_not_the_lab(lab):
    files = _files_of(images.archive("operator"))
    # site-packages, or dist-packages where the python base is Debian's own (the lab's).
    package = {f.split("-packages/", 1)[1] for f in files if "-packages/kopfvirt" in f}
    for part in ("kopfvirt/controller/main.py", "kopfvirt/agent/main.py", "kopfvirt/plugin.py"):
        assert part in package, sorted(package)[:20]
    leaked = sorted(f for f in package if f.startswith(("kopfvirt/lab/", "kopfvirt_lab")))
    assert not leaked, leaked
    assert not any(f.endswith("bin/kopfvirt-lab") for f in files)
