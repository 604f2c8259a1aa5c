"""When a VM should run, and what its status says: pure decisions shared by controller and agent.

Requests from the plugin are annotations holding a timestamp (RFC 3339, UTC); comparing
timestamps keeps everything level-based: nothing has to be cleared after it is done.
"""

from __future__ import annotations

import datetime

from .. import GROUP

START_REQUESTED = f"{GROUP}/start-requested-at"
STOP_REQUESTED = f"{GROUP}/stop-requested-at"
RESTART_REQUESTED = f"{GROUP}/restart-requested-at"

# How a guest last stopped, as recorded in status.stopReason.
GUEST_SHUTDOWN, GUEST_CRASHED, REQUESTED = "GuestShutdown", "GuestCrashed", "Requested"


def _later(a: str | None, b: str | None) -> bool:
    """Is timestamp a after b (absent counts as the beginning of time)?"""
    return (a or "") > (b or "")


def seconds_between(earlier: str, later: str) -> float:
    """Between two of the API's timestamps (RFC 3339, as creationTimestamp and our status
    times are written, e.g. 2026-11-29T03:16:09Z), in seconds."""
    def parse(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parse(later) - parse(earlier)).total_seconds()


def wants_running(strategy: str, annotations: dict, status: dict) -> bool:
    """Should the VM run now, given its runStrategy, the plugin's requests and how it last stopped?"""
    start_at, stop_at = annotations.get(START_REQUESTED), annotations.get(STOP_REQUESTED)
    stop_reason, stop_time = status.get("stopReason"), status.get("stopTime")
    started_since_stop = _later(start_at, stop_time)
    if strategy == "Halted":
        return False
    if strategy == "Always":
        return True
    if strategy == "RerunOnFailure":
        return stop_reason != GUEST_SHUTDOWN or started_since_stop
    if strategy == "Once":
        return stop_reason is None or started_since_stop
    if strategy == "Manual":
        return bool(start_at) and _later(start_at, stop_at) and (stop_reason is None or started_since_stop)
    raise ValueError(f"unknown runStrategy {strategy!r}")


def restart_due(annotations: dict, status: dict) -> bool:
    """A restart was asked for after the guest last started."""
    return _later(annotations.get(RESTART_REQUESTED), status.get("startTime"))


def stop_reason_for_event(detail: str) -> str:
    """libvirt's reason for a stopped domain, in our words."""
    return {"crashed": GUEST_CRASHED, "failed": GUEST_CRASHED, "shutdown": GUEST_SHUTDOWN}.get(detail, REQUESTED)
