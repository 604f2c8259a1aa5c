"""Kubernetes-style status conditions, merged without losing transition times."""

from __future__ import annotations

import datetime


# Why a VM may wait before placement that only a change to its spec (or to the cluster's
# nodes and policy) ends: Stalled=True, which kstatus (Flux, `kubectl wait`) reads as Failed
# rather than waiting out its timeout. A missing Secret or a pool not yet active are waits.
STALLING_PENDING_REASONS = frozenset({"PodPolicyRefused", "StoragePoolRefused", "UnknownCPUModel",
                                      "CPUFeaturesUnavailable"})


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict] | None, type_: str, status: bool | None, reason: str, message: str,
                  generation: int | None, at: str | None = None) -> list[dict]:
    """A new list with `type_` set (None is Unknown); lastTransitionTime moves only when the status flips."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out, old = [], None
    for c in conditions or []:
        if c.get("type") == type_:
            old = c
        else:
            out.append(dict(c))
    changed = old is None or old.get("status") != value
    new = {"type": type_, "status": value, "reason": reason, "message": message,
           "lastTransitionTime": (at or now()) if changed else old.get("lastTransitionTime", at or now())}
    if generation is not None:
        new["observedGeneration"] = generation
    out.append(new)
    return sorted(out, key=lambda c: c["type"])


def drop(conditions: list[dict] | None, type_: str) -> list[dict]:
    """Without `type_`. kstatus reads Ready=False as "in progress" whatever else says the
    object is done, so an object settled where its spec wants it short of Ready (a VM
    stopped or paused on purpose, a Migration cancelled) carries no Ready at all."""
    return [c for c in conditions or [] if c.get("type") != type_]


def get(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def unstall(conditions: list[dict] | None, generation: int | None, why: str) -> list[dict] | None:
    """Stalled=False once the VM gets on (its spec fixed): kstatus reads a Stalled=True
    left behind as Failed for ever. Unchanged when it is not stalled."""
    stalled = get(conditions, "Stalled")
    if not stalled or stalled.get("status") != "True":
        return conditions
    return set_condition(conditions, "Stalled", False, "NotStalled", why, generation)
