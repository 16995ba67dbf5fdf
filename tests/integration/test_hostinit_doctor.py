"""`boshcpi init` twice against real LXD and Incus (the second run changes nothing), and `doctor`'s
FAIL paths provoked for real: a wrong pool, a missing network, an untrusted client certificate."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from boshcpi.drivers.lxd.hostinit import generate_cert
from tests.conftest import DAEMONS
from tests.helpers import ROOT

pytestmark = pytest.mark.lxd

HTTPS = {"lxd": "https://127.0.0.1:8443", "incus": "https://127.0.0.1:8444"}


def boshcpi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boshcpi.cli", *args], cwd=ROOT, capture_output=True, text=True)


def doctor(config) -> tuple[int, dict[str, dict]]:
    out = boshcpi("doctor", "--config", str(config), "--json")
    return out.returncode, {c["check"]: c for c in json.loads(out.stdout)}


@pytest.fixture(params=["lxd", "incus"])
def fresh_names(request, tmp_path):
    kind = request.param
    cli = DAEMONS[kind]["cli"]
    tag = uuid.uuid4().hex[:6]
    names = {"project": f"boshcpi-i{tag}", "network": f"bcpi{tag}", "pool": f"boshcpi-i{tag}"}
    cfg = {
        "server": {
            "type": kind,
            "project_name": names["project"],
            "network_name": names["network"],
            "storage_pool_name": names["pool"],
            "profile_name": "default",
        }
    }
    path = tmp_path / "cpi.json"
    path.write_text(json.dumps(cfg))
    yield kind, cli, names, path, tmp_path
    subprocess.run([cli, "project", "delete", names["project"]], capture_output=True)
    subprocess.run([cli, "network", "delete", names["network"]], capture_output=True)
    subprocess.run([cli, "storage", "delete", names["pool"]], capture_output=True)


def test_init_twice_then_doctor_is_green(fresh_names):
    kind, cli, names, config, _tmp = fresh_names
    subnet = "10.245.41.1/24" if kind == "lxd" else "10.245.42.1/24"
    rc, checks = doctor(config)
    assert rc == 1
    assert checks["project"]["status"] == "FAIL" and checks["network"]["status"] == "FAIL"
    assert checks["storage pool"]["status"] == "FAIL"

    first = boshcpi("init", "--config", str(config), "--network-cidr", subnet, "--pool-size", "3GiB")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created") == 3 and "change(s)" in first.stdout
    second = boshcpi("init", "--config", str(config), "--network-cidr", subnet, "--pool-size", "3GiB")
    assert second.returncode == 0
    assert "created" not in second.stdout and "updated" not in second.stdout
    assert "nothing to change" in second.stdout

    net = json.loads(
        subprocess.run([cli, "query", f"/1.0/networks/{names['network']}"], capture_output=True, text=True).stdout
    )
    assert net["config"]["ipv4.nat"] == "false" and net["config"]["ipv4.address"] == subnet
    prof = json.loads(
        subprocess.run(
            [cli, "query", f"/1.0/profiles/default?project={names['project']}"], capture_output=True, text=True
        ).stdout
    )
    assert prof["devices"]["root"] == {"type": "disk", "path": "/", "pool": names["pool"]}
    rc, checks = doctor(config)
    assert rc == 0
    assert all(c["status"] != "FAIL" for c in checks.values())
    assert checks["pool driver"]["status"] == "OK"


def test_doctor_fails_on_a_wrong_pool_and_a_missing_network(lxd, tmp_path):
    config = lxd.write_config(server={"storage_pool_name": "no-such-pool", "network_name": "no-such-net"})
    rc, checks = doctor(config)
    assert rc == 1
    assert checks["storage pool"]["status"] == "FAIL" and "no-such-pool" in checks["storage pool"]["detail"]
    assert checks["network"]["status"] == "FAIL" and checks["network"]["fix"]
    rc, checks = doctor(lxd.config_path)
    assert rc == 0


@pytest.mark.parametrize("kind", ["lxd", "incus"])
def test_doctor_fails_on_an_untrusted_certificate_until_init_trusts_it(kind, tmp_path):
    crt, key = generate_cert(str(tmp_path / "cert"), name=f"boshcpi-t{uuid.uuid4().hex[:6]}")
    cfg = {
        "server": {
            "type": kind,
            "url": HTTPS[kind],
            "insecure_skip_verify": True,
            "tls_client_cert": Path(crt).read_text(),
            "tls_client_key": Path(key).read_text(),
            "network_name": DAEMONS[kind]["network"],
            "storage_pool_name": "boshcpi-btrfs",
        }
    }
    config = tmp_path / "cpi.json"
    config.write_text(json.dumps(cfg))
    rc, checks = doctor(config)
    assert rc == 1
    assert checks["connection"]["status"] == "FAIL" and "not trusted" in checks["connection"]["detail"]
    # The client key never shows in the output.
    assert Path(key).read_text().splitlines()[1] not in json.dumps(checks)
    admin = {"server": {"type": kind, "network_name": DAEMONS[kind]["network"], "storage_pool_name": "boshcpi-btrfs"}}
    admin_cfg = tmp_path / "admin.json"
    admin_cfg.write_text(json.dumps(admin))
    fp = None
    try:
        out = boshcpi("init", "--config", str(admin_cfg), "--trust-cert", crt, "--cert-name", "boshcpi-test")
        assert out.returncode == 0, out.stderr
        fp = next(line.split()[2] for line in out.stdout.splitlines() if line.startswith("trust certificate"))
        rc, checks = doctor(config)
        assert checks["connection"]["status"] == "OK"
        assert rc == 0
    finally:
        if fp:
            subprocess.run([DAEMONS[kind]["cli"], "config", "trust", "remove", fp], capture_output=True)
