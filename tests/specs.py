"""Hypothesis strategies for the specs users send, drawn from the CRDs' own schemas: every
value has the type the API server checks (so it reaches our admission code), and strings
are often hostile (XML metacharacters, paths, control characters, very long) where the
schema leaves room for them."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import strategies as st

CRDS = Path(__file__).resolve().parents[1] / "crds"
HOSTILE = st.sampled_from([
    "", "a", "/etc/shadow", "../../etc/passwd", "<x>&amp;'\"</x>", "]]>", "a\x00b", "a\nb", "$(reboot)",
    "x" * 300, "system-node-critical", "kube-system", "node-1", "lab-images", "gluster", "Exists", "\u202e\u0645",
])


def schema(kind_file: str) -> dict:
    crd = yaml.safe_load((CRDS / kind_file).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _text(node: dict) -> st.SearchStrategy:
    if "enum" in node:
        return st.one_of(st.sampled_from(node["enum"]))
    size = {"min_size": node.get("minLength", 0), "max_size": min(node.get("maxLength", 64), 300)}
    if "pattern" in node:
        fitting = st.from_regex(node["pattern"], fullmatch=True).filter(
            lambda s: size["min_size"] <= len(s) <= size["max_size"])
        return st.one_of(fitting, HOSTILE.filter(lambda s: size["min_size"] <= len(s) <= size["max_size"]))
    return st.one_of(st.text(**{**size, "max_size": min(size["max_size"], 40)}),
                     HOSTILE.filter(lambda s: size["min_size"] <= len(s) <= size["max_size"]))


# Values users mostly send, mixed in where random ones would nearly always be refused
# for the same reason (so the rest of a spec gets judged too).
USUAL = {"memory.size": st.sampled_from(["16Mi", "64Mi", "128Mi", "1Gi", "2G"]),
         "memory.hugepages.pageSize": st.sampled_from(["2Mi", "1Gi"]),
         "disks.empty.size": st.sampled_from(["1Mi", "1Gi", "10G"])}


def of(node: dict, depth: int = 0, path: str = "") -> st.SearchStrategy:
    """Values the schema node accepts by type (CEL rules and cross-field rules left to the
    code under test, which must refuse what breaks them)."""
    drawn = _of(node, depth, path)
    return st.one_of(USUAL[path], USUAL[path], USUAL[path], drawn) if path in USUAL else drawn


def _of(node: dict, depth: int, path: str) -> st.SearchStrategy:
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(st.integers(0, 2**40), _text({"maxLength": 20}))
    kind = node.get("type")
    if kind == "string":
        return _text(node)
    if kind == "integer":
        return st.integers(node.get("minimum", -2**31), node.get("maximum", 2**31))
    if kind == "number":
        return st.floats(node.get("minimum", -1e6), node.get("maximum", 1e6), allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(of(node.get("items") or {}, depth + 1, path), max_size=min(node.get("maxItems", 4), 4))
    if kind == "object" and node.get("properties"):
        props = node["properties"]
        required = set(node.get("required") or ())
        optional = sorted(set(props) - required)
        def sub(k: str) -> st.SearchStrategy:
            return of(props[k], depth + 1, f"{path}.{k}".lstrip("."))
        return st.fixed_dictionaries({k: sub(k) for k in sorted(required)},
                                     optional={k: sub(k) for k in optional} if depth < 4 else {})
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return st.dictionaries(_text({"maxLength": 30}), of(node["additionalProperties"], depth + 1), max_size=3)
    # Free-form objects (affinity, tolerations): what users copy from pod specs, and worse.
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), HOSTILE)
    return st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(HOSTILE, inner, max_size=3)), max_leaves=6) \
        if kind is None else st.dictionaries(st.sampled_from(["key", "operator", "value", "effect", "nodeAffinity",
                                                               "podAffinity", "podAntiAffinity", "namespaces"]),
                                             st.one_of(leaf, st.lists(leaf, max_size=2)), max_size=4)


def spec_of(kind_file: str) -> st.SearchStrategy:
    return of(schema(kind_file))
