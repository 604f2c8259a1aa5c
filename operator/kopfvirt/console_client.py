"""The plugin's side of the VM subresources (console, vnc, xml): requests to the
Kubernetes API server as the user, with the user's own credentials from the kubeconfig,
which kube-apiserver authorizes and proxies to the operator (controller/apiserver.py).
Nothing here needs a right in the operator's namespace.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.request

import websocket
from kubernetes import client

from .core import subresources

ESCAPE = b"\x1d"  # Ctrl+]: leaves the console, as virsh and virtctl do


class SubresourceError(RuntimeError):
    pass


def _message(status: int, body: bytes | str | None) -> str:
    try:
        return json.loads(body or b"")["message"]
    except (ValueError, KeyError, TypeError):
        text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
        return f"HTTP {status}" + (f": {text.strip()}" if text.strip() else "")


def _endpoint(path: str) -> tuple[str, ssl.SSLContext, dict[str, str]]:
    """(https URL, TLS context, headers) of an API path, as the kubeconfig says to reach
    the API server: its CA, the user's client certificate or token."""
    cfg = client.Configuration.get_default_copy()
    context = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if not cfg.verify_ssl:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if cfg.cert_file:
        context.load_cert_chain(cfg.cert_file, cfg.key_file)
    try:
        token = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
    except TypeError:  # the older client of the krew archive keys it by header name
        token = cfg.get_api_key_with_prefix("authorization")
    return cfg.host.rstrip("/") + path, context, {"Authorization": token} if token else {}


def _get(path: str) -> bytes:
    url, context, headers = _endpoint(path)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), context=context, timeout=30) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise SubresourceError(_message(e.code, e.read())) from None
    except urllib.error.URLError as e:
        raise SubresourceError(f"the API server cannot be reached: {e.reason}") from None


def xml(namespace: str, name: str, inactive: bool = False) -> str:
    return _get(subresources.path(namespace, name, "xml") + ("?inactive=true" if inactive else "")).decode()


def server_version() -> str:
    """The operator's version, as its subresource server says (any authenticated user may ask)."""
    document = _get(subresources.VERSION_PATH)
    try:
        return json.loads(document)["version"]
    except (ValueError, KeyError, TypeError) as e:
        raise SubresourceError(f"the operator's version document is not understood: {e}") from None


def connect(namespace: str, name: str, subresource: str) -> websocket.WebSocket:
    """A WebSocket to the VM's console or VNC through the API server."""
    url, context, headers = _endpoint(subresources.path(namespace, name, subresource))
    try:
        return websocket.create_connection("wss" + url[len("https"):], header=[f"{k}: {v}" for k, v in headers.items()],
                                           sslopt={"context": context}, subprotocols=[subresources.PROTOCOL],
                                           enable_multithread=True)
    except websocket.WebSocketBadStatusException as e:
        raise SubresourceError(_message(e.status_code, getattr(e, "resp_body", None))) from None


def _to_output(ws: websocket.WebSocket, write) -> None:
    """What the far side sends, written out until it closes."""
    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE or not data and opcode != websocket.ABNF.OPCODE_BINARY:
                return
            write(data)
    except (websocket.WebSocketException, OSError):
        return


def console(namespace: str, name: str) -> None:
    """The serial console on this terminal (raw mode) until Ctrl+] or the guest goes; with
    no terminal, what the guest writes goes to stdout until the end of stdin's input and
    of the guest's output both."""
    ws = connect(namespace, name, "console")
    print(f"Connected to the serial console of {namespace}/{name} (Ctrl+] leaves)", file=sys.stderr, flush=True)

    def write(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    out = threading.Thread(target=_to_output, args=(ws, write), daemon=True)
    out.start()
    fd = sys.stdin.fileno()
    saved = None
    if os.isatty(fd):
        import termios
        import tty
        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
    try:
        while out.is_alive():
            if not select.select([fd], [], [], 0.5)[0]:
                continue  # nothing typed: look again whether the guest's side closed
            chunk = os.read(fd, 1024)
            if not chunk:  # no more input: keep showing the guest's output
                out.join()
                break
            if saved is not None and ESCAPE in chunk:
                chunk = chunk.split(ESCAPE, 1)[0]
                if chunk:
                    ws.send_binary(chunk)
                break
            ws.send_binary(chunk)
    except (websocket.WebSocketException, OSError):
        pass
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        ws.close()


def vnc(namespace: str, name: str, port: int = 0, address: str = "127.0.0.1") -> None:
    """A local port a VNC viewer connects to; each viewer gets its own connection to the
    guest's display. Runs until interrupted."""
    connect(namespace, name, "vnc").close()  # refused early: no right, no VNC, not running
    listener = socket.create_server((address, port))
    shown = listener.getsockname()
    print(f"VNC of {namespace}/{name} at {shown[0]}:{shown[1]} (vnc://{shown[0]}:{shown[1]}); Ctrl+C stops",
          flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            try:
                ws = connect(namespace, name, "vnc")
            except (SubresourceError, websocket.WebSocketException, OSError) as e:  # this viewer's, not the port's
                print(f"error: {e}", file=sys.stderr, flush=True)
                conn.close()
                continue
            threading.Thread(target=_join, args=(ws, conn), daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()


def _join(ws: websocket.WebSocket, conn: socket.socket) -> None:
    out = threading.Thread(target=_to_output, args=(ws, conn.sendall), daemon=True)
    out.start()
    try:
        while data := conn.recv(65536):
            ws.send_binary(data)
    except (websocket.WebSocketException, OSError):
        pass
    finally:
        ws.close()
        out.join(5)
        conn.close()
