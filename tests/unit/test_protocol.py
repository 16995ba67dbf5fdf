"""The envelope rules of the contract, through the real `boshcpi cpi` process (no IaaS needed)."""

from __future__ import annotations

import json

import pytest

from boshcpi import protocol
from tests.helpers import call, raw_call


@pytest.fixture()
def cfg(tmp_path):
    path = tmp_path / "cpi.json"
    # A daemon that is not there: only argument checking and info may succeed.
    path.write_text(
        json.dumps(
            {
                "server": {"url": "unix:///nonexistent/boshcpi-test.sock"},
                "agent": {"mbus": "nats://u:unit-s3cret@127.0.0.1:4222"},
            }
        )
    )
    return path


def test_info_with_no_iaas(cfg):
    resp = call(cfg, "info")
    assert resp.returncode == 0
    assert resp.ok() == {
        "api_version": 2,
        "stemcell_formats": ["openstack-qcow2", "openstack-raw", "warden-tgz", "general-tar"],
    }
    assert resp.error is None


def test_info_for_libvirt_lists_libvirt_formats(tmp_path):
    path = tmp_path / "cpi.json"
    path.write_text(json.dumps({"driver": "libvirt"}))
    assert call(path, "info").ok()["stemcell_formats"] == ["openstack-qcow2", "openstack-raw"]


@pytest.mark.parametrize(
    ("payload", "etype", "message"),
    [
        ("{-}", "Bosh::Clouds::CpiError", "Must provide valid JSON payload"),
        ("", "Bosh::Clouds::CpiError", "Must provide valid JSON payload"),
        ("[1,2]", "Bosh::Clouds::CpiError", "Must provide valid JSON payload"),
        (b"\xff\xfe{", "Bosh::Clouds::CpiError", "Must provide valid JSON payload"),
        ("{}", "Bosh::Clouds::CpiError", "Must provide 'method' key"),
        ('{"method":"info"}', "Bosh::Clouds::CpiError", "Must provide 'arguments' key"),
        ('{"method":"x","arguments":[]}', "Bosh::Clouds::NotImplemented", "Must call implemented method"),
        ('{"method":3,"arguments":[]}', "Bosh::Clouds::CpiError", "method"),
        ('{"method":"info","arguments":{}}', "Bosh::Clouds::CpiError", "arguments"),
        ('{"method":"info","arguments":[],"context":[]}', "Bosh::Clouds::CpiError", "context"),
        ('{"method":"info","arguments":[],"api_version":"2"}', "Bosh::Clouds::CpiError", "api_version"),
    ],
)
def test_bad_envelopes(cfg, payload, etype, message):
    resp = raw_call(cfg, payload)
    assert resp.returncode == 0
    assert resp.result is None
    assert resp.error_type == etype
    assert message in resp.error["message"]
    assert resp.error["ok_to_retry"] is False
    assert "Traceback" not in resp.stdout


def test_api_version_absent_is_v1():
    """Without api_version a request is v1: results come in the v1 shape (protocol.shape_result, which
    every response goes through; the full lifecycle checks it against a daemon in test_lxd_containers)."""
    from boshcpi import protocol

    assert protocol.parse_request('{"method": "attach_disk", "arguments": ["a", "b"]}').api_version == 1
    assert protocol.shape_result("create_vm", 1, ("vm-1", {"n": {}})) == "vm-1"
    assert protocol.shape_result("create_vm", 2, ("vm-1", {"n": {}})) == ["vm-1", {"n": {}}]
    assert protocol.shape_result("attach_disk", 1, {"path": "/dev/sdc"}) is None


