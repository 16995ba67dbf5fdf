"""Manifests and ops files through the real bosh CLI (`bosh interpolate`: its go-patch and variable
resolution): cpi.yml and every ops file apply to a sample bosh-deployment manifest, every variable
resolves from the example vars, and the cloud-config carries what cf-deployment and
concourse-bosh-deployment ask for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
SAMPLE = HERE / "bosh-sample.yml"
OPS = sorted((ROOT / "manifests/ops").glob("*.yml"))
VARS = ROOT / "manifests/bosh-vars.yml"


def bosh_int(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    bosh = require_tool("bosh")
    proc = subprocess.run([str(bosh), "interpolate", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def interpolated(*ops: Path, extra: tuple[str, ...] = ()) -> dict:
    args = [str(SAMPLE), "-o", str(ROOT / "manifests/cpi.yml")]
    for op in ops:
        args += ["-o", str(op)]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        # Generated variables (certificates, passwords) come from a vars store, as with create-env.
        args += ["-l", str(VARS), "--vars-store", f"{tmp}/creds.yml", *extra]
        return yaml.safe_load(bosh_int(*args).stdout)


def test_every_manifest_is_valid_yaml():
    for path in [*ROOT.glob("manifests/*.yml"), *OPS]:
        assert yaml.safe_load(path.read_text()) is not None, path


def test_cpi_ops_file_makes_an_lxd_director():
    out = interpolated()
    bosh = next(g for g in out["instance_groups"] if g["name"] == "bosh")
    assert {"name": "lxd_cpi", "release": "boshcpi"} in bosh["jobs"]
    assert bosh["properties"]["director"]["cpi_job"] == "lxd_cpi"
    assert out["cloud_provider"]["template"] == {"name": "lxd_cpi", "release": "boshcpi"}
    assert bosh["properties"]["lxd_cpi"]["agent"]["mbus"].startswith("nats://")
    provider = out["cloud_provider"]["properties"]["lxd_cpi"]
    assert provider["agent"]["mbus"].startswith("https://mbus:")
    # The Go LXD CPI's variable names resolve from a vars file written for it.
    assert provider["server"]["url"] == "https://192.168.1.10:8443"
    assert provider["server"]["storage_pool_name"] == "default"
    assert any(r["name"] == "boshcpi" for r in out["releases"])


@pytest.mark.parametrize("ops", OPS, ids=lambda p: p.name)
def test_each_ops_file_applies_after_cpi_yml(ops):
    base = interpolated()
    extra = (
        "-v",
        "throttle_limit=4",
        "-v",
        "lxd_target=member1",
        "-v",
        "libvirt_domain_type=qemu",
        "-v",
        "libvirt_storage_pool_name=default",
        "-v",
        "libvirt_network_name=default",
        "-v",
        "warden_stemcell_url=file:///tmp/warden.tgz",
        "--var-errs",
    )
    out = interpolated(ops, extra=extra)
    assert out != base, f"{ops.name} changed nothing"
    if ops.name == "libvirt.yml":
        bosh = next(g for g in out["instance_groups"] if g["name"] == "bosh")
        assert {"name": "libvirt_cpi", "release": "boshcpi"} in bosh["jobs"]
        assert not any(j["name"] == "lxd_cpi" for j in bosh["jobs"])
        assert "lxd_cpi" not in bosh["properties"] and out["cloud_provider"]["template"]["name"] == "libvirt_cpi"
    if ops.name == "incus.yml":
        assert out["cloud_provider"]["properties"]["lxd_cpi"]["server"]["type"] == "incus"
    if ops.name == "generate-client-cert.yml":
        # The CLI generated the client certificate into the vars store and put it in place.
        server = out["cloud_provider"]["properties"]["lxd_cpi"]["server"]
        assert server["tls_client_cert"].startswith("-----BEGIN CERTIFICATE-----")
        assert "PRIVATE KEY" in server["tls_client_key"]


def test_a_wrong_path_is_caught(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("- type: replace\n  path: /instance_groups/name=nope/jobs/-\n  value: {}\n")
    assert bosh_int(str(SAMPLE), "-o", str(bad), check=False).returncode != 0


CF_DEPLOYMENT_NAMES = {
    "vm_types": {"default", "minimal", "small", "small-highmem"},
    "vm_extensions": {
        "cf-router-network-properties",
        "cf-tcp-router-network-properties",
        "diego-ssh-proxy-network-properties",
        "ssh-proxy-and-router-lb",
        "credhub-lb",
        "5GB_ephemeral_disk",
        "10GB_ephemeral_disk",
        "50GB_ephemeral_disk",
        "100GB_ephemeral_disk",
        "500GB_ephemeral_disk",
        "1TB_ephemeral_disk",
    },
    "disk_types": {"default", "5GB", "10GB", "100GB"},
    "networks": {"default"},
    "azs": {"z1", "z2", "z3"},
}


def test_cloud_config_has_what_cf_and_concourse_deployments_ask_for():
    from boshcpi.cloud import parse_vm_size

    cc = yaml.safe_load(bosh_int(str(ROOT / "manifests/cloud-config.yml"), "-l", str(VARS), "--var-errs").stdout)
    for section, names in CF_DEPLOYMENT_NAMES.items():
        assert names <= {x["name"] for x in cc[section]}, section
    for vm_type in cc["vm_types"]:
        size = parse_vm_size(vm_type["cloud_properties"])
        assert size.cpus >= 1 and size.memory_mb >= 1024
    for ext in cc["vm_extensions"]:
        parse_vm_size(ext.get("cloud_properties") or {})
    assert cc["compilation"]["vm_type"] in {v["name"] for v in cc["vm_types"]}


def test_the_example_vars_point_at_noble():
    assert "noble" in yaml.safe_load(VARS.read_text())["stemcell_url"]
