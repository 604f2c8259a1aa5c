"""What a user reaches of this node's VMs through the Kubernetes API: the serial console,
VNC and the domain XML (core/subresources.py). Served to the controller alone, which has
checked the user's rights: mutual TLS with the operator's CA, this node's certificate
(agent/tls.py) as the server's, and only the controller's certificate taken as a client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

import libvirt
from aiohttp import web

from ..core import subresources
from ..names import AGENT_STREAM_PORT
from ..streaming import accept, error, keep_loaded, relay_socket, serve, wait_for_files

log = logging.getLogger(__name__)


class Streams:
    def __init__(self, agent, tls_dir: str, controller_name: str, port: int = AGENT_STREAM_PORT):
        self.agent, self.port, self.controller_name = agent, port, controller_name
        self.dir = Path(tls_dir)

    def start(self) -> threading.Thread:
        """Serve once the node's certificate exists (it is asked for at start)."""
        def wait_then_serve() -> None:
            wait_for_files(*(str(self.dir / f) for f in ("cacert.pem", "servercert.pem", "serverkey.pem")))
            serve(self.app(), self.port, self.context(), "agent-streams")
        thread = threading.Thread(target=wait_then_serve, name="agent-streams-start", daemon=True)
        thread.start()
        return thread

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.verify_mode = ssl.CERT_REQUIRED
        keep_loaded(context, str(self.dir / "servercert.pem"), str(self.dir / "serverkey.pem"),
                    str(self.dir / "cacert.pem"))
        return context

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(subresources.AGENT_PREFIX + "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = subresources.common_name(request.transport.get_extra_info("peercert"))
        if peer != self.controller_name:
            return error(403, "Forbidden", f"client certificate {peer!r} is not the controller's")
        target = subresources.parse_path(request.path, subresources.AGENT_PREFIX)
        if target is None:
            return error(404, "NotFound", f"no such path: {request.path}")
        body = self.agent.vm_named(target.namespace, target.name)
        uid = body["metadata"]["uid"] if body else None
        loop = asyncio.get_running_loop()
        if uid is None or (await loop.run_in_executor(None, self.agent.hv.state_and_reason, uid))[0] == "absent":
            return error(404, "NotFound", f"virtualmachine {target.namespace}/{target.name} has no domain on "
                                           f"{self.agent.node}")
        try:
            if target.subresource == "xml":
                inactive = request.query.get("inactive", "") in ("1", "true")
                xml = await loop.run_in_executor(None, self.agent.hv.domain_xml, uid, inactive)
                return web.Response(text=xml, content_type="application/xml")
            if target.subresource == "vnc":
                sock = await loop.run_in_executor(None, self.agent.hv.open_vnc, uid)
                reader, writer = await asyncio.open_connection(sock=sock)
                ws = await accept(request)
                await relay_socket(ws, reader, writer)
                return ws
            return await self._console(request, uid)
        except libvirt.libvirtError as e:
            log.warning("%s of %s/%s: %s", target.subresource, target.namespace, target.name, e.get_error_message())
            return error(409, "Conflict", f"libvirt: {e.get_error_message()}")

    async def _console(self, request: web.Request, uid: str) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        console = await loop.run_in_executor(
            None, self.agent.hv.open_console, uid,
            lambda data: loop.call_soon_threadsafe(queue.put_nowait, data),
            lambda: loop.call_soon_threadsafe(queue.put_nowait, None))
        ws = await accept(request)

        async def guest_to_user() -> None:
            while (data := await queue.get()) is not None:
                await ws.send_bytes(data)
            await ws.close()
        out = asyncio.ensure_future(guest_to_user())
        try:
            async for msg in ws:
                if msg.type in (web.WSMsgType.BINARY, web.WSMsgType.TEXT):
                    data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                    await loop.run_in_executor(None, console.send, data)
        finally:
            await loop.run_in_executor(None, console.close)
            out.cancel()
        return ws

