"""The libvirt client against libvirt's in-memory test driver (no daemon, no QEMU)."""

import threading

import pytest

from kopfvirt.clients.libvirt import Arrival, DomainConflict, Hypervisor
from kopfvirt.core import disks, domainxml, vmspec

UID = "0b9b2a4e-5a7c-4c39-9d7e-3f6c1a2b4c5d"
OTHER_UID = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def hv():
    # A fresh private test driver per test: test:///default is shared within a process.
    return Hypervisor("test:///default")


def _xml(uid=UID, name="demo"):
    vm = vmspec.parse("unit", name, uid, {"memory": {"size": "64Mi"}})
    return vm.domain_name, domainxml.domain_xml(vm, disks.Plan([]), "qemu").replace("type=\"qemu\"", "type=\"test\"")


def test_ensure_running_defines_starts_and_adopts(hv):
    name, xml = _xml()
    info = hv.ensure_running(name, UID, xml)
    assert (info.uuid, info.name, info.state) == (UID, "unit_demo", "running")
    dom = hv.find(UID)
    again = hv.ensure_running(name, UID, xml)  # adoption: the same domain, not a second one
    assert again.uuid == UID and hv.find(UID).ID() == dom.ID()
    hv.remove(UID)
    assert hv.find(UID) is None


def test_remove_of_missing_domain_is_fine(hv):
    hv.remove(OTHER_UID)


def test_stale_stopped_namesake_is_replaced(hv):
    name, old_xml = _xml(uid=OTHER_UID, name="again")
    hv.conn().defineXML(old_xml)
    _, new_xml = _xml(uid=UID, name="again")
    info = hv.ensure_running(name, UID, new_xml)
    assert info.uuid == UID and hv.find(OTHER_UID) is None
    hv.remove(UID)


def test_running_namesake_is_never_touched(hv):
    name, old_xml = _xml(uid=OTHER_UID, name="busy")
    hv.conn().defineXML(old_xml).create()
    _, new_xml = _xml(uid=UID, name="busy")
    with pytest.raises(DomainConflict, match="still runs"):
        hv.ensure_running(name, UID, new_xml)
    assert hv.find(OTHER_UID).isActive()
    hv.remove(OTHER_UID)


def test_stop_shuts_down(hv):
    name, xml = _xml(name="stopper")
    hv.ensure_running(name, UID, xml)
    hv.stop(UID, grace=5)
    assert not hv.find(UID).isActive()
    hv.remove(UID)


def test_a_stop_in_steps_asks_then_destroys_and_minds_no_missing_domain(hv):
    name, xml = _xml(name="stepper")
    hv.ensure_running(name, UID, xml)
    hv.destroy(UID)
    assert hv.state_and_reason(UID) == ("shutoff", "destroyed")
    hv.destroy(UID)  # once more: already off is fine
    hv.shutdown(UID)
    hv.conn().lookupByUUIDString(UID).create()
    hv.shutdown(UID)  # the test driver's guests obey the power button at once
    assert hv.state_and_reason(UID) == ("shutoff", "shutdown")
    hv.remove(UID)
    hv.destroy(UID)  # and gone
    hv.shutdown(UID)


def test_a_move_waits_for_the_paused_copy_an_earlier_move_left_on_its_target(hv):
    """Arrival.await_departure: a paused copy of the domain on the target (the source's of
    the move that brought it here, which that libvirtd is still stopping) is waited for
    until it is gone; a running copy (libvirt's to refuse) or none is not waited for."""
    name, xml = _xml(name="leaving")
    hv.ensure_running(name, UID, xml)
    arrival = Arrival("test:///default", UID, threading.Event())
    try:
        assert arrival.await_departure(timeout=5) < 0.5
        hv.find(UID).suspend()
        threading.Timer(0.4, hv.remove, (UID,)).start()
        assert 0.4 <= arrival.await_departure(timeout=5) < 3
        assert hv.find(UID) is None
        assert arrival.await_departure(timeout=5) < 0.5
        hv.ensure_running(name, UID, xml)
        hv.find(UID).suspend()
        assert 0.3 <= arrival.await_departure(timeout=0.3) < 1  # one that stays: given up on
    finally:
        arrival.close()
        hv.remove(UID)
