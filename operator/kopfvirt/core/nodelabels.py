"""The labels an agent puts on its Node, from libvirt's capabilities (pure).

Scheme (documented in docs/architecture.md):
  kopfvirt.io/virt-type=qemu|kvm           how this node runs guests
  kopfvirt.io/kvm-available=true|false     /dev/kvm and libvirt offer KVM
  cpu.kopfvirt.io/vendor=AMD|Intel
  cpu.kopfvirt.io/host-model=<model>       libvirt's name for the host CPU
  cpu.kopfvirt.io/host-cpu-digest=<hex>    the host CPU exactly (host-passthrough moves)
  cpu-model.kopfvirt.io/<model>=true       named models usable for guests here
  cpu-feature.kopfvirt.io/<flag>=true      every CPU flag guests can be given here: the
                                           expanded host-model CPU, less hidden flags
  pool.kopfvirt.io/<pool>=true             active libvirt storage pools of the node
  shared-pool.kopfvirt.io/<pool>=true      ... of them, those on shared storage (migration)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from .. import GROUP
from . import cpu

# An admin narrows a node to its older peers: `kubectl annotate node N
# kopfvirt.io/hide-cpu-features=f1,f2` keeps those flags out of its labels.
HIDE_CPU_FEATURES_ANNOTATION = f"{GROUP}/hide-cpu-features"
# ... and `kopfvirt.io/serial-log-max-bytes=N` caps each guest's serial log there (the
# agent's --serial-log-max-bytes elsewhere).
SERIAL_LOG_MAX_ANNOTATION = f"{GROUP}/serial-log-max-bytes"
SERIAL_LOG_MIN_BYTES = 1024
PREFIXES = (f"{GROUP}/virt-type", f"{GROUP}/kvm-available", f"cpu.{GROUP}/", f"cpu-model.{GROUP}/",
            f"cpu-feature.{GROUP}/", f"pool.{GROUP}/", f"shared-pool.{GROUP}/")
_VALID = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def ours(key: str) -> bool:
    return key.startswith(PREFIXES)


def node_labels(capabilities: str, domain_capabilities: str, virt_type: str, kvm_available: bool,
                pools: list[str] = (), shared_pools: list[str] = (), hidden_features: list[str] = (),
                expanded_cpu: str | None = None) -> dict[str, str]:
    """`expanded_cpu`: libvirt's expansion of the host-model CPU (cpu.host_model_cpu);
    without it only the features domcapabilities lists beside the model are known.
    `hidden_features`: CPU flags this node must not offer guests (an admin narrowing a
    newer node to its older peers, so VMs stay migratable between them)."""
    caps, dom = ET.fromstring(capabilities), ET.fromstring(domain_capabilities)
    labels = {f"{GROUP}/virt-type": virt_type, f"{GROUP}/kvm-available": str(kvm_available).lower()}
    labels.update({f"pool.{GROUP}/{p}": "true" for p in pools if _VALID.match(p)})
    labels.update({f"shared-pool.{GROUP}/{p}": "true" for p in shared_pools if p in pools and _VALID.match(p)})
    host_cpu = caps.find("host/cpu")
    vendor, model = host_cpu.findtext("vendor"), host_cpu.findtext("model")
    if vendor:
        labels[cpu.VENDOR] = vendor
    if model and _VALID.match(model):
        labels[cpu.HOST_MODEL] = model
    digest = cpu.host_digest(capabilities)
    if digest:
        labels[cpu.HOST_DIGEST] = digest
    features = cpu.guest_features(expanded_cpu or domain_capabilities)
    for name in sorted(features - set(hidden_features)):
        if name and _VALID.match(name):
            labels[cpu.FEATURE_PREFIX + name] = "true"
    for m in dom.findall("cpu/mode[@name='custom']/model"):
        if m.get("usable") == "yes" and m.text and _VALID.match(m.text):
            labels[cpu.MODEL_PREFIX + m.text] = "true"
    return labels


def kvm_offered(domain_capabilities_kvm: str | None) -> bool:
    return domain_capabilities_kvm is not None and ET.fromstring(domain_capabilities_kvm).findtext("domain") == "kvm"



def hidden_features(annotations: dict[str, str] | None, also: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The flags hidden on a node: its annotation's, and the agent's own (--hide-cpu-features)."""
    listed = ((annotations or {}).get(HIDE_CPU_FEATURES_ANNOTATION) or "").split(",")
    return tuple(dict.fromkeys([*also, *(f.strip() for f in listed if f.strip())]))


def serial_log_max_bytes(annotations: dict[str, str] | None, default: int) -> tuple[int, str | None]:
    """The node's cap on each serial log, and what is wrong with its annotation (then the
    default holds): a whole number of bytes, at least SERIAL_LOG_MIN_BYTES."""
    value = (annotations or {}).get(SERIAL_LOG_MAX_ANNOTATION)
    if value is None:
        return default, None
    try:
        cap = int(value.strip())
    except ValueError:
        cap = 0
    if cap < SERIAL_LOG_MIN_BYTES:
        return default, (f"annotation {SERIAL_LOG_MAX_ANNOTATION}={value!r} is not a number of bytes "
                         f">= {SERIAL_LOG_MIN_BYTES}; the default {default} holds")
    return cap, None
