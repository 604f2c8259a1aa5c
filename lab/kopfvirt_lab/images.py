"""Container images without a registry, built from the project's Dockerfile as it is.

No registry is reachable, Debian's packages are. The Dockerfile's FROM images are made
from them: `mmdebstrap` builds a bookworm root filesystem and buildah imports it under
the name the Dockerfile uses (debian:bookworm-slim; python:3.11-slim-bookworm with
Debian's Python 3.11 and pip where the official image has its own build of 3.11). Then
`buildah bud --pull=never` builds every target, each is saved as an archive in the cache,
and every node's containerd imports it. A target is rebuilt only when its inputs change
(a content hash of the Dockerfile, the base recipe and the files it copies), and a node
imports an archive only once.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from . import procs
from .errors import LabError
from .layout import RUN_DIR, Lab, cache_dir

SUITE = "bookworm"
# Set by the integration tests after their first `lab up`: the repairs they run later take
# the images built then, though the working tree changes under a running session.
KEEP_IMAGES = "KOPFVIRT_LAB_KEEP_IMAGES"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The machine's own added CAs go into every base, as its own tools trust them: where a
# network inspects TLS, the images' pip and apt must trust what the machine trusts.
LOCAL_CAS = Path("/usr/local/share/ca-certificates")
TRUST_HOOK = (f'mkdir -p "$1{LOCAL_CAS}" && cp -r {LOCAL_CAS}/. "$1{LOCAL_CAS}/" && '
              f'{{ [ ! -x "$1/usr/sbin/update-ca-certificates" ] || chroot "$1" update-ca-certificates >/dev/null; }}')
# The FROM images: Debian packages beyond minbase, and a hook run on the finished tree.
BASES = {
    "docker.io/library/debian:bookworm-slim": ((), ""),
    # Like the official image: `python` and `pip` on PATH, Python's headers (for wheels
    # built from source), and pip free to install into /usr/local (Debian marks its Python
    # as managed by apt).
    "docker.io/library/python:3.11-slim-bookworm": (
        ("python3", "python3-pip", "libpython3.11-dev", "ca-certificates"),
        'ln -sf /usr/bin/python3 "$1/usr/local/bin/python" && ln -sf /usr/bin/pip3 "$1/usr/local/bin/pip"'
        ' && rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED'),
}
# Image -> (Dockerfile, its target, image name, the files it copies): the product's three,
# and the lab's plain web server that integration tests run beside VMs.
TARGETS = {
    "operator": ("Dockerfile", "operator", "kopfvirt", ("pyproject.toml", "README.md", "operator")),
    "reservation": ("Dockerfile", "reservation", "kopfvirt-reservation", ("images/reservation.c",)),
    "libvirt": ("Dockerfile", "libvirt", "kopfvirt-libvirt", ("images/libvirt",)),
    "lab-web": ("lab/web.Dockerfile", None, "kopfvirt-lab-web", ()),
}


def app_version(lab: Lab) -> str:
    """The chart's appVersion: the tag the chart's images default to."""
    match = re.search(r'^appVersion:\s*"?([^"\s]+)"?', (lab.repo / "charts/kopfvirt/Chart.yaml").read_text(), re.M)
    if not match:
        raise LabError("charts/kopfvirt/Chart.yaml has no appVersion")
    return match.group(1)


def reference(lab: Lab, target: str) -> str:
    """The image's full name, as containerd resolves the chart's `name:tag`."""
    return f"docker.io/library/{TARGETS[target][2]}:{app_version(lab)}"


def images_dir() -> Path:
    return cache_dir() / "images"


def archive(target: str) -> Path:
    return images_dir() / f"{target}.tar"


def _buildah(*args: str) -> list[str]:
    return ["buildah", "--root", str(cache_dir() / "buildah"), "--runroot", str(RUN_DIR / "buildah"),
            "--storage-driver", "overlay", *args]


def _step(what: str, argv: list[str], cwd: Path | None = None) -> str:
    """Run one build step; a failure stops `lab up` with the step and the tool's own words."""
    result = procs.run(argv, check=False, cwd=cwd)
    if result.returncode != 0:
        out = (result.stdout[-2500:] + "\n" + result.stderr[-2500:]).strip()
        raise LabError(f"image build: {what} failed (exit {result.returncode}): `{' '.join(argv[:12])}` ...\n{out}")
    return result.stdout


def _files(root: Path, names: tuple[str, ...]) -> list[Path]:
    out = []
    for name in names:
        path = root / name
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            out.append(path)
    return out


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _local_cas() -> str:
    return "".join(p.read_text() for p in sorted(LOCAL_CAS.rglob("*.crt"))) if LOCAL_CAS.exists() else ""


def _base_recipe(name: str) -> bytes:
    packages, hook = BASES[name]
    return f"{SUITE} {' '.join(packages)} {hook} {TRUST_HOOK} {_apt_sources_text()} {_local_cas()}".encode()


