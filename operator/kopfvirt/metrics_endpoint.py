"""/metrics for the callers Kubernetes' RBAC lets read it (`get` on the non-resource URL
/metrics, e.g. ClusterRole kopfvirt-metrics-reader bound to Prometheus' ServiceAccount),
checked as kube-rbac-proxy does: the bearer token by a TokenReview, the right by a
SubjectAccessReview, each answer kept for a minute. Over TLS with the process's own
certificate (the controller's serving one, the agent's node one)."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import threading
import time

from aiohttp import web
from kubernetes.client.rest import ApiException
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from .clients import kube
from .core import access
from .streaming import error, keep_loaded, serve, wait_for_files

PATH = "/metrics"
CACHE_SECONDS = 60


class MetricsEndpoint:
    def __init__(self, port: int, certfile: str, keyfile: str | None = None):
        self.port, self.certfile, self.keyfile = port, certfile, keyfile
        self._judged: dict[str, tuple[float, bool | None, str]] = {}  # token digest -> (until, allowed, why)

    def start(self) -> None:
        """Serve once the certificate exists (an agent's is issued after it starts)."""
        def run() -> None:
            wait_for_files(*(f for f in (self.certfile, self.keyfile) if f))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            keep_loaded(context, self.certfile, self.keyfile)
            app = web.Application()
            app.router.add_get(PATH, self.metrics)
            serve(app, self.port, context, "metrics")
        threading.Thread(target=run, name="metrics-start", daemon=True).start()

    async def metrics(self, request: web.Request) -> web.Response:
        token = access.bearer_token(request.headers.get("Authorization"))
        if token is None:
            return error(401, "Unauthorized", "a bearer token is needed: a ServiceAccount's that may get /metrics "
                                              "(ClusterRole kopfvirt-metrics-reader)")
        try:
            allowed, why = await asyncio.get_running_loop().run_in_executor(None, self.judge, token)
        except ApiException as e:
            return error(503, "ServiceUnavailable", f"the Kubernetes API answered {e.status} {e.reason}")
        if allowed is None:
            return error(401, "Unauthorized", why)
        if not allowed:
            return error(403, "Forbidden", why)
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def judge(self, token: str) -> tuple[bool | None, str]:
        """(allowed: None if the token is not valid, why)."""
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        until, allowed, why = self._judged.get(key, (0.0, None, ""))
        if until > now:
            return allowed, why
        user = access.user_of_token_review(kube.review_token(access.token_review(token)))
        if user is None:
            allowed, why = None, "the token is not valid"
        else:
            allowed, reason = kube.access_allowed(access.path_review(user, PATH))
            why = f'user "{user.name}" cannot get {PATH}' + (f": {reason}" if reason else "")
        self._judged = {k: v for k, v in self._judged.items() if v[0] > now}
        self._judged[key] = (now + CACHE_SECONDS, allowed, why)
        return allowed, why
