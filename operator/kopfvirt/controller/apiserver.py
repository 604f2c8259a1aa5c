"""The aggregated API server of the VM subresources (console, vnc, xml: see
core/subresources.py), in the controller: kube-apiserver proxies
/apis/subresources.kopfvirt.io/... here (APIService v1alpha1.subresources.kopfvirt.io),
naming the user in headers it vouches for with its front-proxy client certificate; this
server asks a SubjectAccessReview and relays to the agent on the VM's node, with the
controller's own certificate (agent/streams.py). Users need no right in the operator's
namespace and never reach a privileged pod themselves.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import ssl
import sys
import threading

import aiohttp
from aiohttp import web
from kubernetes.client.rest import ApiException

from .. import __version__
from ..clients import kube
from ..core import subresources
from ..names import AGENT_SELECTOR, AGENT_STREAM_PORT
from ..streaming import HEARTBEAT_SECONDS, accept, error, keep_loaded, relay_websockets, serve

log = logging.getLogger(__name__)
PORT = 8443
API_SERVICE = f"{subresources.VERSION}.{subresources.GROUP}"
FRONT_PROXY_REFRESH_SECONDS = 300


class SubresourceServer:
    def __init__(self, namespace: str, certfile: str, cafile: str, port: int = PORT,
                 agent_port: int = AGENT_STREAM_PORT):
        self.namespace, self.certfile, self.cafile = namespace, certfile, cafile
        self.port, self.agent_port = port, agent_port
        self.proxy: subresources.FrontProxy | None = None

    def start(self) -> None:
        """Serve once kube-apiserver's front-proxy settings are known (in a thread: the
        webhooks and the reconcilers never wait for them)."""
        def run() -> None:
            self._refresh_front_proxy()
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.verify_mode = ssl.CERT_OPTIONAL  # the availability probe and discovery come without
            context.load_verify_locations(cadata=self.proxy.ca_pem)
            keep_loaded(context, self.certfile)
            threading.Thread(target=self._keep_front_proxy, args=(context,), name="front-proxy", daemon=True).start()
            serve(self.app(), self.port, context, "subresource-api")
        threading.Thread(target=run, name="subresource-api-start", daemon=True).start()

    def _refresh_front_proxy(self) -> None:
        """Wait for kube-apiserver's front-proxy settings (ConfigMap in kube-system)."""
        delay = 1.0
        while True:
            try:
                data = kube.config_map_data(*subresources.AUTH_CONFIG_MAP)
                self.proxy = subresources.front_proxy(data or {})
                return
            except (ApiException, subresources.Unauthenticated) as e:
                log.warning("front-proxy settings of kube-apiserver (retrying in %.0fs): %s", delay, e)
                threading.Event().wait(delay)
                delay = min(delay * 2, 60)

    def _keep_front_proxy(self, context: ssl.SSLContext) -> None:
        """A rotated front-proxy CA is trusted within minutes (kept beside the old one)."""
        while not threading.Event().wait(FRONT_PROXY_REFRESH_SECONDS):
            try:
                self._refresh_front_proxy()
                context.load_verify_locations(cadata=self.proxy.ca_pem)
            except (ssl.SSLError, ValueError) as e:
                log.warning("front-proxy CA: %s", e)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(subresources.PREFIX, self.discovery)
        app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
        # Aggregated discovery is asked at /apis: "not acceptable" makes kube-apiserver use
        # the group version's document above.
        app.router.add_get("/apis", lambda _r: web.Response(status=406))
        app.router.add_get(subresources.VERSION_PATH, self.version)
        app.router.add_get(subresources.PREFIX + "/{tail:.*}", self.handle)
        return app

    async def version(self, request: web.Request) -> web.Response:
        """Anyone kube-apiserver let through (it authorized `get` on the resource) may read it."""
        try:
            subresources.user_of(list(request.headers.items()),
                                 subresources.common_name(request.transport.get_extra_info("peercert")), self.proxy)
        except subresources.Unauthenticated as e:
            return error(401, "Unauthorized", str(e))
        return web.json_response({"version": __version__, "pythonVersion": platform.python_version(),
                                  "platform": f"{sys.platform}/{platform.machine()}"})

    async def discovery(self, _request: web.Request) -> web.Response:
        return web.json_response(subresources.resource_list())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = subresources.parse_path(request.path)
        if target is None:
            return error(404, "NotFound", f"no such path: {request.path}")
        try:
            user = subresources.user_of(list(request.headers.items()),
                                        subresources.common_name(request.transport.get_extra_info("peercert")),
                                        self.proxy)
        except subresources.Unauthenticated as e:
            return error(401, "Unauthorized", str(e))
        loop = asyncio.get_running_loop()
        try:
            where = await loop.run_in_executor(None, self._authorize_and_locate, user, target)
        except ApiException as e:
            return error(503, "ServiceUnavailable", f"the Kubernetes API answered {e.status} {e.reason}")
        if isinstance(where, web.Response):
            return where
        node, address = where
        url = f"https://{address}:{self.agent_port}" + subresources.path(target.namespace, target.name,
                                                                          target.subresource, subresources.AGENT_PREFIX)
        async with aiohttp.ClientSession() as session:
            try:
                if target.subresource in subresources.DOCUMENTS:
                    return await self._document(session, url, request, node)
                async with session.ws_connect(url, protocols=(subresources.PROTOCOL,), ssl=self._client_context(),
                                              server_hostname=node, heartbeat=HEARTBEAT_SECONDS) as agent_ws:
                    ws = await accept(request)
                    log.info("%s of %s/%s opened by %s", target.subresource, target.namespace, target.name, user.name)
                    await relay_websockets(ws, agent_ws)
                    return ws
            except aiohttp.WSServerHandshakeError as e:  # its reason is in its log
                return error(e.status, "AgentRefused", f"the agent on {node} refused: HTTP {e.status}")
            except aiohttp.ClientConnectorCertificateError as e:
                return error(502, "BadGateway", f"the agent at {address} is not {node}'s: {e.certificate_error}")
            except (aiohttp.ClientError, OSError) as e:
                return error(503, "ServiceUnavailable", f"the agent on {node} cannot be reached: {e}")

    def _authorized_vm(self, user: subresources.User, target: subresources.Target) -> dict | web.Response:
        """The VM, if the user may get this subresource of it; else the error response."""
        allowed, reason = kube.access_allowed(subresources.access_review(user, target))
        if not allowed:
            return error(403, "Forbidden", f'user "{user.name}" cannot get {subresources.RESOURCE}/'
                                           f'{target.subresource} of {target.namespace}/{target.name} in API group '
                                           f'"{subresources.GROUP}"' + (f": {reason}" if reason else ""))
        vm = kube.get_object(target.namespace, target.name)
        if vm is None:
            return error(404, "NotFound", f"virtualmachine {target.namespace}/{target.name} not found")
        return vm

    def _authorize_and_locate(self, user: subresources.User, target: subresources.Target):
        """(node, agent address) of the VM the user may reach; else the error response."""
        vm = self._authorized_vm(user, target)
        if isinstance(vm, web.Response):
            return vm
        node = (vm.get("status") or {}).get("nodeName")
        if not node:
            return error(409, "Conflict", f"virtualmachine {target.namespace}/{target.name} is not running")
        if target.subresource == "vnc" and not ((vm.get("spec") or {}).get("console") or {}).get("vnc"):
            return error(409, "Conflict", f"virtualmachine {target.namespace}/{target.name} has no VNC display "
                                          f"(spec.console.vnc: true adds one; it applies at the next start)")
        address = kube.agent_pod_ip(self.namespace, node, AGENT_SELECTOR)
        if not address:
            return error(503, "ServiceUnavailable", f"no agent runs on {node}")
        return node, address

    def _client_context(self) -> ssl.SSLContext:
        """The controller's certificate towards the agents; theirs checked against the
        operator's CA and for the VM's node's name (each request says which: pod addresses
        are in no certificate)."""
        context = ssl.create_default_context(cafile=self.cafile)
        context.load_cert_chain(self.certfile)
        return context

    async def _document(self, session: aiohttp.ClientSession, url: str, request: web.Request,
                        node: str) -> web.Response:
        inactive = request.query.get("inactive", "") in ("1", "true")
        async with session.get(url, params={"inactive": "true"} if inactive else None,
                               ssl=self._client_context(), server_hostname=node) as r:
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)
