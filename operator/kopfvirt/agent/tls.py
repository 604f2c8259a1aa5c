"""The node's libvirt certificate, for migration over TLS: the agent makes a key on the
node, asks the cluster to sign it (a CertificateSigningRequest the controller judges and
signs with the operator's CA), and writes the pair where libvirtd, the libvirt client
library (a `pkipath` in the migration URI) and QEMU (qemu.conf's migrate_tls_x509_cert_dir)
read it. The key never leaves the node; the CA comes from ConfigMap kopfvirt-ca.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .. import NODE_TLS_DIR
from ..clients import kube
from ..core import certificates

log = logging.getLogger(__name__)

USAGES = ["digital signature", "server auth", "client auth"]
# One pair under both namings: libvirt's (libvirtd.conf, pkipath) and QEMU's (x509 dir).
ALIASES = {"ca-cert.pem": "cacert.pem", "server-cert.pem": "servercert.pem", "server-key.pem": "serverkey.pem",
           "clientcert.pem": "servercert.pem", "clientkey.pem": "serverkey.pem",
           "client-cert.pem": "servercert.pem", "client-key.pem": "serverkey.pem"}
# Where libvirtd reads its own pair: its default paths, the only ones `virt-admin
# server-update-tls` reloads (libvirt 9 ignores libvirtd.conf's ca_file, cert_file and
# key_file there). The libvirt image and the lab link them into the TLS directory.
LIBVIRTD_PATHS = {"/etc/pki/CA/cacert.pem": "cacert.pem", "/etc/pki/libvirt/servercert.pem": "servercert.pem",
                  "/etc/pki/libvirt/private/serverkey.pem": "serverkey.pem",
                  "/etc/pki/libvirt/clientcert.pem": "clientcert.pem",
                  "/etc/pki/libvirt/private/clientkey.pem": "clientkey.pem"}


class NodeTLS:
    def __init__(self, node: str, namespace: str, directory: str = NODE_TLS_DIR, signing_timeout: float = 60):
        self.node, self.namespace, self.directory = node, namespace, Path(directory)
        self.signing_timeout = signing_timeout

    def ensure(self) -> str | None:
        """One pass: the CA files equal to the cluster's, and a certificate that names the
        node's addresses and lasts (asked for anew otherwise). Returns why it was renewed."""
        ca = (kube.config_map_data(self.namespace, certificates.CA_CONFIG_MAP) or {}).get("ca.crt")
        if not ca:
            raise RuntimeError(f"no CA yet in ConfigMap {self.namespace}/{certificates.CA_CONFIG_MAP} "
                               "(the controller publishes it)")
        names = kube.node_addresses(self.node)
        now = datetime.datetime.now(datetime.timezone.utc)
        changed = self._write({"cacert.pem": ca.encode()})
        reason = certificates.node_certificate_reason(self._read("servercert.pem"), self._read("serverkey.pem"),
                                                      ca.encode(), names, now)
        if reason:
            request, key = certificates.new_node_request(self.node, names)
            cert = self._signed(request)
            self._write({"serverkey.pem": key, "servercert.pem": cert})
            changed = True
            log.info("libvirt certificate of %s for %s issued: %s", self.node, ", ".join(names), reason)
        if changed:
            self._reload_libvirtd()
        return reason

    def keep_fresh(self, period: float) -> threading.Thread:
        """In the background: at once (retried soon until it holds), then every `period`."""
        def loop() -> None:
            retry = 2.0
            while True:
                try:
                    self.ensure()
                    wait, retry = period, 2.0
                except Exception as e:  # the controller or the API may be away for a while
                    wait, retry = retry, min(retry * 2, period)
                    log.warning("libvirt certificate of %s (retrying in %.0fs): %s", self.node, wait, e)
                time.sleep(wait)
        thread = threading.Thread(target=loop, name="node-tls", daemon=True)
        thread.start()
        return thread

    def _signed(self, request: bytes) -> bytes:
        name = f"kopfvirt-libvirt-{self.node}-{uuid.uuid4().hex[:8]}"
        kube.create_csr(name, request, certificates.NODE_SIGNER, USAGES)
        deadline = time.monotonic() + self.signing_timeout
        while time.monotonic() < deadline:
            csr = kube.read_csr(name) or {}
            status = csr.get("status") or {}
            for condition in status.get("conditions") or []:
                if condition.get("type") in ("Denied", "Failed") and condition.get("status") == "True":
                    raise RuntimeError(f"CSR {name} {condition['type'].lower()}: {condition.get('message')}")
            if status.get("certificate"):
                return base64.b64decode(status["certificate"])
            time.sleep(0.5)
        raise RuntimeError(f"CSR {name} not signed within {self.signing_timeout:.0f}s (is the controller running?)")

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, files: dict[str, bytes]) -> bool:
        """Each file replaced whole (a reader never sees half of one), keys readable by root
        only; the aliases link to them. True when anything changed."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        changed = False
        for name, data in files.items():
            if self._read(name) == data:
                continue
            temporary = self.directory / f".{name}.new"
            temporary.write_bytes(data)
            temporary.chmod(0o600 if "key" in name else 0o644)
            os.replace(temporary, self.directory / name)
            changed = True
        for alias, target in ALIASES.items():
            link = self.directory / alias
            if not link.is_symlink() or os.readlink(link) != target:
                link.unlink(missing_ok=True)
                link.symlink_to(target)
        return changed

    def _reload_libvirtd(self) -> None:
        """libvirtd reads its server certificate when it starts or is told to."""
        result = subprocess.run(["virt-admin", "-c", "libvirtd:///system", "server-update-tls", "libvirtd"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            log.info("libvirtd did not reload its TLS files (it reads them when it starts): %s",
                     result.stderr.strip())
