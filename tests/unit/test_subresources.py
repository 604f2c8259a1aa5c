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
        "virtualmachines/console": ["get"], "virtualmachines/vnc": ["get"], "virtualmachines/xml": ["get"]}


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


def test_a_cloud_init_secret_named_anew_is_asked_about_as_its_writer():
    from kopfvirt.core import access
    user = access.admission_user({"username": "system:serviceaccount:team-a:alice", "uid": "u-1",
                                  "groups": ["system:serviceaccounts", "system:authenticated"]})
    assert user == access.User("system:serviceaccount:team-a:alice",
                               ("system:serviceaccounts", "system:authenticated"), {}, "u-1")
    old = {"disks": [{"name": "seed", "cloudInit": {"secretRef": {"name": "kept"}}}]}
    new = {"disks": [{"name": "seed", "cloudInit": {"secretRef": {"name": "kept"}}},
                     {"name": "more", "cloudInit": {"secretRef": {"name": "db-password"}}},
                     {"name": "inline", "cloudInit": {"userData": "#cloud-config"}}, {"name": "root"}, None]}
    (disk, secret, review), = access.new_secret_reviews(user, "team-a", new, old)
    assert (disk, secret) == ("more", "db-password")
    assert review["spec"]["resourceAttributes"] == {"namespace": "team-a", "verb": "get", "group": "", "version": "v1",
                                                    "resource": "secrets", "subresource": "", "name": "db-password"}
    assert review["spec"]["user"] == user.name and review["spec"]["uid"] == "u-1"
    assert [s for _, s, _ in access.new_secret_reviews(user, "team-a", new, None)] == ["db-password", "kept"]
