"""Every template of both jobs rendered by the bosh CLI's own ERB renderer (taken out of the real CLI
binary, see renderer.py) with full, minimal and Go-CPI property sets; each rendered cpi.json then loads
in boshcpi's config loader, and each script is valid bash."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from boshcpi import config
from tests.helpers import require_tool
from tests.release import renderer

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    bosh = require_tool("bosh")
    if not shutil.which("ruby"):
        pytest.skip("not run: no ruby (the bosh CLI's renderer needs it; `make host` installs it)")
    return renderer.extract(bosh, tmp_path_factory.mktemp("erb") / "erb_renderer.rb")


def props(name: str) -> dict:
    return yaml.safe_load((HERE / "props" / f"{name}.yml").read_text())


def render(script: Path, job: str, properties: dict, tmp: Path) -> tuple[config.Config, dict[str, Path]]:
    out = renderer.render(script, ROOT / "jobs" / job, properties, tmp / job)
    for dest in ("bin/cpi", "bin/pre-start", "bin/throttle_ctl", "bin/cleanup_ctl"):
        assert subprocess.run(["bash", "-n", str(out[dest])]).returncode == 0, dest
    assert f"/{job}/config/cpi.json" in out["bin/cpi"].read_text()
    return config.load(str(out["config/cpi.json"])), out


def test_lxd_full(script, tmp_path):
    cfg, out = render(script, "lxd_cpi", props("lxd_cpi.full"), tmp_path)
    assert cfg.server.type == "incus" and cfg.server.url == "https://10.245.0.1:8443"
    assert cfg.server.insecure_skip_verify is True and cfg.server.target == "@az1"
    assert cfg.server.managed_network_assignment == "dhcp" and cfg.server.predeploy_stemcell is True
    assert cfg.agent_config.type == "FAT32" and cfg.throttle_config.limit == 3 and cfg.throttle_hold == 90
    assert cfg.server.create_vm_lock.enabled is True and cfg.server.allow_raw_devices is True
    monit = out["monit"].read_text()
    assert "lxd_cpi_throttle" in monit and "lxd_cpi_cleanup" in monit
    cleanup = out["bin/cleanup_ctl"].read_text()
    assert "sleep 3600" in cleanup and "--older-than '2h'" in cleanup


def test_lxd_minimal_gets_the_go_cpis_defaults(script, tmp_path):
    cfg, out = render(script, "lxd_cpi", props("lxd_cpi.minimal"), tmp_path)
    assert cfg.server.type == "lxd" and cfg.server.project_name == "default"
    assert cfg.server.network_name == "lxdbr0" and cfg.server.storage_pool_name == "default"
    assert cfg.server.instance_config == {
        "jammy": {"security.csm": "true", "security.secureboot": "false"},
        "default": {"security.secureboot": "false"},
    }
    assert cfg.agent_config.type == "CDROM" and cfg.agent_config.label == "config-2"
    assert cfg.agent_config.filestore_path == "/var/vcap/store/agent-data"
    assert cfg.throttle_config.enabled is False and cfg.throttle_config.limit == 4
    assert "check process" not in out["monit"].read_text()


def test_lxd_go_cpi_properties_render_unchanged(script, tmp_path):
    """The properties the Go LXD CPI's cpi.yml sets (cloud_provider and director), as its operators
    have them, including its string booleans and numbers."""
    for which in ("cloud_provider", "director"):
        cfg, _ = render(script, "lxd_cpi", {"lxd_cpi": props("go-lxd")[which]}, tmp_path / which)
        assert cfg.server.url == "https://192.168.1.10:8443" and cfg.server.project_name == "boshdev"
        assert cfg.server.storage_pool_name == "boshpool" and cfg.agent_config.type == "CDROM"
        assert cfg.server.create_vm_lock.enabled is False
    assert cfg.agent_config.filestore_path == "/var/vcap/store/agent-data"


def test_lxd_go_cpi_older_property_names_render(script, tmp_path):
    """Go LXD CPI releases before Incus support named the server block lxd_cpi.lxd.* (a2geek/
    bosh-lxd-cpi-release jobs/lxd_cpi/spec then): such a manifest deploys unchanged, each older name
    taking its server.* twin's place, string booleans included."""
    server = props("go-lxd")["director"]["server"]
    legacy = {k: v for k, v in server.items() if k != "create_vm_lock"}
    legacy.update(insecure_skip_verify="true", bios_path="bios-256k.bin", network_name="oldbr0")
    properties = {"lxd_cpi": {**props("go-lxd")["director"], "server": {"network_name": "ignored"}, "lxd": legacy}}
    cfg, _ = render(script, "lxd_cpi", properties, tmp_path)
    assert cfg.server.url == "https://192.168.1.10:8443" and cfg.server.project_name == "boshdev"
    assert cfg.server.storage_pool_name == "boshpool" and cfg.server.profile_name == "default"
    assert cfg.server.network_name == "oldbr0" and cfg.server.insecure_skip_verify is True
    assert cfg.server.bios_path == "bios-256k.bin" and cfg.server.tls_client_key.startswith("-----BEGIN EC")


