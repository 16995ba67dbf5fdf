"""Manifests and ops files: valid YAML, and every op applies to a sample bosh-deployment manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.release.gopatch import OpError, apply

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = yaml.safe_load((Path(__file__).parent / "bosh-sample.yml").read_text())
OPS = sorted((ROOT / "manifests/ops").glob("*.yml"))


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_every_manifest_is_valid_yaml():
    for path in [*ROOT.glob("manifests/*.yml"), *OPS]:
        assert load(path) is not None, path


def test_cpi_ops_file_makes_an_lxd_director():
    out = apply(SAMPLE, load(ROOT / "manifests/cpi.yml"))
    bosh = next(g for g in out["instance_groups"] if g["name"] == "bosh")
    assert {"name": "lxd_cpi", "release": "boshcpi"} in bosh["jobs"]
    assert bosh["properties"]["director"]["cpi_job"] == "lxd_cpi"
    assert out["cloud_provider"]["template"] == {"name": "lxd_cpi", "release": "boshcpi"}
    assert bosh["properties"]["lxd_cpi"]["agent"]["mbus"].startswith("nats://")
    assert out["cloud_provider"]["properties"]["lxd_cpi"]["agent"]["mbus"].startswith("https://mbus:")
    assert any(r["name"] == "boshcpi" for r in out["releases"])
    assert any(v["name"] == "lxd_client" for v in out["variables"])


@pytest.mark.parametrize("ops", OPS, ids=lambda p: p.name)
def test_each_ops_file_applies_after_cpi_yml(ops):
    base = apply(SAMPLE, load(ROOT / "manifests/cpi.yml"))
    out = apply(base, load(ops))
    assert out != base, f"{ops.name} changed nothing"
    if ops.name == "libvirt.yml":
        bosh = next(g for g in out["instance_groups"] if g["name"] == "bosh")
        assert {"name": "libvirt_cpi", "release": "boshcpi"} in bosh["jobs"]
        assert not any(j["name"] == "lxd_cpi" for j in bosh["jobs"])
        assert "lxd_cpi" not in bosh["properties"] and out["cloud_provider"]["template"]["name"] == "libvirt_cpi"
    if ops.name == "incus.yml":
        assert out["cloud_provider"]["properties"]["lxd_cpi"]["server"]["type"] == "incus"


def test_a_wrong_path_is_caught():
    with pytest.raises(OpError):
        apply(SAMPLE, [{"type": "replace", "path": "/instance_groups/name=nope/jobs/-", "value": {}}])
    with pytest.raises(OpError):
        apply(SAMPLE, [{"type": "remove", "path": "/cloud_provider/nothing"}])


def test_cloud_config_vm_types_are_valid_cloud_properties():
    from boshcpi.cloud import parse_vm_size

    cc = load(ROOT / "manifests/cloud-config.yml")
    for vm_type in cc["vm_types"]:
        size = parse_vm_size(vm_type["cloud_properties"])
        assert size.cpus >= 1 and size.memory_mb >= 1024
    assert {n["name"] for n in cc["networks"]} == {"default"}
