"""The libvirt driver against real libvirtd, domain type qemu (TCG: nested KVM hangs guests here).

The test stemcell boots a Debian kernel whose initramfs prints the settings it reads from the
config drive to the serial console: the console log proves the VM booted and read what the CPI
wrote, with a FAT32 and with an ISO9660 config drive."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import bootimage, stemcells
from boshcpi.drivers.libvirt import remote as libvirt
from tests.conftest import in_pool
from tests.helpers import call, libvirt_config

pytestmark = pytest.mark.libvirt

NET = {
    "default": {
        "type": "manual",
        "ip": "10.245.30.10",
        "netmask": "255.255.255.0",
        "gateway": "10.245.30.1",
        "dns": ["10.245.30.1"],
        "default": ["dns", "gateway"],
        "cloud_properties": {},
    }
}


class Ctx:
    def __init__(self, tmp: Path, kind: str, pool: str) -> None:
        self.tmp = tmp
        self.pool = pool
        self.console_dir = tmp / "console"
        self.config = libvirt_config(pool, self.console_dir, kind, "nats://n:libvirt-s3cret@10.245.30.11:4222")
        self.path = tmp / f"cpi-{kind}.json"
        self.path.write_text(json.dumps(self.config))
        self.conn = libvirt.open("qemu:///system")

    def call(self, method, *args, **kw):
        return call(self.path, method, *args, **kw)

    def volumes(self) -> set[str]:
        pool = self.conn.storagePoolLookupByName(self.pool)
        pool.refresh(0)
        return set(pool.listVolumes())

    def domains(self) -> set[str]:
        """This run's domains (those with disks in its pool)."""
        return {d.name() for d in self.conn.listAllDomains(0) if in_pool(d, self.pool)}

    def console(self, vm: str) -> str:
        path = self.console_dir / f"{vm}.console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_console(self, vm: str, needle: str, after: int = 0, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console(vm)[after:]
            if needle in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{needle!r} not on the console of {vm} within {timeout}s:\n{self.console(vm)[-3000:]}")


@pytest.fixture(scope="module")
def boot_stemcell():
    return stemcells.build_boot_stemcell(Path("/var/tmp/boshcpi-stemcells"))


@pytest.mark.parametrize("kind", ["FAT32", "CDROM"])
def test_vm_boots_and_reads_the_settings_the_cpi_wrote(libvirt_pool, tmp_path, boot_stemcell, kind):
    ctx = Ctx(tmp_path, kind, libvirt_pool)
    volumes_before, domains_before = ctx.volumes(), ctx.domains()
    sc = ctx.call("create_stemcell", str(boot_stemcell / "image"), stemcells.cloud_properties(boot_stemcell)).ok()
    vm = None
    disk = None
    try:
        vm, nets = ctx.call(
            "create_vm",
            f"agent-{kind.lower()}",
            sc,
            {"cpus": 1, "memory": 256, "ephemeral_disk": 64},
            NET,
            [],
            {"bosh": {"password": "env-s3cret"}},
        ).ok()
        mac = nets["default"]["mac"]
        dom = ctx.conn.lookupByName(vm)
        xml = dom.XMLDesc(0)
        assert "type='qemu'" in xml.split("\n")[0]
        # The boot disk is a copy-on-write overlay of the stemcell volume.
        root = ctx.conn.storagePoolLookupByName(ctx.pool).storageVolLookupByName(f"{vm}-root")
        assert "<backingStore>" in root.XMLDesc(0) and sc in root.XMLDesc(0)
        text = ctx.wait_console(vm, "boshcpi-test-image: done")
        settings = bootimage.settings_from_console(text)
        assert settings["agent_id"] == f"agent-{kind.lower()}"
        assert settings["vm"] == {"name": vm, "id": vm}
        assert settings["networks"]["default"]["mac"] == mac
        assert settings["disks"] == {
            "system": "/dev/disk/by-id/virtio-root",
            "ephemeral": {"path": "/dev/disk/by-id/virtio-ephemeral"},
            "persistent": {},
        }
        assert f"nic: eth0 {mac}" in text

        assert ctx.call("has_vm", vm).ok() is True
        ctx.call("set_vm_metadata", vm, {"deployment": "d", "job": "j", "index": "0", "name": "j/0"}).ok()
        assert ctx.conn.lookupByName(vm).metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, 0) == "d/j/0"
        # Tag values XML 1.0 cannot hold as they are: a C0 control (libxml2 would refuse the whole
        # document) becomes U+FFFD; a CR reads back as written (not as a newline).
        tags = {"ctl": "a\x01b", "tab": "x\ty", "cr": "1\r2\r\n3", "nl": "p\nq"}
        assert ctx.call("set_vm_metadata", vm, {**tags, "deployment": "d"}).ok() is None
        from boshcpi.drivers.libvirt import domain as dom_xml
        from boshcpi.drivers.libvirt import xmltree

        meta = xmltree.fromstring(
            ctx.conn.lookupByName(vm).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.NS, 0)
        )
        read_back = {t.get("name", ""): t.text or "" for t in meta if t.tag == "tag"}
        want = {**tags, "ctl": "a\ufffdb", "deployment": "d"}
        assert {k: read_back.get(k) for k in want} == want, read_back

        disk = ctx.call("create_disk", 32, {}, vm).ok()
        hint = ctx.call("attach_disk", vm, disk).ok()
        # The disk's cid is its serial: the agent's by-id glob finds it; the hint is the same link.
        assert len(disk) == 20 and hint == {"path": f"/dev/disk/by-id/virtio-{disk}"}
        assert ctx.call("get_disks", vm).ok() == [disk]
        assert ctx.call("resize_disk", disk, 64).ok() is None
        snap = ctx.call("snapshot_disk", disk, {"deployment": "d"}).ok()
        assert snap in ctx.volumes()
        # After a reboot the guest reads the rewritten settings and sees the disk by its serial.
        seen = len(ctx.console(vm))
        assert ctx.call("reboot_vm", vm).ok() is None
        text = ctx.wait_console(vm, "boshcpi-test-image: done", after=seen)
        settings = bootimage.settings_from_console(text)
        assert settings["disks"]["persistent"] == {disk: hint}
        assert f"serial={disk} size={64 * 2048}" in text

        assert ctx.call("delete_disk", disk).error_type == "Bosh::Clouds::CloudError"
        assert ctx.call("detach_disk", vm, disk).ok() is None
        assert ctx.call("get_disks", vm).ok() == []
        assert ctx.call("delete_snapshot", snap).ok() is None
        assert ctx.call("delete_vm", vm).ok() is None
        vm = None
        assert ctx.call("delete_disk", disk).ok() is None
        disk = None
    finally:
        if vm:
            ctx.call("delete_vm", vm)
        if disk:
            ctx.call("delete_disk", disk)
        ctx.call("delete_stemcell", sc)
    assert ctx.volumes() == volumes_before
    assert ctx.domains() == domains_before