@pytest.mark.parametrize(
    ("method", "args", "needle"),
    [
        ("has_vm", [3], "argument 1 (vm_cid) must be a string, got an integer"),
        ("has_vm", [], "expected 1 arguments"),
        ("has_vm", ["a", "b"], "expected 1 arguments"),
        ("has_vm", [None], "vm_cid) must be a string, got null"),
        ("has_vm", [""], "non-empty string"),
        ("create_disk", ["big", {}, None], "argument 1 (size) must be an integer"),
        ("create_disk", [0, {}, None], "positive integer"),
        ("create_disk", [True, {}, None], "size) must be an integer, got a boolean"),
        ("create_disk", [1024, [], None], "argument 2 (cloud_properties) must be an object"),
        ("create_disk", [1024, {}, 7], "argument 3 (vm_cid) must be a string"),
        ("create_vm", ["a", "s", {}, [], [], {}], "argument 4 (networks) must be an object"),
        ("create_vm", ["a", "s", {}, {"n": 1}, [], {}], "networks.n must be an object"),
        ("create_vm", ["a", "s", {}, {"n": {"type": "manual"}}, [], {}], "manual but has no ip"),
        ("create_vm", ["a", "s", {}, {"n": {"type": "bogus", "ip": "1"}}, [], {}], "manual, dynamic or vip"),
        ("create_vm", ["a", "s", {}, {}, [1], {}], "disk_cids must be a list of strings"),
        ("create_vm", ["a", "s", {"instance_type": "c0-m4"}, {}, [], {}], "instance_type"),
        ("create_vm", ["a", "s", {"instance_type": "huge size!"}, {}, [], {}], "instance_type"),
        ("set_vm_metadata", ["vm-1", {"a": {"b": 1}}], "metadata value of 'a' must be a string"),
        ("resize_disk", ["vol-p-1", -5], "positive integer"),
        ("attach_disk", ["vm-1"], "expected 2 arguments"),
        ("calculate_vm_cloud_properties", [{"cpu": "two", "ram": 1}], "vm_resources.cpu"),
        ("create_stemcell", ["/nonexistent/image", {}], "does not exist"),
    ],
)
def test_argument_errors_name_method_and_argument(cfg, method, args, needle):
    resp = call(cfg, method, *args)
    assert resp.error_type == "Bosh::Clouds::CpiError", resp.error
    assert needle in resp.error["message"]
    if "argument" in needle:
        assert method in resp.error["message"]


def test_unreachable_daemon_is_a_retryable_cloud_error(cfg):
    resp = call(cfg, "has_vm", "vm-00000000-0000-4000-8000-000000000000")
    assert resp.error_type == "Bosh::Clouds::CloudError"
    assert resp.error["ok_to_retry"] is True
    assert "unit-s3cret" not in resp.stdout + resp.stderr


def test_calculate_vm_cloud_properties(cfg):
    assert call(cfg, "calculate_vm_cloud_properties", {"cpu": 2, "ram": 4096, "ephemeral_disk_size": 10240}).ok() == {
        "cpus": 2,
        "memory": 4096,
        "ephemeral_disk": 10240,
    }


def test_broken_config_is_a_cpi_error(tmp_path):
    path = tmp_path / "cpi.json"
    path.write_text('{"server": {"url": "http://x"}}')
    resp = call(path, "info")
    assert resp.error_type == "Bosh::Clouds::CpiError"
    assert "server.url: expected https:// or unix:// URL" in resp.error["message"]
    path.write_text("{nope")
    assert "invalid JSON" in call(path, "info").error["message"]
    assert "cannot read" in call(tmp_path / "missing.json", "info").error["message"]


def test_context_overrides_config(cfg):
    resp = call(cfg, "info", context={"director_uuid": "d", "driver": "libvirt"})
    assert resp.ok()["stemcell_formats"] == ["openstack-qcow2", "openstack-raw"]
    bad = call(cfg, "info", context={"server": {"type": "vmware"}})
    assert bad.error_type == "Bosh::Clouds::CpiError"
    assert bad.error["message"].startswith("context: server.type")


def test_shape_result_v1_v2():
    assert protocol.shape_result("create_vm", 2, ("vm-1", {"n": {}})) == ["vm-1", {"n": {}}]
    assert protocol.shape_result("create_vm", 1, ("vm-1", {"n": {}})) == "vm-1"
    assert protocol.shape_result("attach_disk", 2, "/dev/sdc") == "/dev/sdc"
    assert protocol.shape_result("attach_disk", 1, "/dev/sdc") is None
    assert protocol.shape_result("has_vm", 1, True) is True


def test_unserialisable_result_is_a_cpi_error():
    doc = json.loads(protocol.success({1, 2}))
    assert doc["error"]["type"] == "Bosh::Clouds::CpiError"
    assert doc["result"] is None
