"""`boshcpi init` on a libvirt host: the pool, the network and the console folder a config names are
made once (a second run changes nothing), `doctor` then passes, and bad input changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from boshcpi.drivers.libvirt import remote as libvirt
from tests.conftest import LIBVIRT_POOLS, RUN_ID
from tests.helpers import ROOT, libvirt_config

pytestmark = pytest.mark.libvirt

CIDR = "10.245.77.1/24"  # a subnet no other test bridge uses; NAT off


def boshcpi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "boshcpi.cli", *args], cwd=ROOT, capture_output=True, text=True)


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True)


def test_init_makes_the_pool_and_network_once_and_doctor_passes(tmp_path):
    pool, net = f"boshcpi-i{RUN_ID}", f"boshcpi-n{RUN_ID}"
    folder = LIBVIRT_POOLS / pool
    config = libvirt_config(pool, tmp_path / "console", "FAT32", "nats://n:x@10.245.77.2:4222")
    config["libvirt"]["network_name"] = net
    path = tmp_path / "cpi.json"
    path.write_text(json.dumps(config))
    conn = libvirt.open("qemu:///system")
    try:
        bad = boshcpi("init", "--config", str(path), "--network-cidr", "10.245.77.0/24")
        assert bad.returncode == 1 and "give the host's IPv4 address" in bad.stderr, bad.stderr
        with pytest.raises(libvirt.libvirtError):
            conn.storagePoolLookupByName(pool)  # refused before anything was made

        first = boshcpi("init", "--config", str(path), "--pool-path", str(folder), "--network-cidr", CIDR)
        assert first.returncode == 0, first.stderr
        lines = first.stdout.splitlines()
        assert lines[0].startswith("libvirt ") and lines[-1] == "3 change(s)"
        assert [line.split()[:3] for line in lines[1:4]] == [
            ["storage", "pool", pool],
            ["network", net, "created"],
            ["console", "log", "folder"],
        ]
        assert all(" created " in line + " " for line in lines[1:4]), lines
        p = conn.storagePoolLookupByName(pool)
        assert p.info()[0] == libvirt.VIR_STORAGE_POOL_RUNNING and folder.is_dir()
        n = conn.networkLookupByName(net)
        xml = n.XMLDesc(0)
        assert n.isActive() and "<forward" not in xml and "address='10.245.77.1'" in xml and "<dhcp" not in xml
        assert (tmp_path / "console").is_dir()

        again = boshcpi("init", "--config", str(path), "--pool-path", str(folder), "--network-cidr", CIDR)
        assert again.returncode == 0 and again.stdout.splitlines()[-1] == "nothing to change: the host is set up"

        doctor = boshcpi("doctor", "--config", str(path), "--json")
        checks = {c["check"]: c["status"] for c in json.loads(doctor.stdout)}
        assert checks["storage pool"] == "OK" and checks["network"] == "OK", doctor.stdout
    finally:
        conn.close()
        virsh("net-destroy", net)
        virsh("net-undefine", net)
        virsh("pool-destroy", pool)
        virsh("pool-undefine", pool)
        subprocess.run(["rm", "-rf", str(folder)])
