"""Serial logs are cut past their cap without losing the writer: QEMU appends (O_APPEND),
as the writer here does, and keeps writing at the new end after the cut."""

import os

from kopfvirt.clients import serial_logs
from kopfvirt.core.nodelabels import SERIAL_LOG_MAX_ANNOTATION, serial_log_max_bytes


def test_a_long_log_is_cut_and_the_appending_writer_goes_on_at_its_new_end(tmp_path):
    log = tmp_path / "ns_vm-serial.log"
    writer = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # as QEMU opens it (logappend=on)
    for n in range(1, 201):
        os.write(writer, f"kopfvirt-heartbeat {n}\n".encode())
    short = tmp_path / "ns_other-serial.log"
    short.write_text("booting\n")
    (tmp_path / "qemu-ns_vm.log").write_bytes(b"x" * 5000)  # QEMU's own log is not ours to cut

    assert serial_logs.rotate(1024, str(tmp_path)) == ["ns_vm-serial.log"]
    assert log.stat().st_size == 0 and short.read_text() == "booting\n"
    older = (tmp_path / "ns_vm-serial.log.1").read_text()
    assert len(older) == 1024 and older.endswith("kopfvirt-heartbeat 200\n")
    os.write(writer, b"kopfvirt-heartbeat 201\n")
    os.close(writer)
    assert log.read_text() == "kopfvirt-heartbeat 201\n"  # at the start: no hole of 4 KiB of zeros
    assert (tmp_path / "qemu-ns_vm.log").stat().st_size == 5000
    assert serial_logs.rotate(1024, str(tmp_path)) == []


def test_removing_a_vms_logs_takes_both_generations(tmp_path):
    for name in ("ns_vm-serial.log", "ns_vm-serial.log.1", "ns_vm2-serial.log"):
        (tmp_path / name).write_text("x")
    serial_logs.remove("ns_vm", str(tmp_path))
    serial_logs.remove("ns_gone", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ns_vm2-serial.log"]
    assert serial_logs.rotate(1024, str(tmp_path / "missing")) == []


def test_the_node_annotation_sets_the_cap_and_a_bad_one_is_named():
    assert serial_log_max_bytes({}, 2048) == (2048, None)
    assert serial_log_max_bytes({SERIAL_LOG_MAX_ANNOTATION: "4096"}, 2048) == (4096, None)
    for bad in ("lots", "100", "-5"):
        cap, trouble = serial_log_max_bytes({SERIAL_LOG_MAX_ANNOTATION: bad}, 2048)
        assert cap == 2048 and SERIAL_LOG_MAX_ANNOTATION in trouble and repr(bad) in trouble
