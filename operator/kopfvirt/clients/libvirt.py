"""The node's libvirt, through its local socket. Only the node agent imports this."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import libvirt

log = logging.getLogger(__name__)
# libvirt prints every error to stderr by default; we raise and log them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate", libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running", libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shuttingdown", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed", libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


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


class Hypervisor:
    """A reconnecting handle on one libvirtd; libvirt connections are thread-safe."""

    def __init__(self, uri: str = "qemu:///system"):
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._alive():
                self._conn = libvirt.open(self.uri)
            return self._conn

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def find(self, uuid: str) -> libvirt.virDomain | None:
        try:
            return self.conn().lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    @staticmethod
    def info(dom: libvirt.virDomain) -> DomainInfo:
        state, _reason = dom.state()
        return DomainInfo(uuid=dom.UUIDString(), name=dom.name(), state=STATES.get(state, "unknown"))

    def ensure_running(self, name: str, uuid: str, xml: str) -> DomainInfo:
        """Define the domain if it is new, start it if it is not running; adopt what exists."""
        dom = self.find(uuid)
        if dom is None:
            self._clear_stale_namesake(name, uuid)
            dom = self.conn().defineXML(xml)
            log.info("defined domain %s", dom.name())
        if not dom.isActive():
            dom.create()
            log.info("started domain %s", dom.name())
        return self.info(dom)

    def _clear_stale_namesake(self, name: str, uuid: str) -> None:
        """A stopped definition left by an earlier VM of the same name (another UID) goes;
        a running one is never touched: that is an error for a human to look at."""
        try:
            other = self.conn().lookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise
        if other.UUIDString() == uuid:
            return
        if other.isActive():
            raise DomainConflict(f"domain {name} of an earlier VM (uuid {other.UUIDString()}) still runs "
                                 f"on this node; stop it with virsh before this VM can start")
        _undefine(other)
        log.warning("removed stale definition of %s (uuid %s) left by an earlier VM", name, other.UUIDString())

    def stop(self, uuid: str, grace: float = 30.0) -> None:
        """ACPI shutdown, then destroy when the guest ignores it for `grace` seconds."""
        dom = self.find(uuid)
        if dom is None or not dom.isActive():
            return
        try:
            dom.shutdown()
        except libvirt.libvirtError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not dom.isActive():
                return
            time.sleep(0.5)
        if dom.isActive():
            dom.destroy()

    def remove(self, uuid: str) -> None:
        """Destroy and undefine; what is already gone is fine."""
        dom = self.find(uuid)
        if dom is None:
            return
        if dom.isActive():
            dom.destroy()
        try:
            _undefine(dom)
        except libvirt.libvirtError as e:
            if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        log.info("removed domain %s", uuid)
