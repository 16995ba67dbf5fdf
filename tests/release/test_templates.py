"""Every ERB template of both jobs rendered with Ruby against example properties, strictly (a
property a template reads but the spec lacks fails), and the rendered cpi.json loaded by boshcpi's
own config loader."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from boshcpi import config

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent

pytestmark = pytest.mark.skipif(not shutil.which("ruby"), reason="ruby is installed by `make host`")


def render(job: str, props: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{job}-{props}"
    out.mkdir()
    proc = subprocess.run(
        ["ruby", str(HERE / "render.rb"), str(ROOT / "jobs" / job), str(HERE / f"{job}.{props}.json"), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize(("job", "props"), [("lxd_cpi", "full"), ("lxd_cpi", "minimal"), ("libvirt_cpi", "full")])
def test_templates_render_and_config_loads(job, props, tmp_path):
    out = render(job, props, tmp_path)
    cfg = config.load(str(out / "config/cpi.json"))
    for script in ("bin/cpi", "bin/pre-start", "bin/throttle_ctl", "bin/cleanup_ctl"):
        assert subprocess.run(["bash", "-n", str(out / script)]).returncode == 0, script
    assert f"/{job}/config/cpi.json" in (out / "bin/cpi").read_text()
    if job == "lxd_cpi" and props == "full":
        assert cfg.server.type == "incus" and cfg.server.url == "https://10.245.0.1:8443"
        assert cfg.server.insecure_skip_verify is True and cfg.server.target == "@az1"
        assert cfg.server.managed_network_assignment == "dhcp" and cfg.server.predeploy_stemcell is True
        assert cfg.agent_config.type == "FAT32" and cfg.throttle_config.limit == 3 and cfg.throttle_hold == 90
        monit = (out / "monit").read_text()
        assert "lxd_cpi_throttle" in monit and "lxd_cpi_cleanup" in monit
        assert "sleep 3600" in (out / "bin/cleanup_ctl").read_text()
    if job == "lxd_cpi" and props == "minimal":
        # Defaults as in the Go CPI's job spec.
        assert cfg.server.type == "lxd" and cfg.server.project_name == "default"
        assert cfg.server.network_name == "lxdbr0" and cfg.server.storage_pool_name == "default"
        assert cfg.agent_config.type == "CDROM" and cfg.agent_config.label == "config-2"
        assert cfg.throttle_config.enabled is False and cfg.throttle_config.limit == 4
        assert "check process" not in (out / "monit").read_text()
    if job == "libvirt_cpi":
        assert cfg.driver == "libvirt" and cfg.libvirt.domain_type == "qemu"
        assert cfg.libvirt.uri.startswith("qemu+tls://") and cfg.libvirt.bridge_name == "br0"


@pytest.mark.parametrize("job", ["lxd_cpi", "libvirt_cpi"])
def test_every_spec_property_is_used_by_a_template(job, tmp_path):
    out = render(job, "full", tmp_path)
    used = set(json.loads((out / "used-properties.json").read_text()))
    declared = set(yaml.safe_load((ROOT / "jobs" / job / "spec").read_text())["properties"])
    assert declared - used == set()


def test_a_template_reading_an_undeclared_property_fails(tmp_path):
    job = tmp_path / "job"
    (job / "templates").mkdir(parents=True)
    (job / "spec").write_text("name: j\ntemplates: {t.erb: t}\nproperties:\n  a.b: {default: 1}\n")
    (job / "templates/t.erb").write_text("<%= p('a.b') %> <%= p('a.c') %>")
    props = tmp_path / "p.json"
    props.write_text("{}")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        ["ruby", str(HERE / "render.rb"), str(job), str(props), str(out)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "'a.c', which the job spec does not declare" in proc.stderr


def test_release_layout():
    final = yaml.safe_load((ROOT / "config/final.yml").read_text())
    assert final["name"] == "boshcpi"
    for pkg in ("python3", "boshcpi"):
        spec = yaml.safe_load((ROOT / "packages" / pkg / "spec").read_text())
        assert spec["name"] == pkg
        assert (ROOT / "packages" / pkg / "packaging").stat().st_mode & 0o111
    boshcpi_files = yaml.safe_load((ROOT / "packages/boshcpi/spec").read_text())["files"]
    assert list((ROOT / "src").glob(boshcpi_files[0])), "the package's files glob matches the source"
    for job in ("lxd_cpi", "libvirt_cpi"):
        spec = yaml.safe_load((ROOT / "jobs" / job / "spec").read_text())
        for template in spec["templates"]:
            assert (ROOT / "jobs" / job / "templates" / template).exists()
        assert spec["packages"] == ["python3", "boshcpi"]