@pytest.mark.parametrize("step", ["volumes", "define", "start"])
def test_failure_in_any_create_vm_step_leaves_nothing(libvirt_pool, tmp_path, boot_stemcell, step):
    ctx = Ctx(tmp_path, "FAT32", libvirt_pool)
    sc = ctx.call("create_stemcell", str(boot_stemcell / "image"), stemcells.cloud_properties(boot_stemcell)).ok()
    try:
        volumes_before, domains_before = ctx.volumes(), ctx.domains()
        resp = ctx.call("create_vm", "agent-f", sc, {"ephemeral_disk": 16}, NET, [], {}, env={"BOSHCPI_FAIL_AT": step})
        assert resp.error_type == "Bosh::Clouds::VMCreationFailed"
        assert ctx.volumes() == volumes_before
        assert ctx.domains() == domains_before
    finally:
        ctx.call("delete_stemcell", sc).ok()


def test_libvirt_edge_cases(libvirt_pool, tmp_path):
    ctx = Ctx(tmp_path, "FAT32", libvirt_pool)
    ghost_vm = f"vm-{uuid.uuid4()}"
    ghost_disk = f"vol-p-{uuid.uuid4()}"
    assert ctx.call("has_vm", ghost_vm).ok() is False
    assert ctx.call("delete_vm", ghost_vm).ok() is None
    assert ctx.call("reboot_vm", ghost_vm).error_type == "Bosh::Clouds::VMNotFound"
    assert ctx.call("has_disk", ghost_disk).ok() is False
    assert ctx.call("delete_disk", ghost_disk).ok() is None
    assert ctx.call("resize_disk", ghost_disk, 10).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("delete_stemcell", f"img-{uuid.uuid4()}").ok() is None
    resp = ctx.call("create_vm", "a", f"img-{uuid.uuid4()}", {}, {}, [], {})
    assert resp.error_type == "Bosh::Clouds::VMCreationFailed"
    disk = ctx.call("create_disk", 16, None, None).ok()
    assert ctx.call("attach_disk", ghost_vm, disk).error_type == "Bosh::Clouds::VMNotFound"
    assert ctx.call("resize_disk", disk, 8).error_type == "Bosh::Clouds::NotSupported"
    assert ctx.call("delete_disk", disk).ok() is None
    assert ctx.call("info").ok()["stemcell_formats"] == ["openstack-qcow2", "openstack-raw"]


