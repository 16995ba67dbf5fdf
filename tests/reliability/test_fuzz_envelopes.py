"""Property-based fuzzing of request envelopes and argument types for every method: every run
yields exactly one JSON response with an error type from the contract, exit status 0, and no
traceback on stdout. Runs the real `boshcpi cpi` process against an unreachable daemon."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from boshcpi.dispatch import METHODS
from tests.helpers import raw_call

CONTRACT_TYPES = {
    "Bosh::Clouds::CpiError",
    "Bosh::Clouds::NotImplemented",
    "Bosh::Clouds::CloudError",
    "Bosh::Clouds::VMNotFound",
    "Bosh::Clouds::DiskNotFound",
    "Bosh::Clouds::VMCreationFailed",
    "Bosh::Clouds::NoDiskSpace",
    "Bosh::Clouds::NotSupported",
    "Bosh::Clouds::DiskNotAttached",
}

json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=20)
)
json_value = st.recursive(
    json_leaf,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12,
)
method = st.one_of(st.sampled_from(sorted(METHODS)), st.text(max_size=12), json_value)
envelope = st.fixed_dictionaries(
    {},
    optional={
        "method": method,
        "arguments": st.one_of(st.lists(json_value, max_size=7), json_value),
        "context": st.one_of(st.dictionaries(st.text(max_size=8), json_value, max_size=3), json_value),
        "api_version": st.one_of(st.sampled_from([1, 2]), json_value),
    },
)


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "cpi.json"
    path.write_text(json.dumps({"server": {"url": "unix:///nonexistent/boshcpi-fuzz.sock", "operation_timeout": "2s"}}))
    return path


def check(resp) -> None:
    assert resp.returncode == 0
    assert "Traceback" not in resp.stdout
    if resp.error is not None:
        assert resp.error["type"] in CONTRACT_TYPES, resp.error
        assert isinstance(resp.error["message"], str) and resp.error["message"]
        assert isinstance(resp.error["ok_to_retry"], bool)
        assert resp.result is None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=envelope)
def test_any_envelope_gets_one_contract_response(config, env):
    check(raw_call(config, json.dumps(env)))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(METHODS)), args=st.lists(json_value, max_size=7), version=st.sampled_from([1, 2]))
def test_any_arguments_for_every_method(config, name, args, version):
    resp = raw_call(config, json.dumps({"method": name, "arguments": args, "context": {}, "api_version": version}))
    check(resp)
    if resp.error is None:
        # Only calls that need no IaaS can succeed against an unreachable daemon.
        assert name in ("info", "calculate_vm_cloud_properties")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200))
def test_arbitrary_bytes(config, data):
    check(raw_call(config, data))
