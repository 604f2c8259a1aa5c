"""A subreaper for a lab node's daemons: `python -m kopfvirt_lab.reaper CMD...`.

libvirtd and virtlockd daemonize, and libvirtd daemonizes every QEMU it starts, so
they all end up children of PID 1. On a real host that is systemd, which reaps an
exited QEMU at once. The lab machine's PID 1 reaps late (up to 2 s), and until then
the dead QEMU is a zombie that libvirt, waiting for it to go, takes for alive: every
stop and every migration's hand-off waited on it. Run under this process instead, the
daemons' orphans are reaped here as they exit, as on a real node.
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    status = 0
    while True:  # until the daemon and every process it left behind are gone
        try:
            pid, code = os.wait()
        except ChildProcessError:
            return status
        if pid == child:  # the command's own exit status (a daemon's parent exits 0)
            status = os.waitstatus_to_exitcode(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
