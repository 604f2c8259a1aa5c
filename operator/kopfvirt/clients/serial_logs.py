"""The guests' serial console logs on this node, kept bounded.

QEMU writes each log itself (qemu.conf `stdio_handler = "file"`: no virtlogd, whose
restart with the libvirt pod would cut every guest's console) and never rotates it. It
opens the log O_APPEND (the domain's `<log append="on">`), so a copy-and-truncate is safe:
its next write lands at the new end of the file. The newest `max_bytes` of what is cut
are kept as `<log>.1`; what QEMU writes between the copy and the truncate (a few bytes at
most, the agent checks every resync) is lost, as with logrotate's copytruncate."""

from __future__ import annotations

import os

from ..core.domainxml import SERIAL_LOG_DIR, SERIAL_LOG_SUFFIX


def rotate(max_bytes: int, log_dir: str = SERIAL_LOG_DIR) -> list[str]:
    """Cut every serial log in `log_dir` longer than `max_bytes`; the names of those cut."""
    try:
        entries = [e for e in os.scandir(log_dir) if e.name.endswith(SERIAL_LOG_SUFFIX)]
    except FileNotFoundError:
        return []
    cut = []
    for entry in entries:
        try:
            size = entry.stat().st_size
            if size <= max_bytes:
                continue
            with open(entry.path, "rb") as log, open(entry.path + ".1", "wb") as older:
                log.seek(size - max_bytes)
                older.write(log.read(max_bytes))
            os.truncate(entry.path, 0)
        except FileNotFoundError:  # its VM was removed meanwhile
            continue
        cut.append(entry.name)
    return cut


def remove(domain_name: str, log_dir: str = SERIAL_LOG_DIR) -> None:
    """A deleted VM's logs on this node (and its older generation)."""
    base = os.path.join(log_dir, domain_name + SERIAL_LOG_SUFFIX)
    for path in (base, base + ".1"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