def test_cleanup_removes_what_a_killed_create_vm_left(libvirt_pool, tmp_path, boot_stemcell):
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    ctx = Ctx(tmp_path, "FAT32", libvirt_pool)
    sc = ctx.call("create_stemcell", str(boot_stemcell / "image"), stemcells.cloud_properties(boot_stemcell)).ok()
    try:
        before = ctx.volumes()
        proc = subprocess.Popen(
            [sys.executable, "-m", "boshcpi.cli", "cpi", "--config", str(ctx.path)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "BOSHCPI_PAUSE_AT": "start"},
        )
        proc.stdin.write(
            json.dumps(
                {
                    "method": "create_vm",
                    "arguments": ["agent-k", sc, {"ephemeral_disk": 16}, NET, [], {}],
                    "context": {},
                }
            ).encode()
        )
        proc.stdin.close()
        while b"paused at" not in proc.stderr.readline():
            assert proc.poll() is None
        proc.kill()
        proc.wait()
        leftover = [d for d in ctx.domains() if d.startswith("vm-")]
        assert leftover, "the killed call should have left a defined domain"
        out = subprocess.run(
            [sys.executable, "-m", "boshcpi.cli", "cleanup", "--config", str(ctx.path), "--older-than", "0s", "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        listed = json.loads(out.stdout)["orphans"]
        # Exactly the half-made domain: its volumes go with it, they are not orphans of their own.
        assert [(o["kind"], o["name"]) for o in listed] == [("instance", leftover[0])]
        assert ctx.volumes() != before  # dry run removed nothing
        subprocess.run(
            [
                sys.executable,
                "-m",
                "boshcpi.cli",
                "cleanup",
                "--config",
                str(ctx.path),
                "--older-than",
                "0s",
                "--apply",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        assert not [d for d in ctx.domains() if d in leftover]
        assert ctx.volumes() == before
    finally:
        ctx.call("delete_stemcell", sc).ok()


def test_doctor_on_libvirt(libvirt_pool, tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    ctx = Ctx(tmp_path, "FAT32", libvirt_pool)

    def doctor(path):
        out = subprocess.run(
            [sys.executable, "-m", "boshcpi.cli", "doctor", "--config", str(path), "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.returncode, {c["check"]: c for c in json.loads(out.stdout)}

    rc, checks = doctor(ctx.path)
    assert rc == 0, checks
    assert checks["connection"]["status"] == "OK" and checks["storage pool"]["status"] == "OK"
    assert checks["domain type"]["status"] == "OK" and checks["network"]["status"] == "OK"
    bad = json.loads(ctx.path.read_text())
    bad["libvirt"]["storage_pool_name"] = "no-such-pool"
    bad["libvirt"]["network_name"] = "no-such-net"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    rc, checks = doctor(path)
    assert rc == 1
    assert checks["storage pool"]["status"] == "FAIL" and checks["network"]["status"] == "FAIL"


def test_concurrent_attach_and_detach_on_one_domain(libvirt_pool, tmp_path, boot_stemcell):
    """Attaches and detaches on one domain from concurrent CPI processes: every disk gets its own
    target, the config drive's settings list exactly the attached disks, and no config drive is
    orphaned (libvirt versions nothing; the CPI serialises under a lock held in libvirtd)."""
    from concurrent.futures import ThreadPoolExecutor

    from boshcpi import config as cfgmod
    from boshcpi.drivers.libvirt import configdrive
    from boshcpi.drivers.libvirt.host import LibvirtHost

    ctx = Ctx(tmp_path, "CDROM", libvirt_pool)
    sc = ctx.call("create_stemcell", str(boot_stemcell / "image"), stemcells.cloud_properties(boot_stemcell)).ok()
    vm, _ = ctx.call("create_vm", "agent-race", sc, {"cpus": 1, "memory": 256}, NET, [], {}).ok()
    ctx.conn.lookupByName(vm).destroy()  # the definition is what races; no guest to wait for
    disks = [ctx.call("create_disk", 16, {}, vm).ok() for _ in range(3)]
    host = LibvirtHost(cfgmod.from_dict(ctx.config))
    try:
        for round_ in range(3):
            with ThreadPoolExecutor(3) as pool:
                for r in [pool.submit(ctx.call, "attach_disk", vm, d) for d in disks]:
                    r.result().ok()
            dom = ctx.conn.lookupByName(vm)
            targets = {d["volume"]: d["dev"] for d in host.disks(dom) if d["volume"] in disks}
            assert set(targets) == set(disks) and len(set(targets.values())) == 3, round_
            settings, _ = configdrive.read(host, dom)
            assert set(settings["disks"]["persistent"]) == set(disks), round_
            with ThreadPoolExecutor(3) as pool:
                for r in [pool.submit(ctx.call, "detach_disk", vm, d) for d in disks]:
                    r.result().ok()
            dom = ctx.conn.lookupByName(vm)
            assert not [d for d in host.disks(dom) if d["volume"] in disks], round_
            assert configdrive.read(host, dom)[0]["disks"]["persistent"] == {}, round_
            drives = [v for v in ctx.volumes() if v.startswith(f"vol-c-{vm[3:]}")]
            assert len(drives) == 1, drives  # the one the domain uses: none orphaned
        assert not [s for s in ctx.conn.listAllSecrets(0) if (s.usageID() or "").startswith("boshcpi-lock-")]
    finally:
        host.close()
        ctx.call("delete_vm", vm).ok()
        for d in disks:
            ctx.call("delete_disk", d).ok()
        ctx.call("delete_stemcell", sc).ok()
