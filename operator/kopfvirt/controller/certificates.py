"""The operator's CA and what it signs, kept by the controller: the CA and the webhook's
certificate issued into a Secret it owns, renewed before they expire, written where its
webhook server reads them, the CA patched into the caBundle of the webhook configuration
and of the subresource APIService (so `helm install` needs no cert-manager) and published
for the agents (ConfigMap kopfvirt-ca); and the agents' CertificateSigningRequests for their
node's libvirt certificate, judged and signed. Every replica runs the same check; a guarded
write lets one of them win.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import threading
from pathlib import Path

from kubernetes.client.rest import ApiException

from ..clients import kube
from ..core import certificates
from ..names import AGENT_ACCOUNT, NODE_NAME_EXTRA

log = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "kopfvirt-controller", "app.kubernetes.io/name": "kopfvirt"}


class WebhookCertificates:
    def __init__(self, namespace: str, secret: str, names: list[str], configuration: str, directory: str,
                 api_service: str | None = None):
        self.namespace, self.secret, self.names = namespace, secret, names
        self.configuration, self.api_service = configuration, api_service
        self.directory = Path(directory)

    @property
    def certfile(self) -> str:
        """Certificate and key in one file, replaced whole: the server, which reloads when
        its files change, never pairs a new key with the old certificate."""
        return str(self.directory / "serving.pem")

    keyfile = certfile

    @property
    def cafile(self) -> str:
        return str(self.directory / "ca.crt")

    def ensure(self) -> None:
        """One pass: the Secret up to date (issued or renewed if needed), the files the
        server reads equal to it, the caBundle of every webhook its CA bundle."""
        bundle = self._secret()
        self._write_files(bundle)
        self._patch_ca_bundle(bundle)
        self._publish_ca(bundle)

    def bundle(self) -> certificates.Bundle:
        """The current CA and serving pair (renewed first if due)."""
        return self._secret()

    def keep_fresh(self, period: float) -> threading.Thread:
        """Check every `period` seconds in the background (renewal, and a caBundle reset
        by an apply of the configuration without it)."""
        def loop() -> None:
            stop = threading.Event()
            while not stop.wait(period):
                try:
                    self.ensure()
                except Exception:  # the API may be away for a while; the next pass retries
                    log.exception("webhook certificates")
        thread = threading.Thread(target=loop, name="webhook-certificates", daemon=True)
        thread.start()
        return thread

    def _secret(self) -> certificates.Bundle:
        for _ in range(3):
            now = datetime.datetime.now(datetime.timezone.utc)
            found = kube.read_secret(self.namespace, self.secret)
            data, version = found if found else (None, None)
            bundle = certificates.from_secret_data(data)
            reason = certificates.renewal_reason(bundle, self.names, now)
            if reason is None:
                return bundle
            renewed = certificates.renew(bundle, self.names, now)
            try:
                kube.write_secret(self.namespace, self.secret, certificates.to_secret_data(renewed), version,
                                  MANAGED_BY, secret_type="kubernetes.io/tls")
            except ApiException as e:
                if e.status == 409:  # another replica wrote it first: take theirs
                    continue
                raise
            log.info("webhook certificate issued into Secret %s/%s: %s", self.namespace, self.secret, reason)
            return renewed
        raise RuntimeError(f"Secret {self.namespace}/{self.secret} keeps changing under the controller")

    def _write_files(self, bundle: certificates.Bundle) -> None:
        """Each file replaced whole (renamed into place): the server never reads half of one."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path, data in ((self.cafile, bundle.ca_bundle), (self.certfile, bundle.cert + bundle.key)):
            target = Path(path)
            if target.exists() and target.read_bytes() == data:
                continue
            temporary = target.with_suffix(".new")
            temporary.write_bytes(data)
            temporary.chmod(0o600)
            os.replace(temporary, target)

    def _patch_ca_bundle(self, bundle: certificates.Bundle) -> None:
        wanted = base64.b64encode(bundle.ca_bundle).decode()
        current = kube.webhook_ca_bundles(self.configuration)
        if current is None:
            log.warning("no ValidatingWebhookConfiguration %s to give the webhook's CA", self.configuration)
        elif any(c != wanted for c in current):
            kube.set_webhook_ca_bundle(self.configuration, wanted, len(current))
            log.info("caBundle of ValidatingWebhookConfiguration %s set", self.configuration)
        if self.api_service:
            try:  # the webhooks never wait for it: the next pass tries again
                current_api = kube.api_service_ca_bundle(self.api_service)
                if current_api is None:
                    log.warning("no APIService %s to give the CA of the VM subresources' server", self.api_service)
                elif current_api != wanted:
                    kube.set_api_service_ca_bundle(self.api_service, wanted)
                    log.info("caBundle of APIService %s set", self.api_service)
            except ApiException as e:
                log.warning("caBundle of APIService %s: %s %s", self.api_service, e.status, e.reason)

    def _publish_ca(self, bundle: certificates.Bundle) -> None:
        ca = bundle.ca_bundle.decode()
        if (kube.config_map_data(self.namespace, certificates.CA_CONFIG_MAP) or {}).get("ca.crt") != ca:
            kube.write_config_map(self.namespace, certificates.CA_CONFIG_MAP, {"ca.crt": ca}, MANAGED_BY)
            log.info("CA published in ConfigMap %s/%s", self.namespace, certificates.CA_CONFIG_MAP)


