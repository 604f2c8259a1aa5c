"""Build the krew archive of kubectl-kopfvirt and the manifest that installs it.

The plugin is one Python zip application, `kubectl-kopfvirt` (it needs python3 >= 3.11 on
the user's PATH, nothing else): the kopfvirt package and the libraries the plugin imports,
pinned in requirements.txt and installed from the package index by pip, pure Python only
(compiled parts left out: their libraries fall back). The archive is byte-for-byte
reproducible from the same sources (pinned libraries, sorted entries, fixed times), so its
sha256 in the manifest names exactly what was built.

    python integrations/krew/build.py [--out dist] [--write-manifest]

prints the archive's path and sha256; --write-manifest puts that sha256 and the version
into integrations/krew/kopfvirt.yaml (done for each release, with the archive uploaded
where the manifest's uri says). tests/integration/test_krew.py installs it with krew.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGE = REPO / "operator" / "kopfvirt"
MANIFEST = HERE / "kopfvirt.yaml"
FIXED = (1980, 1, 1, 0, 0, 0)
MAIN = b"import sys\nfrom kopfvirt.plugin import main\nsys.exit(main())\n"


def libraries(target: Path) -> None:
    """requirements.txt installed into `target`, as they are (no resolver, no bytecode)."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-compile", "--target", str(target), "-r", str(HERE / "requirements.txt")], check=True)


def _wanted(relative: str) -> bool:
    return not (relative.startswith("bin/") or "__pycache__" in relative or ".dist-info/" in relative
                or relative.endswith((".so", ".pyd", ".pyc")))


def zipapp() -> bytes:
    files: dict[str, bytes] = {"__main__.py": MAIN}
    with tempfile.TemporaryDirectory() as tmp:
        libraries(Path(tmp))
        for path in sorted(Path(tmp).rglob("*")):
            relative = path.relative_to(tmp).as_posix()
            if path.is_file() and _wanted(relative):
                files[relative] = path.read_bytes()
    for path in sorted(PACKAGE.rglob("*.py")):
        files[f"kopfvirt/{path.relative_to(PACKAGE).as_posix()}"] = path.read_bytes()
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, FIXED)
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name], zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def archive(out: Path, version: str) -> Path:
    app = zipapp()
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data, mode in (("kubectl-kopfvirt", app, 0o755), ("LICENSE", _license(), 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            t.addfile(info, io.BytesIO(data))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"kubectl-kopfvirt-v{version}.tar.gz"
    with open(path, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as g:
        g.write(tar.getvalue())
    return path


def _license() -> bytes:
    text = (REPO / "pyproject.toml").read_text()
    spdx = re.search(r'^license = "([^"]+)"', text, re.M)[1]
    return f"kubectl-kopfvirt is licensed under {spdx}.\n".encode()


def version() -> str:
    return re.search(r'^__version__ = "([^"]+)"', (PACKAGE / "__init__.py").read_text(), re.M)[1]


def manifest_for(sha256: str, ver: str) -> str:
    """The committed manifest's text with this archive's version and sha256 everywhere."""
    text = re.sub(r"v\d+\.\d+\.\d+", f"v{ver}", MANIFEST.read_text())
    return re.sub(r"(?m)^(\s*sha256: )[0-9a-f]{64}$", rf"\g<1>{sha256}", text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "dist")
    p.add_argument("--write-manifest", action="store_true")
    args = p.parse_args()
    ver = version()
    path = archive(args.out, ver)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"{path} {sha}")
    if args.write_manifest:
        MANIFEST.write_text(manifest_for(sha, ver))


if __name__ == "__main__":
    sys.exit(main())
