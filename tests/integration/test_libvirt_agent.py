"""The disk scheme proven from inside a real guest: the real bosh-agent (cloudfoundry/bosh-agent, the
binary in ../shared/tools) in a Debian VM under TCG, reading its settings from the config drive boshcpi
writes and resolving every disk the way it does on OpenStack stemcells (`virtio`: the by-id glob on the
disk cid, then the hint's path; the ephemeral disk by path).

The guest image reports to its serial console which block devices hold /var/vcap/store and
/var/vcap/data and which serial each virtio disk carries (its own instrumentation; the agent does the
resolving). The test drives the agent over its HTTPS mbus as `bosh create-env` does (attach_disk, then
`mount_disk` with no hint sent: the agent reads the rewritten config drive), and checks that every
disk the agent mounts is the one asked for, across detach, attach, reboot and recreate.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import agentimage, stemcells
from tests.agentclient import Agent, mbus_cert
from tests.helpers import call, libvirt_config, require_tool

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

PASSWORD = "mbus-s3cret-pw"
REPORT = "BOSHCPI-REPORT "


@pytest.fixture(scope="module")
def agent_vm_stemcell() -> Path:
    agent = require_tool("bosh-agent")
    return agentimage.vm_stemcell(agent)


class Guest:
    def __init__(self, tmp: Path, pool: str, kind: str) -> None:
        self.tmp = tmp
        self.console_dir = tmp / "console"
        self.ip = f"10.245.30.{100 + uuid.uuid4().int % 100}"
        self.config = tmp / f"cpi-{kind}.json"
        mbus = f"https://mbus:{PASSWORD}@0.0.0.0:6868"
        self.config.write_text(json.dumps(libvirt_config(pool, self.console_dir, kind, mbus)))
        self.cert = mbus_cert(tmp, self.ip)
        self.agent = Agent(self.ip, PASSWORD, self.cert["ca"])
        self.vm = ""

    def call(self, method, *args):
        return call(self.config, method, *args)

    def create(self, stemcell: str, ephemeral_mb: int, disk_cids: list[str] | None = None) -> float:
        net = {
            "default": {
                "type": "manual",
                "ip": self.ip,
                "netmask": "255.255.255.0",
                "gateway": "10.245.30.1",
                "dns": ["10.245.30.1"],
                "default": ["dns", "gateway"],
                "cloud_properties": {},
            }
        }
        env = {
            "bosh": {
                "mbus": {"cert": self.cert},
                "blobstores": [{"provider": "local", "options": {"blobstore_path": "/var/vcap/data/blobs"}}],
                "password": "*",
            }
        }
        props = {"cpus": 1, "memory": 1536, "ephemeral_disk": ephemeral_mb}
        self.vm, _ = self.call("create_vm", "agent-disks", stemcell, props, net, disk_cids or [], env).ok()
        return self.agent.wait_ready(300)

    def console(self) -> str:
        path = self.console_dir / f"{self.vm}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def report(self, after: int = 0, timeout: float = 60, **want: str) -> dict[str, str]:
        """The guest's latest disk report matching `want` (e.g. store=..., or marker=...)."""
        deadline = time.monotonic() + timeout
        last: dict[str, str] = {}
        while time.monotonic() < deadline:
            for line in reversed(self.console()[after:].splitlines()):
                if line.startswith(REPORT):
                    last = dict(kv.split("=", 1) for kv in line[len(REPORT) :].split(" "))
                    break
            if last and all(_matches(last, k, v) for k, v in want.items()):
                return last
            time.sleep(1)
        raise AssertionError(f"the guest never reported {want}; last report: {last}\n{self.console()[-3000:]}")


def _matches(report: dict[str, str], key: str, value: str) -> bool:
    if key in ("store", "data"):
        return device_of(report, report[key]) == value if report[key] != "none" else value == "none"
    return report.get(key) == value


def device_of(report: dict[str, str], source: str) -> str:
    """The serial of the disk holding a mount source (/dev/vdc1 -> the serial of vdc)."""
    dev = source.rsplit("/", 1)[-1].rstrip("0123456789")
    serials = dict(pair.split("=")[::-1] for pair in report["ids"].split(",") if "=" in pair)
    return serials.get(dev, f"?{dev}")


