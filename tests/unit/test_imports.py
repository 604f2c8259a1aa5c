import subprocess
import sys


def test_the_controller_loads_no_libvirt():
    """The controller shares names with the agents (kopfvirt.names), never their modules."""
    probe = ("import sys, kopfvirt.controller.main, kopfvirt.controller.handlers; "
             "print(sorted(m for m in sys.modules if m == 'libvirt' or m.startswith('kopfvirt.agent')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