class NodeCertificateSigner:
    """Signs the agents' CSRs (signerName kopfvirt.io/libvirt) with the operator's CA, once
    the requester is the agent's ServiceAccount (bound to that node, when its token says)
    and the request names only that node's own addresses; denies the rest, saying why."""

    def __init__(self, certs: WebhookCertificates, namespace: str, agent_account: str = AGENT_ACCOUNT):
        self.certs = certs
        self.requester = f"system:serviceaccount:{namespace}:{agent_account}"

    def handle(self, name: str) -> None:
        csr = kube.read_csr(name)
        status = (csr or {}).get("status") or {}
        settled = {c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"}
        if csr is None or status.get("certificate") or settled & {"Denied", "Failed"}:
            return
        request = base64.b64decode(csr["spec"]["request"])
        node = certificates.requested_node(request)
        refusal = self.refusal(csr["spec"], request, node)
        try:
            if refusal:
                kube.settle_csr(csr, False, "NotThisNode", refusal)
                log.warning("CSR %s denied: %s", name, refusal)
                return
            if "Approved" not in settled:
                csr = kube.settle_csr(csr, True, "NodeCertificate", f"libvirt certificate of node {node}")
        except ApiException as e:
            if e.status == 409:  # changed since read (a replica, or a double event): its event comes again
                return
            raise
        bundle = self.certs.bundle()
        now = datetime.datetime.now(datetime.timezone.utc)
        try:
            kube.issue_csr(csr, certificates.sign_node_request(bundle.ca_cert, bundle.ca_key, request, now))
        except ApiException as e:
            if e.status != 409:  # 409: a replica issued it first
                raise
        log.info("CSR %s signed: libvirt certificate of node %s", name, node)

    def refusal(self, spec: dict, request: bytes, node: str | None) -> str | None:
        username = spec.get("username")
        if username != self.requester:
            return f"only {self.requester} may ask for node certificates, not {username}"
        if node is None:
            return f"the request's subject is not CN={certificates.node_common_name('<node>')}"
        bound = (spec.get("extra") or {}).get(NODE_NAME_EXTRA)
        if not bound:  # a token made for the account, not its pod: it could ask for any node
            return "the requester's token is bound to no node (only an agent pod's own token is)"
        if bound != [node]:
            return f"the requester's token is bound to node {bound[0]}, not {node}"
        try:
            allowed = kube.node_addresses(node)
        except ApiException as e:
            if e.status == 404:
                return f"there is no Node {node}"
            raise
        return certificates.node_request_problem(request, node, allowed)
