"""`kopfvirt-lab`: the developers' lab command (up, down, status, exec). Not shipped in
the product's image: the lab is how this repository tests the operator, not part of it."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
from pathlib import Path

from .errors import LabError
from .layout import Lab, cache_dir


def _repo() -> Path:
    """The checkout the lab belongs to: this source tree, else the working directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "lab" / "build-kubernetes.sh").exists() else Path.cwd()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kopfvirt-lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (or repair) the lab")
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--virt-type", choices=("qemu", "kvm"), default="qemu")
    sub.add_parser("down", help="remove everything the lab made but the build cache")
    sub.add_parser("status", help="show the lab's parts and their health")
    ex = sub.add_parser("exec", help="run a command inside a lab node's namespaces")
    ex.add_argument("node")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    sys.exit(_run(args, Lab(_repo())))


@contextlib.contextmanager
def _one_at_a_time():
    """`up` and `down` wait for one already running (two image builds at once corrupt
    buildah's store; two `up`s race on every part), from any checkout: they share one lab."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "lab.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another kopfvirt-lab up/down to finish", file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(args, lab: Lab) -> int:
    from . import manage
    try:
        if args.command in ("up", "down"):
            with _one_at_a_time():
                if args.command == "up":
                    manage.up(lab, args.nodes, args.virt_type)
                else:
                    manage.down(lab)
        elif args.command == "status":
            return manage.status(lab)
        elif args.command == "exec":
            argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not argv:
                raise LabError("nothing to run: kopfvirt-lab exec NODE -- CMD...")
            manage.exec_(lab, args.node, argv)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
