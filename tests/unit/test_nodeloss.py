from kopfvirt.core import nodeloss
from kopfvirt.core.nodeloss import DEAD, READY, UNREACHABLE


def node(ready="True", taints=()):
    return {"metadata": {"name": "n1"}, "spec": {"taints": list(taints)},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": ready}]}}


def test_a_node_is_dead_only_when_an_admin_says_so():
    assert nodeloss.node_state(node()) == READY
    # kube-controller-manager's verdict on a silent kubelet: unreachable, never dead.
    assert nodeloss.node_state(node("Unknown", [{"key": "node.kubernetes.io/unreachable",
                                                 "effect": "NoExecute"}])) == UNREACHABLE
    assert nodeloss.node_state(node("False")) == UNREACHABLE
    assert nodeloss.node_state({"metadata": {"name": "n1"}}) == UNREACHABLE  # no status yet
    # Non-graceful node shutdown: the admin's taint, whatever the kubelet said last.
    shut = [{"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}]
    assert nodeloss.node_state(node("Unknown", shut)) == DEAD
    assert nodeloss.node_state(node("True", shut)) == DEAD
    assert nodeloss.node_state(None) == DEAD  # the Node was deleted


def test_the_lost_node_message_says_why_and_what_stays():
    assert "tainted node.kubernetes.io/out-of-service" in nodeloss.lost_message("n1", deleted=False)
    assert "its Node was deleted" in nodeloss.lost_message("n1", deleted=True)
    assert "disks" not in nodeloss.lost_message("n1", deleted=False)
    assert "disks were not removed" in nodeloss.lost_message("n1", deleted=False, vm_deleting=True)
