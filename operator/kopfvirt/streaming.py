"""Byte streams between WebSockets and sockets, for the console and VNC relays of the
controller (user <-> agent) and the agent (controller <-> libvirt); and a small HTTPS
server run on an event loop of its own, beside kopf's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from typing import Awaitable, Callable

from aiohttp import WSMsgType, web

from .core import subresources

log = logging.getLogger(__name__)
CHUNK = 65536
HEARTBEAT_SECONDS = 30  # WebSocket pings: proxies and load balancers drop idle connections


async def _ws_to(ws, write: Callable[[bytes], Awaitable[None]]) -> None:
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            await write(msg.data)
        elif msg.type == WSMsgType.TEXT:
            await write(msg.data.encode())
        elif msg.type == WSMsgType.ERROR:
            break


async def first_done(*coroutines: Awaitable) -> None:
    """Run both directions of a relay; when one ends (either side closed), end the other."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def relay_websockets(a, b) -> None:
    """Each side's messages to the other, as bytes, until one side closes."""
    await first_done(_ws_to(a, b.send_bytes), _ws_to(b, a.send_bytes))
    for ws in (a, b):
        await ws.close()


async def relay_socket(ws, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A WebSocket and a stream socket joined until either closes."""
    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def read() -> None:
        while data := await reader.read(CHUNK):
            await ws.send_bytes(data)
    await first_done(_ws_to(ws, write), read())
    writer.close()
    await ws.close()


def serve(app: web.Application, port: int, context: ssl.SSLContext, name: str) -> threading.Thread:
    """Serve `app` over TLS on `port`, on an event loop in a daemon thread of its own."""
    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "0.0.0.0", port, ssl_context=context).start())
        log.info("%s serving on port %d", name, port)
        loop.run_forever()
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def wait_for_files(*paths: str, period: float = 2) -> None:
    """Until every file exists: a node's certificate is issued after its agent starts."""
    while not all(os.path.exists(p) for p in paths):
        threading.Event().wait(period)


def keep_loaded(context: ssl.SSLContext, certfile: str, keyfile: str | None = None, cafile: str | None = None,
                period: float = 10) -> None:
    """Load the certificate (and the CAs to trust) now; new handshakes get renewed ones
    within `period` of their files changing (a rotated CA is trusted beside the old)."""
    files = list(dict.fromkeys(f for f in (certfile, keyfile, cafile) if f))

    def load() -> None:
        context.load_cert_chain(certfile, keyfile)
        if cafile:
            context.load_verify_locations(cafile)
    load()

    def loop() -> None:
        seen = tuple(os.stat(f).st_mtime_ns for f in files)
        while not threading.Event().wait(period):
            try:
                stamp = tuple(os.stat(f).st_mtime_ns for f in files)
                if stamp != seen:
                    load()
                    seen = stamp
            except (OSError, ssl.SSLError) as e:  # a pair half written: the next pass has both
                log.warning("reloading %s: %s", certfile, e)
    threading.Thread(target=loop, name="reload-certificate", daemon=True).start()


async def accept(request: web.Request) -> web.WebSocketResponse:
    """The WebSocket handshake, with the subprotocol every hop speaks."""
    ws = web.WebSocketResponse(protocols=(subresources.PROTOCOL,), heartbeat=HEARTBEAT_SECONDS)
    await ws.prepare(request)
    return ws


def error(code: int, reason: str, message: str) -> web.Response:
    """An API error as kubectl and client libraries read it (a metav1.Status)."""
    return web.json_response(subresources.status(code, reason, message), status=code)