def test_the_real_agent_finds_every_disk(libvirt_pool, tmp_path, agent_vm_stemcell):
    """CDROM config drive, with an ephemeral disk, and a persistent disk's life as the director leads
    it: attached and mounted; moved twice to a new disk (attach the new one beside the old, mount it,
    migrate_disk, detach the old: two disks attached at once, and the agent must pick the right one);
    three size changes in a row; a reboot; a recreate. The data written on the first disk follows
    every move."""
    g = Guest(tmp_path, libvirt_pool, "CDROM")
    sc = g.call("create_stemcell", str(agent_vm_stemcell / "image"), stemcells.cloud_properties(agent_vm_stemcell)).ok()
    disks: list[str] = []
    try:
        ready = g.create(sc, 1024)
        # The ephemeral disk: found by its hint's path (the by-id link of serial `ephemeral`),
        # partitioned by the agent and mounted on /var/vcap/data.
        g.report(data="ephemeral")
        a = g.call("create_disk", 256, {}, g.vm).ok()
        disks.append(a)
        assert g.call("attach_disk", g.vm, a).ok() == {"path": f"/dev/disk/by-id/virtio-{a}"}
        # As `bosh create-env` does: no hint sent to the agent; it reads the config drive again.
        g.agent.call("mount_disk", a)
        g.report(store=a, marker=a)
        for new in ("b", "c"):
            old = disks[-1]
            disk = g.call("create_disk", 256, {}, g.vm).ok()
            disks.append(disk)
            assert g.call("attach_disk", g.vm, disk).ok() == {"path": f"/dev/disk/by-id/virtio-{disk}"}
            assert sorted(g.call("get_disks", g.vm).ok()) == sorted([old, disk])
            g.agent.call("mount_disk", disk)  # beside the old one: the migration target
            g.agent.call("migrate_disk")
            g.report(store=disk, marker=a)
            g.agent.call("remove_persistent_disk", old)
            g.call("detach_disk", g.vm, old).ok()
            assert g.agent.call("list_disk") == [disk], new
        c = disks[-1]

        # The director's disk type changes without a copy, three in a row (cloudfoundry/bosh
        # disk_manager.rb:256-271 resize_disk with enable_cpi_resize_disk, and update_disk, which on
        # libvirt changes the size): the agent's unmount_disk, detach_disk, the change, attach_disk,
        # the agent's mount_disk, which grows the partition and its filesystem to the new size
        # (bosh-agent platform/linux_platform.go AdjustPersistentDiskPartitioning). After each: one
        # mount of the disk, on the store, nothing on the migration target, the data, the new size.
        fs_size = int(g.report(store=c)["size"])
        for what, size in (("resize_disk", 384), ("update_disk", 512), ("resize_disk", 640)):
            g.agent.call("unmount_disk", c)
            assert g.call("detach_disk", g.vm, c).ok() is None, what
            if what == "update_disk":
                assert g.call("update_disk", c, size, {}).ok() == c
            else:
                assert g.call(what, c, size).ok() is None
            g.call("attach_disk", g.vm, c).ok()
            g.agent.call("mount_disk", c)
            r = g.report(store=c, marker=a, mounts="1", mig="none")
            # The filesystem grew with its disk (ext4 keeps some of it for its journal and tables).
            assert fs_size < int(r["size"]) <= size and int(r["size"]) >= 0.88 * size, (what, fs_size, r)
            fs_size = int(r["size"])
            assert g.agent.call("list_disk") == [c], what

        # Reboot: the agent reads the settings again at boot and remounts its disk.
        seen = len(g.console())
        g.call("reboot_vm", g.vm).ok()
        g.agent.wait_ready(300)
        g.report(after=seen, store=c, marker=a, data="ephemeral")
        assert g.agent.call("list_disk") == [c]

        # Recreate (as the director does): a new VM gets the disk back, with its data.
        g.agent.call("unmount_disk", c)
        g.call("detach_disk", g.vm, c).ok()
        g.call("delete_vm", g.vm).ok()
        g.create(sc, 1024, [c])
        g.call("attach_disk", g.vm, c).ok()
        g.agent.call("mount_disk", c)
        g.report(store=c, marker=a, data="ephemeral")
        print(f"agent answered {ready:.0f}s after create_vm")
    finally:
        if g.vm:
            g.call("delete_vm", g.vm)
        for disk in disks:
            g.call("delete_disk", disk)
        g.call("delete_stemcell", sc)


def test_the_real_agent_without_an_ephemeral_disk(libvirt_pool, tmp_path, agent_vm_stemcell):
    """FAT32 config drive, no ephemeral disk: the agent makes its data partition on the root disk
    (CreatePartitionIfNoEphemeralDisk), and finds a persistent disk from the hint the director sends
    (a FAT32 drive's rewrite reaches the guest at its next boot)."""
    g = Guest(tmp_path, libvirt_pool, "FAT32")
    sc = g.call("create_stemcell", str(agent_vm_stemcell / "image"), stemcells.cloud_properties(agent_vm_stemcell)).ok()
    disk = ""
    try:
        g.create(sc, 0)
        g.report(data="root")
        disk = g.call("create_disk", 256, {}, g.vm).ok()
        hint = g.call("attach_disk", g.vm, disk).ok()
        # As the director does: the hint goes to the agent, then mount_disk.
        g.agent.call("add_persistent_disk", disk, hint)
        g.agent.call("mount_disk", disk)
        g.report(store=disk, marker=disk, data="root")
    finally:
        if g.vm:
            g.call("delete_vm", g.vm)
        if disk:
            g.call("delete_disk", disk)
        g.call("delete_stemcell", sc)
