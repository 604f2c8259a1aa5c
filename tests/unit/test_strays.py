from kopfvirt.core import strays
from kopfvirt.core.strays import DESTROY, ELSEWHERE, GONE, KEEP, PLACED, REPORT


def vm(uid="u1", node=None, label=None, migration=None):
    body = {"metadata": {"uid": uid, "labels": {strays.NODE_LABEL: label} if label else {}},
            "status": {}}
    if node:
        body["status"]["nodeName"] = node
    if migration:
        body["status"]["migration"] = migration
    return body


def test_where_the_cluster_places_a_domains_vm():
    assert strays.placement("n2", "u1", None) == GONE
    assert strays.placement("n2", "u1", vm(uid="u2", node="n2")) == GONE  # a new VM of the same name
    assert strays.placement("n2", "u1", vm(node="n1", label="n1")) == ELSEWHERE
    assert strays.placement("n2", "u1", vm()) == ELSEWHERE  # stopped, placed nowhere
    assert strays.placement("n2", "u1", vm(label="n2")) == PLACED  # placed, not started yet
    assert strays.placement("n2", "u1", vm(node="n2", label="n1")) == PLACED  # mid hand-off
    incoming = {"sourceNode": "n1", "targetNode": "n2"}
    assert strays.placement("n2", "u1", vm(node="n1", label="n1", migration=incoming)) == PLACED
    assert strays.placement("n3", "u1", vm(node="n1", label="n1", migration=incoming)) == ELSEWHERE


def test_a_stray_is_destroyed_only_when_proven_redundant():
    assert strays.verdict(PLACED, True, None) == KEEP
    assert strays.verdict(GONE, True, None) == DESTROY
    assert strays.verdict(GONE, False, None) == DESTROY  # a leftover definition
    assert strays.verdict(ELSEWHERE, True, "running") == DESTROY
    assert strays.verdict(ELSEWHERE, True, "paused") == DESTROY
    # Not proven: the VM's node does not run it, or cannot be asked: only a human may choose.
    assert strays.verdict(ELSEWHERE, True, "absent") == REPORT
    assert strays.verdict(ELSEWHERE, True, "shutoff") == REPORT
    assert strays.verdict(ELSEWHERE, True, None) == REPORT
    assert strays.verdict(ELSEWHERE, False, None) == KEEP
