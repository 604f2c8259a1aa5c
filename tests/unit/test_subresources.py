"""The VM subresources' pure rules: paths (hostile ones refused), the discovery document,
who the front proxy says the user is, and the access review asked."""

import pytest

from kopfvirt.core import subresources as s

PROXY = s.FrontProxy("CA", ("front-proxy-client",))
HEADERS = [("X-Remote-User", "alice"), ("X-Remote-Group", "devs"), ("X-Remote-Group", "system:authenticated"),
           ("X-Remote-Extra-Scopes", "a"), ("X-Remote-Extra-Scopes", "b"),
           ("X-Remote-Extra-authentication.kubernetes.io%2fnode-name", "node-1"), ("Authorization", "Bearer x")]


def test_paths_name_a_vm_and_a_subresource():
    assert s.parse_path("/apis/subresources.kopfvirt.io/v1alpha1/namespaces/team-a/virtualmachines/web.1/console") \
        == s.Target("team-a", "web.1", "console")
    assert s.parse_path("/v1/namespaces/ns/virtualmachines/vm/vnc", s.AGENT_PREFIX) == s.Target("ns", "vm", "vnc")
    assert s.path("ns", "vm", "xml") == "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/vm/xml"


@pytest.mark.parametrize("path", [
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/vm/exec",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/../virtualmachines/vm/console",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/vm/console/extra",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/NS/virtualmachines/vm/console",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/a%2fb/console",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/-vm/console",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/pods/vm/console",
    "/apis/subresources.kopfvirt.io/v1alpha1/namespaces/ns/virtualmachines/vm/console\n",
    "/v1/namespaces/ns/virtualmachines/vm/console",  # the agent's prefix is not the API's
])
def test_any_other_path_names_nothing(path):
    assert s.parse_path(path) is None


def test_the_discovery_document_lists_each_subresource_as_get():
    doc = s.resource_list()
    assert doc["groupVersion"] == "subresources.kopfvirt.io/v1alpha1"
    assert {r["name"]: r["verbs"] for r in doc["resources"]} == {
        "virtualmachines/console": ["get"], "virtualmachines/vnc": ["get"], "virtualmachines/xml": ["get"],
        "virtualmachines/cloudinit": ["get"]}


def test_the_front_proxy_settings_are_read_as_kube_apiserver_publishes_them():
    proxy = s.front_proxy({"requestheader-client-ca-file": "PEM", "requestheader-allowed-names": '["front-proxy-client"]',
                           "requestheader-username-headers": '["X-Remote-User"]',
                           "requestheader-group-headers": '["X-Remote-Group"]',
                           "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
                           "requestheader-uid-headers": '["X-Remote-Uid"]'})
    assert proxy == s.FrontProxy("PEM", ("front-proxy-client",), ("X-Remote-User",), ("X-Remote-Group",),
                                 ("X-Remote-Extra-",), ("X-Remote-Uid",))
    with pytest.raises(s.Unauthenticated, match="requestheader-client-ca-file"):
        s.front_proxy({"client-ca-file": "PEM"})


def test_the_user_comes_from_the_front_proxys_headers():
    user = s.user_of(HEADERS, "front-proxy-client", PROXY)
    assert user == s.User("alice", ("devs", "system:authenticated"),
                          {"scopes": ["a", "b"], "authentication.kubernetes.io/node-name": ["node-1"]})


@pytest.mark.parametrize("peer, headers, match", [
    (None, HEADERS, "no client certificate"),
    ("someone-else", HEADERS, "is not a front proxy"),
    ("front-proxy-client", [("X-Remote-Group", "system:masters")], "named no user"),
])
def test_headers_are_believed_only_from_the_front_proxy(peer, headers, match):
    with pytest.raises(s.Unauthenticated, match=match):
        s.user_of(headers, peer, PROXY)


def test_with_no_allowed_names_any_certificate_of_its_ca_is_the_front_proxy():
    assert s.user_of(HEADERS, "anything", s.FrontProxy("CA", ())).name == "alice"


def test_the_review_asks_get_on_the_subresource_in_the_api_group_kube_apiserver_authorized():
    user = s.User("alice", ("devs",), {"scopes": ["a"]}, uid="42")
    review = s.access_review(user, s.Target("team-a", "web", "vnc"))
    assert review["spec"] == {"user": "alice", "groups": ["devs"], "extra": {"scopes": ["a"]}, "uid": "42",
                              "resourceAttributes": {"namespace": "team-a", "verb": "get",
                                                     "group": "subresources.kopfvirt.io", "version": "v1alpha1",
                                                     "resource": "virtualmachines", "subresource": "vnc",
                                                     "name": "web"}}


def test_a_peer_certificates_common_name():
    cert = {"subject": ((("organizationName", "kopfvirt:nodes"),), (("commonName", "kopfvirt-node:node-1"),))}
    assert s.common_name(cert) == "kopfvirt-node:node-1"
    assert s.common_name({}) is None and s.common_name(None) is None


AGENT = "system:serviceaccount:kopfvirt-system:kopfvirt-agent"
VM = {"metadata": {"namespace": "team-a", "name": "web", "labels": {"kopfvirt.io/node": "node-1"}},
      "spec": {"disks": [{"name": "root", "image": {"pool": "p", "name": "i"}},
                         {"name": "seed", "cloudInit": {"secretRef": {"name": "web-seed"}}},
                         {"name": "more", "cloudInit": {"userData": "#cloud-config"}},
                         {"name": "gone", "cloudInit": {"secretRef": {"name": "missing"}}}]}}


def agent_on(node: str | None) -> s.User:
    return s.User(AGENT, ("system:serviceaccounts",), {"authentication.kubernetes.io/node-name": [node]} if node else {})


def test_cloud_init_goes_only_to_the_agent_of_the_vms_node():
    assert s.cloud_init_refusal(agent_on("node-1"), AGENT, VM, "kopfvirt.io/node") is None
    assert s.cloud_init_refusal(agent_on("node-2"), AGENT, VM, "kopfvirt.io/node") \
        == "virtualmachine team-a/web is placed on node-1, not node-2"
    assert "bound to no node" in s.cloud_init_refusal(agent_on(None), AGENT, VM, "kopfvirt.io/node")
    alice = s.User("alice", (), {"authentication.kubernetes.io/node-name": ["node-1"]})
    assert s.cloud_init_refusal(alice, AGENT, VM, "kopfvirt.io/node").startswith("only the node agents")
    unplaced = {**VM, "metadata": {"namespace": "team-a", "name": "web"}}
    assert "placed on no node" in s.cloud_init_refusal(agent_on("node-1"), AGENT, unplaced, "kopfvirt.io/node")


def test_the_cloud_init_document_holds_the_secrets_the_disks_name_and_nothing_else():
    asked = []

    def read(namespace, name):
        asked.append((namespace, name))
        return {"userdata": "#cloud-config"} if name == "web-seed" else None
    assert s.cloud_init_document(VM, read) == {"secrets": {"web-seed": {"userdata": "#cloud-config"}}}
    assert sorted(asked) == [("team-a", "missing"), ("team-a", "web-seed")]  # the VM's namespace only
