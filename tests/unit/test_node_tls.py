"""Where the agent keeps its node's libvirt certificate: one pair under libvirt's names and
QEMU's (links), keys readable by root alone, nothing rewritten when nothing changed."""

from __future__ import annotations

from kopfvirt.agent.tls import ALIASES, NodeTLS


def test_the_pair_is_written_once_under_both_namings(tmp_path):
    tls = NodeTLS("node-1", "kopfvirt-system", str(tmp_path / "tls"))
    files = {"cacert.pem": b"CA\n", "servercert.pem": b"CERT\n", "serverkey.pem": b"KEY\n"}
    assert tls._write(files) is True
    directory = tmp_path / "tls"
    for alias, target in ALIASES.items():
        assert (directory / alias).is_symlink() and (directory / alias).read_bytes() == files[target]
    assert (directory / "serverkey.pem").stat().st_mode & 0o777 == 0o600
    assert (directory / "servercert.pem").stat().st_mode & 0o777 == 0o644
    assert tls._write(files) is False                     # unchanged: libvirtd is not reloaded
    assert tls._write({**files, "servercert.pem": b"NEW\n"}) is True
    assert (directory / "client-cert.pem").read_bytes() == b"NEW\n"

