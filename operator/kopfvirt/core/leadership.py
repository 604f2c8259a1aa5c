"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Every controller replica watches and serves the admission webhook; only the one holding
the Lease writes. Expiry is judged by how long the Lease record has gone unchanged on the
reader's own monotonic clock, never by comparing its renewTime with the local wall clock,
so clock skew between nodes cannot make two leaders. A leader that has not renewed for
RENEW_DEADLINE steps down (the process exits) well before the others may take over after
LEASE_SECONDS. Pure: the kopf-free elector in controller/leadership.py does the I/O.
"""

from __future__ import annotations

import dataclasses
import datetime

LEASE_SECONDS = 15
RENEW_DEADLINE = 10
RETRY_SECONDS = 2


@dataclasses.dataclass(frozen=True)
class Observed:
    """A Lease record as last seen, and when (monotonic seconds) it was first seen so."""

    record: tuple
    since: float


def record_of(spec: dict | None) -> tuple:
    """What identifies one renewal of a Lease: a new one changes it."""
    spec = spec or {}
    return (spec.get("holderIdentity") or "", spec.get("renewTime"), spec.get("leaseTransitions"))


def observe(previous: Observed | None, spec: dict | None, now: float) -> Observed:
    record = record_of(spec)
    if previous is not None and previous.record == record:
        return previous
    return Observed(record, now)


def held_by_other(spec: dict | None, me: str, observed: Observed, now: float) -> bool:
    """Is the Lease another replica's, renewed within its duration as seen from here?"""
    spec = spec or {}
    holder = spec.get("holderIdentity") or ""
    duration = spec.get("leaseDurationSeconds") or LEASE_SECONDS
    return bool(holder) and holder != me and now - observed.since < duration


def _microtime(at: datetime.datetime) -> str:
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(spec: dict | None, me: str, wall: datetime.datetime, duration: int = LEASE_SECONDS) -> dict:
    """The Lease spec that makes (or keeps) `me` the holder from `wall` on."""
    spec = spec or {}
    ours = (spec.get("holderIdentity") or "") == me
    return {"holderIdentity": me, "leaseDurationSeconds": duration,
            "acquireTime": spec.get("acquireTime") if ours and spec.get("acquireTime") else _microtime(wall),
            "renewTime": _microtime(wall),
            "leaseTransitions": (spec.get("leaseTransitions") or 0) + (0 if ours else 1)}


def released(spec: dict, wall: datetime.datetime) -> dict:
    """The spec a stepping-down leader writes: no holder, so a standby takes over at once."""
    return {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _microtime(wall)}