def test_libvirt_full(script, tmp_path):
    cfg, _ = render(script, "libvirt_cpi", props("libvirt_cpi.full"), tmp_path)
    assert cfg.driver == "libvirt" and cfg.libvirt.domain_type == "qemu"
    assert cfg.libvirt.uri.startswith("qemu+tls://") and cfg.libvirt.bridge_name == "br0"


@pytest.mark.parametrize("connection", ["socket", "tcp", "tls"])
def test_libvirt_go_cpi_properties_render_unchanged(script, tmp_path, connection):
    """What the Go libvirt CPI's manifests (libvirt-cpi.yml with its qemu vars, openstack-stemcell.yml,
    libvirt-<connection>.yml) set, rendered through our libvirt_cpi job."""
    go = props("go-libvirt")
    properties = {"libvirt_cpi": {**go["base"], "libvirt": go["connections"][connection]}}
    cfg, _ = render(script, "libvirt_cpi", properties, tmp_path)
    uri = {
        "socket": "qemu+unix:///system?socket=/var/run/libvirt/libvirt-sock",
        "tcp": "qemu+tcp://192.168.123.1:16509/system",
        "tls": "qemu+tls://192.168.123.1:16514/system",
    }[connection]
    assert cfg.libvirt.uri == uri
    assert cfg.libvirt.domain_type == "qemu"  # from the domain template's <domain type='qemu'>
    assert cfg.libvirt.storage_pool_name == "bosh-pool" and cfg.libvirt.network_name == "default"
    assert cfg.libvirt.stemcell_formats == ["openstack-qcow2", "openstack-raw"]
    assert cfg.agent_config.type == "FAT32" and cfg.agent_config.label == "config-2"
    assert cfg.agent_config.public_key.startswith("ssh-rsa ")
    assert cfg.throttle_config.enabled is True and cfg.throttle_config.limit == 1
    if connection == "tls":
        assert cfg.libvirt.tls_client_cert.startswith("-----BEGIN") and cfg.libvirt.tls_ca_cert


@pytest.mark.parametrize("job", ["lxd_cpi", "libvirt_cpi"])
def test_every_spec_property_is_read_by_a_template(job):
    """No dead property, except the Go CPI's that boshcpi accepts so its vars files render, and says
    so in the description."""
    declared = yaml.safe_load((ROOT / "jobs" / job / "spec").read_text())["properties"]
    text = "".join(p.read_text() for p in (ROOT / "jobs" / job / "templates").glob("*.erb"))
    text += (ROOT / "jobs" / job / "monit").read_text()
    unread = {p for p in declared if f'"{p}"' not in text}
    assert {p for p in unread if not declared[p]["description"].startswith("Accepted for the Go CPI")} == set()


def test_a_template_reading_an_undeclared_property_fails(script, tmp_path):
    job = tmp_path / "job"
    (job / "templates").mkdir(parents=True)
    (job / "spec").write_text("name: j\ntemplates: {t.erb: t}\nproperties:\n  a.b: {default: 1}\n")
    (job / "monit").write_text("")
    (job / "templates/t.erb").write_text("<%= p('a.b') %> <%= p('a.c') %>")
    with pytest.raises(AssertionError, match=r"Can't find property 'a\.c'"):
        renderer.render(script, job, {}, tmp_path / "out")


def test_release_layout():
    final = yaml.safe_load((ROOT / "config/final.yml").read_text())
    assert final["name"] == "boshcpi"
    assert sorted(p.name for p in (ROOT / "packages").iterdir()) == ["boshcpi", "python3"]
    for pkg in ("python3", "boshcpi"):
        spec = yaml.safe_load((ROOT / "packages" / pkg / "spec").read_text())
        assert spec["name"] == pkg
        assert (ROOT / "packages" / pkg / "packaging").stat().st_mode & 0o111
    boshcpi_files = yaml.safe_load((ROOT / "packages/boshcpi/spec").read_text())["files"]
    assert list((ROOT / "src").glob(boshcpi_files[0])), "the package's files glob matches the source"
    for job, packages in (
        ("lxd_cpi", ["python3", "boshcpi"]),
        ("libvirt_cpi", ["python3", "boshcpi"]),
    ):
        spec = yaml.safe_load((ROOT / "jobs" / job / "spec").read_text())
        for template in spec["templates"]:
            assert (ROOT / "jobs" / job / "templates" / template).exists()
        assert spec["packages"] == packages
    assert json.loads(json.dumps(final))
