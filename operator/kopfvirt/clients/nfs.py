"""Files on an NFS server through libnfs, the user-space client QEMU's own NFS driver uses.

Nodes need no kernel NFS client: QEMU opens the disks itself (libvirt network disks,
protocol nfs), and the agent makes directories, checks and removes files through this
module. Locations are URLs, `nfs://<server>/<path>`. Like QEMU, which mounts the
directory a disk is in, every call mounts a directory on the server: the deepest
existing one on the way to what it works on, so no call needs to know where the export
starts. Only the node agent imports this.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import posixpath
from contextlib import contextmanager

from ..core.disks import nfs_location, nfs_parts

TIMEOUT_MS = 15000           # a gone server fails the call instead of holding the agent
NF3DIR = 2

_lib = None


class NFSError(OSError):
    """An NFS call failed; the message is libnfs's, with the URL."""


class _Dirent(ctypes.Structure):
    pass


_Dirent._fields_ = [("next", ctypes.POINTER(_Dirent)), ("name", ctypes.c_char_p), ("inode", ctypes.c_uint64),
                    ("type", ctypes.c_uint32), ("mode", ctypes.c_uint32), ("size", ctypes.c_uint64)]


class _StatVFS(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree",
                                               "favail", "fsid", "flag", "namemax")]


_ARGS = {  # libnfs's synchronous calls: each takes the context first
    "nfs_destroy_context": [], "nfs_get_error": [], "nfs_set_timeout": [ctypes.c_int],
    "nfs_mount": [ctypes.c_char_p, ctypes.c_char_p],
    "nfs_mkdir": [ctypes.c_char_p], "nfs_rmdir": [ctypes.c_char_p], "nfs_unlink": [ctypes.c_char_p],
    "nfs_stat64": [ctypes.c_char_p, ctypes.c_void_p], "nfs_statvfs64": [ctypes.c_char_p, ctypes.c_void_p],
    "nfs_opendir": [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)],
    "nfs_readdir": [ctypes.c_void_p], "nfs_closedir": [ctypes.c_void_p],
}


def _libnfs():
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("nfs") or "libnfs.so.13")
        lib.nfs_init_context.restype = ctypes.c_void_p
        lib.nfs_get_error.restype = ctypes.c_char_p
        lib.nfs_readdir.restype = ctypes.POINTER(_Dirent)
        for name, args in _ARGS.items():
            getattr(lib, name).argtypes = [ctypes.c_void_p, *args]
        _lib = lib
    return _lib


class _Mount:
    """One libnfs context mounted on one directory; paths are relative to it."""

    def __init__(self, location: str):
        self.location = location
        self.lib = _libnfs()
        self.ctx = self.lib.nfs_init_context()
        if not self.ctx:
            raise NFSError(f"{location}: libnfs could not make a context")
        self.lib.nfs_set_timeout(self.ctx, TIMEOUT_MS)

    def error(self, what: str) -> NFSError:
        return NFSError(f"{self.location}: {what}: {(self.lib.nfs_get_error(self.ctx) or b'').decode()}")

    def check(self, rc: int, what: str) -> None:
        if rc < 0:
            raise self.error(what)

    def exists(self, rel: str) -> bool:
        return self.lib.nfs_stat64(self.ctx, rel.encode(), ctypes.create_string_buffer(256)) == 0

    def entries(self, rel: str) -> list[tuple[str, bool]]:
        handle = ctypes.c_void_p()
        self.check(self.lib.nfs_opendir(self.ctx, rel.encode(), ctypes.byref(handle)), f"opendir {rel}")
        out = []
        try:
            while entry := self.lib.nfs_readdir(self.ctx, handle):
                name = entry.contents.name.decode()
                if name not in (".", ".."):
                    out.append((name, entry.contents.type == NF3DIR))
        finally:
            self.lib.nfs_closedir(self.ctx, handle)
        return out

    def remove_tree(self, rel: str) -> None:
        for name, is_dir in self.entries(rel):
            child = posixpath.join(rel, name)
            if is_dir:
                self.remove_tree(child)
            else:
                self.check(self.lib.nfs_unlink(self.ctx, child.encode()), f"unlink {child}")
        self.check(self.lib.nfs_rmdir(self.ctx, rel.encode()), f"rmdir {rel}")

    def close(self) -> None:
        self.lib.nfs_destroy_context(self.ctx)


@contextmanager
def _mounted(location: str):
    """A client mounted on the deepest existing directory of `location`'s path, and the
    rest of the path below it ('.' when the whole path is a directory there). Only a
    refused mount (MNT3ERR_*: no such directory) tries the parent; an unreachable server
    fails at once."""
    server, path = nfs_parts(location)
    head, rest = path, []
    while True:
        m = _Mount(location)
        if m.lib.nfs_mount(m.ctx, server.encode(), head.encode()) == 0:
            break
        error = m.error(f"mount {head}")
        m.close()
        if head == "/" or "MNT3ERR" not in str(error):
            raise error
        head, tail = posixpath.split(head)
        rest.insert(0, tail)
    try:
        yield m, "/".join(rest) or "."
    finally:
        m.close()


@contextmanager
def _in_parent(location: str):
    """A client on the directory that holds `location`, and its name relative to it."""
    server, path = nfs_parts(location)
    with _mounted(nfs_location(server, posixpath.dirname(path))) as (m, rel):
        yield m, posixpath.join(rel, posixpath.basename(path))


def exists(location: str) -> bool:
    with _in_parent(location) as (m, target):
        return m.exists(target)


def makedirs(location: str) -> bool:
    """mkdir -p; True when it made the last directory (it did not exist)."""
    with _mounted(location) as (m, rel):
        if rel == ".":
            return False
        done = ""
        for part in rel.split("/"):
            done = posixpath.join(done, part) if done else part
            if not m.exists(done):
                m.check(m.lib.nfs_mkdir(m.ctx, done.encode()), f"mkdir {done}")
        return True


def listdir(location: str) -> list[str]:
    """Names in a directory; empty when it does not exist."""
    with _mounted(location) as (m, rel):
        return [] if rel != "." else sorted(name for name, _ in m.entries("."))


def remove_tree(location: str) -> None:
    """rm -r of a directory; nothing when it does not exist."""
    with _in_parent(location) as (m, target):
        if m.exists(target):
            m.remove_tree(target)


def remove(location: str) -> None:
    with _in_parent(location) as (m, target):
        if m.exists(target):
            m.check(m.lib.nfs_unlink(m.ctx, target.encode()), f"unlink {target}")


def usage(location: str) -> dict:
    """Capacity, allocation and free space of the filesystem a directory is on."""
    with _mounted(location) as (m, rel):
        if rel != ".":
            raise NFSError(f"{location}: no such directory on the server")
        st = _StatVFS()
        m.check(m.lib.nfs_statvfs64(m.ctx, b".", ctypes.byref(st)), "statvfs")
        return {"capacityBytes": st.blocks * st.frsize, "allocationBytes": (st.blocks - st.bfree) * st.frsize,
                "availableBytes": st.bavail * st.frsize}
