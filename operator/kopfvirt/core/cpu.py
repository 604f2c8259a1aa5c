"""The CPU a guest is given, as libvirt spells it, and the CPU rule of migration (pure).

libvirt's domain capabilities list the host-model CPU as a named model plus the features
beyond it; the model's own features (sse2, avx2, aes, ...) appear only once libvirt
expands it (baselineHypervisorCPU with VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES). The
agent asks for that expansion, so a node's labels name every feature a guest can get.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

from .. import GROUP

FEATURE_PREFIX = f"cpu-feature.{GROUP}/"
MODEL_PREFIX = f"cpu-model.{GROUP}/"
VENDOR = f"cpu.{GROUP}/vendor"
HOST_MODEL = f"cpu.{GROUP}/host-model"
HOST_DIGEST = f"cpu.{GROUP}/host-cpu-digest"
SHOWN_FLAGS = 24  # a refusal names this many flags, then counts the rest


def _host_model(domain_capabilities: ET.Element) -> ET.Element | None:
    mode = domain_capabilities.find("cpu/mode[@name='host-model']")
    return mode if mode is not None and mode.get("supported") == "yes" else None


def host_model_cpu(domain_capabilities: str) -> str | None:
    """The host-model mode of domcapabilities as the CPU definition libvirt expands
    (baselineHypervisorCPU takes <cpu> elements, not the <mode> of domcapabilities)."""
    mode = _host_model(ET.fromstring(domain_capabilities))
    if mode is None or not mode.findtext("model"):
        return None
    cpu = ET.Element("cpu", mode="custom", match="exact")
    ET.SubElement(cpu, "model", fallback="forbid").text = mode.findtext("model")
    if mode.findtext("vendor"):
        ET.SubElement(cpu, "vendor").text = mode.findtext("vendor")
    for f in mode.findall("feature"):
        ET.SubElement(cpu, "feature", policy=f.get("policy", "require"), name=f.get("name"))
    return ET.tostring(cpu, encoding="unicode")


def guest_features(cpu_xml: str) -> set[str]:
    """Features a guest gets from a CPU definition (libvirt's expansion, or the host-model
    of domcapabilities, which libvirt >= 11 can print expanded): all but disabled ones."""
    root = ET.fromstring(cpu_xml)
    cpu = root if root.tag == "cpu" else _host_model(root)
    if cpu is None:
        return set()
    return {f.get("name") for f in cpu.findall("feature")
            if f.get("name") and f.get("policy", "require") not in ("disable", "forbid")}


def host_digest(capabilities: str) -> str | None:
    """A stable digest of the host CPU (vendor, model, sorted features of capabilities):
    equal digests mean an identical CPU, what host-passthrough guests need to move."""
    host_cpu = ET.fromstring(capabilities).find("host/cpu")
    if host_cpu is None or not host_cpu.findtext("model"):
        return None
    names = sorted(f.get("name") for f in host_cpu.findall("feature") if f.get("name"))
    text = "\n".join([host_cpu.findtext("vendor") or "", host_cpu.findtext("model"), *names])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def offered_features(labels: dict[str, str]) -> set[str]:
    return {k[len(FEATURE_PREFIX):] for k, v in labels.items() if k.startswith(FEATURE_PREFIX) and v == "true"}


def _flags(names: set[str]) -> str:
    shown = sorted(names)[:SHOWN_FLAGS]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def incompatibility(mode: str | None, requirements: dict[str, str], source: dict[str, str],
                    target: dict[str, str]) -> str | None:
    """Why the target's CPU cannot take a guest running on the source, or None.

    `mode`: spec.cpu.model (None: the default model); `requirements`: the VM's CPU model
    and required-feature labels (reservation.node_requirements); `source`/`target`: the
    nodes' labels. host-model guests got the source's expanded host-model (less the
    features it hides), so the target must offer all of it; host-passthrough guests see
    the host CPU itself, so the target's must be identical.
    """
    lacking = {k[len(FEATURE_PREFIX):] for k in requirements if k.startswith(FEATURE_PREFIX) and target.get(k) != "true"}
    models = [k[len(MODEL_PREFIX):] for k in requirements if k.startswith(MODEL_PREFIX) and target.get(k) != "true"]
    if mode == "host-model":
        lacking |= offered_features(source) - offered_features(target)
    if mode == "host-passthrough":
        return _not_identical(source, target, lacking)
    what = ([f"CPU model {models[0]}"] if models else []) + ([f"CPU features {_flags(lacking)}"] if lacking else [])
    if not what:
        return None
    origin = f" (the host-model CPU of its source, {source.get(HOST_MODEL, 'unknown')})" if mode == "host-model" else ""
    return f"the node's CPU lacks {' and '.join(what)}{origin}"


def _not_identical(source: dict[str, str], target: dict[str, str], lacking: set[str]) -> str | None:
    differs = [f"{what} {target.get(key, 'unknown')} here, {source.get(key, 'unknown')} on the source"
               for what, key in (("vendor", VENDOR), ("host CPU", HOST_MODEL)) if source.get(key) != target.get(key)]
    missing = (offered_features(source) - offered_features(target)) | lacking
    extra = offered_features(target) - offered_features(source)
    differs += ([f"lacks CPU features {_flags(missing)}"] if missing else []) + \
               ([f"has extra CPU features {_flags(extra)}"] if extra else [])
    if not differs and source.get(HOST_DIGEST) != target.get(HOST_DIGEST):
        differs = [f"the host CPUs differ ({HOST_DIGEST})"]
    return f"host-passthrough needs an identical CPU: {'; '.join(differs)}" if differs else None
