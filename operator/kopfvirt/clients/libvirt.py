"""The node's libvirt, through its local socket. Only the node agent imports this.

Lifecycle events come from libvirt's default event loop, run in one daemon thread; the
callback gets (domain UUID, event, detail) as words, never libvirt objects.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import socket
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from typing import Callable

import libvirt
from prometheus_client import Histogram

log = logging.getLogger(__name__)
REMOTE_CONNECT_SECONDS = 5  # a node's libvirtd that does not accept in this long is unreachable
TLS_PORT = 16514
CALLS = Histogram("kopfvirt_libvirt_call_duration_seconds",
                  "How long the agent's calls to its node's libvirtd took (failed ones too), by Hypervisor method.",
                  ["call"], buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120, 600))
STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU
                | libvirt.VIR_DOMAIN_STATS_INTERFACE | libvirt.VIR_DOMAIN_STATS_BLOCK)


def _open_remote(uri: str) -> libvirt.virConnect:
    """Another node's libvirtd, without hanging: a TCP connect that fails fast when the
    node is gone (libvirt would wait out the kernel's minutes), then keepalive on the
    connection (no answer for 15 s closes it, so no call waits forever)."""
    parts = urllib.parse.urlsplit(uri)
    try:
        if parts.hostname:  # (a host-less URI, such as libvirt's test driver's, has none to reach)
            socket.create_connection((parts.hostname, parts.port or TLS_PORT), REMOTE_CONNECT_SECONDS).close()
    except OSError as e:
        raise RuntimeError(f"libvirtd at {parts.hostname}:{parts.port or TLS_PORT} is unreachable: {e}") from None
    conn = libvirt.open(uri)
    try:
        conn.setKeepAlive(5, 3)
    except libvirt.libvirtError:  # no event loop in this process (a one-off tool): none to run it
        pass
    return conn


# libvirt prints every error to stderr by default; we raise and log them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shuttingdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined", libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started", libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed", libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
STOPPED_DETAILS = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed", libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved", libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
}
SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown", libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed", libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved", libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
}
EventCallback = Callable[[str, str, str], None]

_loop_lock = threading.Lock()
_loop_started = False


def _ensure_event_loop() -> None:
    """libvirt wants its event implementation registered before the first connection."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()
        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class CopyRefused(RuntimeError):
    """A move that would copy disks onto themselves."""


class DomainConflict(RuntimeError):
    """Another domain holds the name this VM's domain needs."""


@dataclasses.dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: str


def _undefine(dom: libvirt.virDomain) -> None:
    """Undefine with its UEFI variables; drivers without NVRAM support take the plain call."""
    try:
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefine()


def _is(e: libvirt.libvirtError, *codes: int) -> bool:
    return e.get_error_code() in codes


def _upload(conn: libvirt.virConnect, pool: libvirt.virStoragePool, path: str) -> None:
    """A file of this node, as a volume of the same name in another libvirtd's pool."""
    vol_xml = ET.Element("volume")
    ET.SubElement(vol_xml, "name").text = os.path.basename(path)
    size = os.path.getsize(path)
    ET.SubElement(vol_xml, "capacity", unit="bytes").text = str(size)
    ET.SubElement(ET.SubElement(vol_xml, "target"), "format", type="raw")
    vol = pool.createXML(ET.tostring(vol_xml, encoding="unicode"), 0)
    stream = conn.newStream(0)
    vol.upload(stream, 0, size, 0)
    with open(path, "rb") as f:
        stream.sendAll(lambda _stream, nbytes, _opaque: f.read(nbytes), None)
    stream.finish()


class Console:
    """An open serial console stream; send() writes to the guest, close() lets go."""

    def __init__(self, stream: libvirt.virStream, on_end: Callable[[], None]):
        self._stream, self._on_end = stream, on_end
        self._closed = threading.Event()

    def send(self, data: bytes) -> None:
        while data and not self._closed.is_set():
            sent = self._stream.send(data)
            if sent == -2:  # the guest's side is full for now
                time.sleep(0.01)
                continue
            data = data[sent:]

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        for step in (self._stream.eventRemoveCallback, self._stream.abort):
            try:
                step()
            except libvirt.libvirtError:
                pass
        self._on_end()


class Arrival:
    """Another node's libvirtd, watched for the moment an incoming live migration resumes a
    domain there: the guest runs there from then on, and its source's copy is paused for
    good, while the source's libvirtd still stops that copy before its migration call
    returns (some 200 ms: libvirt looks whether a QEMU it killed is gone every 200 ms)."""

    def __init__(self, uri: str, uuid: str, wake: threading.Event):
        self.uuid, self.wake = uuid, wake
        self.resumed = threading.Event()
        self.resumed_at: float | None = None  # time.monotonic() of the resume
        self.post_copy = False
        _ensure_event_loop()
        self._conn = _open_remote(uri)
        try:
            self._callback = self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                               self._lifecycle, None)
        except libvirt.libvirtError:
            self._conn.close()
            raise

    def _lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        # RESUMED/MIGRATED only: a post-copy move resumes the target as RESUMED/POSTCOPY while
        # memory still flows, and libvirt sends RESUMED/MIGRATED at its very end.
        if event != libvirt.VIR_DOMAIN_EVENT_RESUMED or dom.UUIDString() != self.uuid:
            return
        if detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY:
            self.post_copy = True
        elif detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED:
            self.resumed_at = time.monotonic()
            self.resumed.set()
            self.wake.set()

    def await_departure(self, timeout: float = 10.0) -> float:
        """A paused copy left there by the move that brought the guest here, which that
        node's libvirtd is still stopping, would make it refuse the guest back ("already
        active"): wait until it is gone; how long that took. A running copy is left for
        libvirt to refuse, and so is any question this connection cannot answer."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                state = self._conn.lookupByUUIDString(self.uuid).state()[0]
            except libvirt.libvirtError:  # none there (VIR_ERR_NO_DOMAIN), or libvirt tells the rest
                break
            if state != libvirt.VIR_DOMAIN_PAUSED:
                break
            time.sleep(0.02)
        return time.monotonic() - start

    def figures(self, timeout: float = 1.0) -> dict:
        """The move's completed job statistics there, which libvirt stores a few ms after the
        resume; {} if they do not come (libvirt drops them after a post-copy move). Kept
        there: whoever asks after us finds them too."""
        if self.post_copy:
            return {}
        dom = self._conn.lookupByUUIDString(self.uuid)
        deadline = time.monotonic() + timeout
        while True:
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
                return stats
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.003)

    def close(self) -> None:
        try:
            self._conn.domainEventDeregisterAny(self._callback)
            self._conn.close()
        except libvirt.libvirtError:
            pass


class Hypervisor:
    """A reconnecting handle on one libvirtd; libvirt connections are thread-safe."""

    def __init__(self, uri: str = "qemu:///system", on_event: EventCallback | None = None,
                 on_reconnect: Callable[[], None] | None = None):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._on_event = on_event
        self._on_reconnect = on_reconnect
        if on_event:
            _ensure_event_loop()

    # -- connection -------------------------------------------------------------------
    def conn(self) -> libvirt.virConnect:
        reconnected = False
        with self._lock:
            if self._conn is None or not self._alive():
                self._conn = libvirt.open(self.uri)
                reconnected = True
                if self._on_event:
                    # No keepalive on this local socket: a libvirtd that dies closes it at
                    # once, and one frozen for a while (SIGSTOP) answers when it resumes; a
                    # keepalive closing it under calls in flight crashed the agent (SIGSEGV).
                    self._conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                      self._lifecycle, None)
            conn = self._conn
        if reconnected and self._on_reconnect:
            self._on_reconnect()
        return conn

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _lifecycle(self, _conn, dom, event, detail, _opaque) -> None:
        name = EVENTS.get(event, str(event))
        words = STOPPED_DETAILS.get(detail, str(detail)) if event == libvirt.VIR_DOMAIN_EVENT_STOPPED else str(detail)
        try:
            self._on_event(dom.UUIDString(), name, words)
        except Exception:  # an event handler must never kill libvirt's event loop
            log.exception("handling libvirt event %s/%s failed", name, words)

    # -- domains ----------------------------------------------------------------------
    def find(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if _is(e, libvirt.VIR_ERR_NO_DOMAIN):
                return None
            raise

    @staticmethod
    def info(dom: libvirt.virDomain) -> DomainInfo:
        state, _reason = dom.state()
        return DomainInfo(uuid=dom.UUIDString(), name=dom.name(), state=STATES.get(state, "unknown"))

    def state_and_reason(self, uuid: str) -> tuple[str, str]:
        """("absent", ""), ("running", ""), ("shutoff", "shutdown" | "destroyed" | "crashed" ...)."""
        dom = self.find(uuid)
        if dom is None:
            return "absent", ""
        state, reason = dom.state()
        if state == libvirt.VIR_DOMAIN_CRASHED:
            return "crashed", "crashed"
        why = SHUTOFF_REASONS.get(reason, "unknown") if state == libvirt.VIR_DOMAIN_SHUTOFF else ""
        return STATES.get(state, "unknown"), why

    def ensure_defined(self, name: str, uuid: str, xml: str) -> libvirt.virDomain:
        """Define the domain if new; a stopped one is redefined so spec changes apply at start."""
        dom = self.find(uuid)
        if dom is None:
            self._clear_stale_namesake(name, uuid)
        if dom is None or not dom.isActive():
            dom = self.conn().defineXML(xml)
        return dom

    def ensure_running(self, name: str, uuid: str, xml: str) -> DomainInfo:
        """Define if new, start if not running; a running domain is adopted as it is."""
        dom = self.ensure_defined(name, uuid, xml)
        if not dom.isActive():
            dom.create()
            log.info("started domain %s", dom.name())
        return self.info(dom)

    def domains(self) -> list[tuple[str, str, str]]:
        """(uuid, state, XML) of every domain this libvirtd knows, running or only defined."""
        out = []
        for dom in self.conn().listAllDomains(0):
            try:
                out.append((dom.UUIDString(), STATES.get(dom.state()[0], "unknown"), dom.XMLDesc(0)))
            except libvirt.libvirtError as e:
                if not _is(e, libvirt.VIR_ERR_NO_DOMAIN):  # gone since listed
                    raise
        return out

    def active_domain_xmls(self) -> list[str]:
        """The XML of every running domain of this libvirtd (ours or not)."""
        return [d.XMLDesc(0) for d in self.conn().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]

    def _clear_stale_namesake(self, name: str, uuid: str) -> None:
        """A stopped definition left by an earlier VM of the same name (another UID) goes;
        a running one is never touched: that is an error for a human to look at."""
        try:
            other = self.conn().lookupByName(name)
        except libvirt.libvirtError as e:
            if _is(e, libvirt.VIR_ERR_NO_DOMAIN):
                return
            raise
        if other.UUIDString() == uuid:
            return
        if other.isActive():
            raise DomainConflict(f"domain {name} of an earlier VM (uuid {other.UUIDString()}) still runs "
                                 f"on this node; stop it with virsh before this VM can start")
        _undefine(other)
        log.warning("removed stale definition of %s (uuid %s) left by an earlier VM", name, other.UUIDString())

    def pause(self, uuid: str) -> None:
        dom = self.find(uuid)
        if dom is not None and self.info(dom).state == "running":
            dom.suspend()

    def resume(self, uuid: str) -> None:
        dom = self.find(uuid)
        if dom is not None and self.info(dom).state == "paused":
            dom.resume()

    def shutdown(self, uuid: str) -> None:
        """Ask the guest to power off (ACPI); it may take its time, or ignore it."""
        dom = self.find(uuid)
        if dom is None or not dom.isActive():
            return
        try:
            dom.shutdown()
        except libvirt.libvirtError:  # it stopped meanwhile, or it cannot be asked: destroy follows
            pass

    def destroy(self, uuid: str) -> None:
        """Power off at once; a domain already off (or gone) is fine."""
        dom = self.find(uuid)
        if dom is None:
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as e:
            if not _is(e, libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                raise

    def stop(self, uuid: str, grace: float = 30.0) -> None:
        """ACPI shutdown, then destroy when the guest ignores it for `grace` seconds (blocks
        for that long: for one-off stops off the reconcile queue, such as an offline move)."""
        dom = self.find(uuid)
        if dom is None or not dom.isActive():
            return
        if self.info(dom).state != "paused" and grace > 0:
            self.shutdown(uuid)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if not dom.isActive():
                    return
                time.sleep(0.2)
        self.destroy(uuid)

    def remove(self, uuid: str) -> None:
        """Destroy and undefine; what is already gone is fine."""
        dom = self.find(uuid)
        if dom is None:
            return
        try:
            if dom.isActive():
                dom.destroy()
            _undefine(dom)
        except libvirt.libvirtError as e:
            if not _is(e, libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                raise
        log.info("removed domain %s", uuid)

    def interface_addresses(self, uuid: str) -> dict[str, list[str]]:
        """MAC -> addresses, from the guest agent where it answers, else DHCP leases."""
        dom = self.find(uuid)
        if dom is None or not dom.isActive():
            return {}
        for source in (libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT,
                       libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE):
            try:
                found = dom.interfaceAddresses(source)
            except libvirt.libvirtError:
                continue
            if found:
                return {v["hwaddr"]: [a["addr"] for a in (v.get("addrs") or [])] for v in found.values()
                        if v.get("hwaddr")}
        return {}

    # -- migration ----------------------------------------------------------------------
    def migrate(self, uuid: str, dest_uri: str, *, bandwidth_mibps: int | None = None, auto_converge: bool = False,
                post_copy: bool = False, copy_disks: list[str] = (), tls: bool = False, live: bool = True,
                migrate_uri: str | None = None) -> None:
        """libvirt's managed peer-to-peer migration: this node's libvirtd drives it to the
        target's. Blocks until it ends; raises libvirtError when it fails or is aborted.
        The domain is defined on the target and undefined here only once it runs there.
        `copy_disks`: the targets (vda, ...) of the disks to copy over NBD, and only those:
        a disk on shared storage is never copied onto itself. `migrate_uri`: where QEMU
        sends the guest (tcp://<target address>), not the target's possibly unresolvable hostname."""
        flags = (libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE | libvirt.VIR_MIGRATE_ABORT_ON_ERROR)
        for wanted, flag in ((live, libvirt.VIR_MIGRATE_LIVE), (auto_converge, libvirt.VIR_MIGRATE_AUTO_CONVERGE),
                             (post_copy, libvirt.VIR_MIGRATE_POSTCOPY), (tls, libvirt.VIR_MIGRATE_TLS),
                             (bool(copy_disks), libvirt.VIR_MIGRATE_NON_SHARED_DISK)):
            if wanted:
                flags |= flag
        params = {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: bandwidth_mibps} if bandwidth_mibps else {}
        if migrate_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
        if copy_disks:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(copy_disks)
        self._domain(uuid).migrateToURI3(dest_uri, params, flags)

    def _domain(self, uuid: str) -> libvirt.virDomain:
        dom = self.find(uuid)
        if dom is None:
            raise libvirt.libvirtError(f"domain {uuid} is not on this node")
        return dom

    def job_stats(self, uuid: str) -> dict:
        """The running job's statistics; {} when none runs."""
        dom = self.find(uuid)
        if dom is None:
            return {}
        stats = dom.jobStats()
        return stats if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE else {}

    def abort_job(self, uuid: str) -> None:
        dom = self.find(uuid)
        if dom is not None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as e:
                if not _is(e, libvirt.VIR_ERR_OPERATION_INVALID):  # it ended meanwhile
                    raise

    def start_post_copy(self, uuid: str) -> None:
        self._domain(uuid).migrateStartPostCopy(0)

    # -- what a user reaches through the API (agent/streams.py) --------------------------
    def domain_xml(self, uuid: str, inactive: bool = False) -> str:
        """The live domain XML, or the persistent definition."""
        return self._domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)

    def open_console(self, uuid: str, on_data: Callable[[bytes], None], on_end: Callable[[], None]) -> Console:
        """The guest's serial console as a libvirt stream (taken over from any other
        reader, as `virsh console --force`): what the guest writes goes to `on_data`, from
        libvirt's event loop; `on_end` once the stream ends (the guest stopped or moved)."""
        dom = self._domain(uuid)
        stream = self.conn().newStream(libvirt.VIR_STREAM_NONBLOCK)
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        console = Console(stream, on_end)

        def readable(st, events, _opaque) -> None:
            if events & libvirt.VIR_STREAM_EVENT_READABLE:
                try:
                    data = st.recv(65536)
                except libvirt.libvirtError:
                    data = b""
                if data == -2:  # nothing after all (EAGAIN)
                    return
                if data:
                    on_data(data)
                    return
            console.close()
        stream.eventAddCallback(libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
                                | libvirt.VIR_STREAM_EVENT_HANGUP, readable, None)
        return console

    def open_vnc(self, uuid: str) -> socket.socket:
        """A socket connected to the guest's VNC server, handed over by libvirtd
        (virDomainOpenGraphicsFD): the server listens on no address of its own, so this is
        the only way in, and it passes through the caller's authorization."""
        fd = self._domain(uuid).openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH)
        return socket.socket(fileno=fd)

    def set_max_downtime(self, uuid: str, ms: int) -> None:
        self._domain(uuid).migrateSetMaxDowntime(ms, 0)

    @staticmethod
    @contextmanager
    def copy_destination(uri: str, name: str, directory: str, keep: Callable[[], bool], uploads: list[str] = ()):
        """`directory` on the target, as a dir pool while a move copies disks into it:
        libvirt creates the file of a disk it copies over NBD only at the top of a pool
        there. `uploads`: files of this node sent there first as they are (read-only media,
        which NBD does not copy). The pool goes after the move and the files stay, unless
        `keep()` says no (the move failed and the domain is not there): then they go, and
        the directory."""
        pool_xml = ET.Element("pool", type="dir")
        ET.SubElement(pool_xml, "name").text = name
        ET.SubElement(ET.SubElement(pool_xml, "target"), "path").text = directory
        conn = _open_remote(uri)
        try:
            try:  # left by an agent that died mid-move
                stale = conn.storagePoolLookupByName(name)
                if stale.isActive():
                    stale.destroy()
                stale.undefine()
            except libvirt.libvirtError as e:
                if not _is(e, libvirt.VIR_ERR_NO_STORAGE_POOL):
                    raise
            pool = conn.storagePoolDefineXML(ET.tostring(pool_xml, encoding="unicode"))
            try:
                pool.build(0)  # mkdir
                pool.create(0)
                found = pool.listVolumes()
            except libvirt.libvirtError:
                if pool.isActive():
                    pool.destroy()
                pool.undefine()
                raise
            if found:  # the same files seen from there: copying (then removing) them would destroy them
                pool.destroy()
                pool.undefine()
                raise CopyRefused(f"the target already has {directory} ({', '.join(sorted(found))}): the "
                                  f"VM's storage pool is shared between the nodes; mark it shared: true")
            try:
                for path in uploads:
                    _upload(conn, pool, path)
                yield
            finally:
                kept = keep()
                if pool.isActive():
                    if not kept:
                        pool.refresh(0)
                        for vol in pool.listAllVolumes():
                            vol.delete(0)
                    pool.destroy()
                if not kept:
                    pool.delete(0)  # rmdir, once empty
                pool.undefine()
        finally:
            conn.close()

    @staticmethod
    def remote(uri: str, uuid: str) -> tuple[str, dict]:
        """(state, completed job statistics) of a domain on another node's libvirtd; the
        statistics are those of the migration that brought it there."""
        conn = _open_remote(uri)
        try:
            try:
                dom = conn.lookupByUUIDString(uuid)
            except libvirt.libvirtError as e:
                if _is(e, libvirt.VIR_ERR_NO_DOMAIN):
                    return "absent", {}
                raise
            state = STATES.get(dom.state()[0], "unknown")
            try:
                stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                stats = {}
            return state, stats
        finally:
            conn.close()

    # -- node ---------------------------------------------------------------------------
    def active_pools(self) -> list[str]:
        return sorted(p.name() for p in self.conn().listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE))

    def ensure_pool(self, name: str, xml: str, probe: bool = False) -> dict:
        """Define (and build: mkdir, mount point), start and autostart the pool where it is
        missing or stopped; its state as a StoragePool's per-node status. `probe`: refresh
        it, which asks the server (a pool of LUNs stays "active" in libvirt while its target
        is gone; a failed refresh stops it, and the next call starts it again)."""
        conn = self.conn()
        try:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as e:
                if not _is(e, libvirt.VIR_ERR_NO_STORAGE_POOL):
                    raise
                pool = conn.storagePoolDefineXML(xml)
                log.info("defined storage pool %s", name)
            if not pool.isActive():
                try:
                    pool.build(0)
                except libvirt.libvirtError:
                    pass  # iscsi-direct and rbd have nothing to build; an existing directory is fine
                pool.setAutostart(1)
                pool.create()
            elif probe:
                pool.refresh(0)
            _, capacity, allocation, available = pool.info()
            return {"state": "Active", "capacityBytes": capacity, "allocationBytes": allocation,
                    "availableBytes": available}
        except libvirt.libvirtError as e:
            return {"state": "Failed", "message": str(e)}

    def remove_pool(self, name: str) -> None:
        """Stop and undefine (never delete) a pool: the data is the admin's."""
        try:
            pool = self.conn().storagePoolLookupByName(name)
        except libvirt.libvirtError as e:
            if _is(e, libvirt.VIR_ERR_NO_STORAGE_POOL):
                return
            raise
        if pool.isActive():
            pool.destroy()
        pool.undefine()
        log.info("removed storage pool %s", name)

    def volume_path(self, pool: str, volume: str, refresh: bool = True) -> str | None:
        """The volume's path on this node, or None where it is not (yet) there. `refresh`
        the pool first: on shared storage another node may have made the volume."""
        try:
            p = self.conn().storagePoolLookupByName(pool)
            if refresh:
                p.refresh()
            return p.storageVolLookupByName(volume).path()
        except libvirt.libvirtError as e:
            if _is(e, libvirt.VIR_ERR_NO_STORAGE_VOL):
                return None
            raise

    def capabilities(self) -> str:
        return self.conn().getCapabilities()

    def domain_capabilities(self, virt_type: str) -> str:
        return self.conn().getDomainCapabilities(None, "x86_64", "q35", virt_type)

    def all_domain_stats(self) -> list[tuple[str, dict]]:
        """(UUID, libvirt's statistics) of each running domain (core/guest_stats.py reads them)."""
        return [(dom.UUIDString(), stats) for dom, stats in
                self.conn().getAllDomainStats(STATS_GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)]

    def expand_cpu(self, cpu_xml: str, virt_type: str) -> str:
        """The CPU definition with every feature spelled out, the model's own included
        (e.g. sse2 of qemu64), as libvirt's CPU map and this hypervisor know them."""
        return self.conn().baselineHypervisorCPU(None, "x86_64", "q35", virt_type, [cpu_xml],
                                                 libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)


def _timed(call: str, method):
    @functools.wraps(method)
    def timed(*args, **kwargs):
        with CALLS.labels(call=call).time():
            return method(*args, **kwargs)
    return timed


# Every public call of the Hypervisor is timed (static helpers and conn() itself are not).
for _name, _method in list(vars(Hypervisor).items()):
    if inspect.isfunction(_method) and not _name.startswith("_") and _name != "conn":
        setattr(Hypervisor, _name, _timed(_name, _method))