def target_hash(lab: Lab, target: str) -> str:
    """What a target's image is made of: the Dockerfile, the bases' recipes, its files."""
    dockerfile, _, _, inputs = TARGETS[target]
    files = _files(lab.repo, inputs)
    return _digest([(lab.repo / dockerfile).read_bytes(), app_version(lab).encode(),
                    *(_base_recipe(n) for n in sorted(BASES)),
                    *(str(p.relative_to(lab.repo)).encode() + b"\0" + p.read_bytes() for p in files)])


def _apt_sources() -> list[str]:
    """The machine's own Debian sources, for the images' apt too (no mirror named here)."""
    paths = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
             *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    return [str(p) for p in paths if p.exists() and p.read_text().strip()]


def _apt_sources_text() -> str:
    return "".join(Path(p).read_text() for p in _apt_sources())


def _has_image(name: str) -> bool:
    return procs.run(_buildah("inspect", "--type", "image", name), check=False).returncode == 0


def _ensure_base(name: str) -> None:
    """A FROM image from Debian's packages, unless the one in buildah's store has this recipe."""
    stamp = images_dir() / f"base-{re.sub(r'[^a-z0-9.-]', '_', name)}.sha256"
    recipe = _digest([_base_recipe(name)])
    if _has_image(name) and stamp.exists() and stamp.read_text() == recipe:
        return
    packages, hook = BASES[name]
    rootfs = images_dir() / "rootfs.tar"
    rootfs.unlink(missing_ok=True)
    argv = ["mmdebstrap", "--variant=minbase", "--quiet"]
    if packages:
        argv.append("--include=" + ",".join(packages))
    if hook:
        argv.append(f"--customize-hook={hook}")
    if LOCAL_CAS.exists():
        argv.append(f"--customize-hook={TRUST_HOOK}")
    _step(f"the root filesystem of {name} (mmdebstrap)", [*argv, SUITE, str(rootfs), *_apt_sources()])
    try:
        container = _step(f"importing {name} (buildah from scratch)", _buildah("from", "scratch")).strip()
        _step(f"importing {name} (buildah add)", _buildah("add", container, str(rootfs), "/"))
        _step(f"importing {name} (buildah config)", _buildah(
            "config", "--env", PATH_ENV, "--env", "LANG=C.UTF-8", "--cmd", "bash", container))
        _step(f"importing {name} (buildah commit)", _buildah("commit", "--rm", "--quiet", container, name))
    finally:
        rootfs.unlink(missing_ok=True)
    stamp.write_text(recipe)


def build(lab: Lab) -> dict[str, float]:
    """Every target's archive, up to date; returns the seconds each build took (none: 0)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "buildah").mkdir(parents=True, exist_ok=True)
    took = {}  # mmdebstrap and buildah are among the tools `lab up` checks before it starts
    keep = os.environ.get(KEEP_IMAGES) == "1"
    for target in TARGETS:
        stamp = images_dir() / f"{target}.sha256"
        if keep and archive(target).exists() and stamp.exists():
            took[target] = 0.0
            continue
        digest = target_hash(lab, target)
        if archive(target).exists() and stamp.exists() and stamp.read_text() == digest:
            took[target] = 0.0
            continue
        t0 = time.monotonic()
        if not any(took.values()):  # the bases, once, before the first target that is built
            for base in BASES:
                _ensure_base(base)
        ref = reference(lab, target)
        dockerfile, stage, _, _ = TARGETS[target]
        print(f"building image {ref} ({dockerfile}" + (f", target {stage})" if stage else ")"), flush=True)
        _step(f"image {target} (buildah bud)", _buildah(
            "bud", "--pull=never", "--layers", "--isolation", "chroot", *(["--target", stage] if stage else []),
            "--tag", ref, "--file", str(lab.repo / dockerfile), str(lab.repo)), cwd=lab.repo)
        stamp.unlink(missing_ok=True)
        archive(target).unlink(missing_ok=True)
        _step(f"saving {ref}", _buildah("push", "--quiet", ref, f"docker-archive:{archive(target)}:{ref}"))
        stamp.write_text(digest)
        took[target] = time.monotonic() - t0
    if any(took.values()):
        # Layers of earlier builds no image uses any more (each source change leaves the
        # operator's); without this the store grows by ~0.6 GB a change. Not fatal.
        procs.run(_buildah("rmi", "--prune"), check=False)
    return took


def digest(target: str) -> str:
    """The content hash of a built target's image (what its archive was built from)."""
    return (images_dir() / f"{target}.sha256").read_text()


def import_into(lab: Lab, node: str, enter: list[str], address: str) -> None:
    """Import into the node's containerd (namespace k8s.io, the kubelet's) what it lacks."""
    marks = lab.node_dir(node) / "images"
    marks.mkdir(parents=True, exist_ok=True)
    for target in TARGETS:
        built = digest(target)
        mark = marks / f"{target}.sha256"
        if mark.exists() and mark.read_text() == built:
            continue
        _step(f"importing {target} into {node}'s containerd", [
            *enter, str(lab.containerd_bin / "ctr"), "--address", address, "--namespace", "k8s.io", "images", "import",
            str(archive(target))])
        mark.write_text(built)
