"""`bosh create-env` with the real bosh CLI and the release's other job, `libvirt_cpi`, on the real
libvirtd: a VM (QEMU, software emulation here) from an OpenStack-style stemcell that boots the real
bosh-agent, with an ephemeral and a persistent disk, one trivial job; then `delete-env`, then nothing of
it is left in libvirt or on this machine.

The manifest is written the way an operator of the Go libvirt CPI writes one (a2geek/libvirt-bosh-cpi
libvirt-cpi.yml: `libvirt.type: socket`, `settings.*`, `stemcell.*`), with every other property at its
default, the console log folder included. The CLI does the rest: it compiles the packages (CPython and
boshcpi, whose libvirt client is its own), renders the job with its own ERB
renderer, runs bin/cpi, waits for the agent over its HTTPS mbus, mounts the disk through it and starts
the job. The guest's own report on its serial console says which disk holds /var/vcap/store."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import agentimage
from boshcpi.drivers.libvirt import remote as libvirt
from tests import boshcli
from tests.helpers import require_tool
from tests.integration.test_libvirt_agent import REPORT, device_of

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

NETWORK, SUBNET = "boshcpi-test-net", "10.245.30"
# What libvirt_cpi.libvirt.console_log_dir defaults to (jobs/libvirt_cpi/spec): libvirt's own folder.
CONSOLE_DIR = Path("/var/log/libvirt/qemu")


@pytest.fixture(scope="module")
def agent_vm_stemcell_tgz() -> Path:
    agent = require_tool("bosh-agent")
    return agentimage.stemcell_tarball(agentimage.vm_stemcell(agent))


def manifest(tmp: Path, release: Path, dummy: Path, stemcell: Path, pool: str, ip: str) -> Path:
    return boshcli.manifest(
        tmp,
        "e2e-libvirt",
        (release, dummy),
        stemcell,
        {"cpus": 1, "memory": 1536, "ephemeral_disk": 1024},
        SUBNET,
        ip,
        "libvirt_cpi",
        {
            "libvirt": {"type": "socket", "domain_type": "qemu"},
            "settings": {"storage_pool_name": pool, "network_name": NETWORK},
            "stemcell": {"type": "ConfigDriveISO"},
        },
    )


def last_report(console: Path) -> dict[str, str]:
    """The guest's last disk report on its serial console (see guestfiles.DISK_REPORT)."""
    text = console.read_text(errors="replace") if console.exists() else ""
    for line in reversed(text.splitlines()):
        if line.startswith(REPORT):
            return dict(kv.split("=", 1) for kv in line[len(REPORT) :].split(" "))
    return {}


def test_create_env_delete_env_with_the_libvirt_job(libvirt_pool, tmp_path, agent_vm_stemcell_tgz):
    release = boshcli.boshcpi_release()
    dummy = boshcli.dummy_release(tmp_path)
    ip = f"{SUBNET}.{150 + uuid.uuid4().int % 40}"
    path = manifest(tmp_path, release, dummy, agent_vm_stemcell_tgz, libvirt_pool, ip)
    state, creds = tmp_path / "state.json", tmp_path / "creds.yml"
    boshcli.new_state(state)
    boshcli.restore_compiled()
    conn = libvirt.open("qemu:///system")
    pool = conn.storagePoolLookupByName(libvirt_pool)
    pool.refresh(0)
    volumes_before = set(pool.listVolumes())
    args = ["create-env", str(path), "--state", str(state), "--vars-store", str(creds)]
    console = Path()
    try:
        boshcli.timed("create-env (libvirt)", boshcli.run, *args)
        boshcli.keep_compiled()
        doc = json.loads(state.read_text())
        vm = doc["current_vm_cid"]
        disk = next(d["cid"] for d in doc["disks"] if d["id"] == doc["current_disk_id"])
        dom = conn.lookupByName(vm)
        assert dom.isActive()
        assert f"<serial>{disk}</serial>" in dom.XMLDesc(0)
        # The job's start went through the agent (create-env waits for it to run); the disk the agent
        # mounted on /var/vcap/store is the persistent disk, found by its serial.
        console = CONSOLE_DIR / f"{vm}.console.log"
        deadline = time.monotonic() + 90
        while True:  # the guest reports every few seconds: wait for a report made after the mount
            report = last_report(console)
            if report.get("store", "none") != "none" or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert report, f"no disk report on {console}"
        assert device_of(report, report["store"]) == disk, report
        assert device_of(report, report["data"]) == "ephemeral", report
    except AssertionError:
        print(console.read_text(errors="replace")[-6000:] if console.is_file() else "(no console log)")
        raise
    finally:
        boshcli.delete_env("libvirt", path, state, creds)
    assert not state.exists()
    pool.refresh(0)
    assert set(pool.listVolumes()) == volumes_before
    assert not [d.name() for d in conn.listAllDomains(0) if libvirt_pool in d.XMLDesc(0)]
    assert not console.exists(), "delete_vm leaves the console log of a local libvirtd"
    conn.close()
    print(f"timings: {json.dumps(boshcli.TIMINGS)}")
