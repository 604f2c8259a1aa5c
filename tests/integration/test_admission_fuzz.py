"""Admission, fuzzed against the lab's API server: specs of every kind drawn from the CRDs'
schemas (tests/specs.py), sent as server-side dry runs, so the schema, its CEL rules and
our webhook all judge them. Each is accepted, or refused with a message naming a field;
never a server error or a failed webhook call. A bounded number here (many more in the unit
tier); the seed is printed: KOPFVIRT_FUZZ_SEED=<seed> replays a run."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .. import specs
from .conftest import KUBECONFIG

SEED = int(os.environ.get("KOPFVIRT_FUZZ_SEED") or random.randrange(2**32))
KINDS = {"VirtualMachine": ("virtualmachine.yaml", "virtualmachines", True),
         "Migration": ("migration.yaml", "migrations", True),
         "StoragePool": ("storagepool.yaml", "storagepools", False),
         "PassthroughDevice": ("passthroughdevice.yaml", "passthroughdevices", False)}
LAB_FUZZ = settings(max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def api(lab):
    print(f"admission fuzz seed: {SEED} (KOPFVIRT_FUZZ_SEED={SEED} replays it)")
    return client.CustomObjectsApi(config.new_client_from_config(str(KUBECONFIG)))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_fuzzed_spec_is_accepted_or_refused_naming_a_field(api, vms, kind):
    crd, plural, namespaced = KINDS[kind]

    @seed(SEED)
    @LAB_FUZZ
    @given(spec=specs.spec_of(crd), n=st.integers(0, 10**9))
    def judged(spec, n):
        body = {"apiVersion": "kopfvirt.io/v1alpha1", "kind": kind, "metadata": {"name": f"fuzz-{n}"}, "spec": spec}
        try:
            if namespaced:
                api.create_namespaced_custom_object("kopfvirt.io", "v1alpha1", vms.namespace, plural, body,
                                                    dry_run="All")
            else:
                api.create_cluster_custom_object("kopfvirt.io", "v1alpha1", plural, body, dry_run="All")
        except ApiException as e:
            message = e.body or ""
            assert e.status in (400, 422), (SEED, e.status, message)
            assert "failed calling webhook" not in message and "Internal error" not in message, (SEED, message)
            assert "spec" in message, (SEED, message)
    judged()
