"""Taking over a deployment the Go libvirt CPI (a2geek/libvirt-bosh-cpi, the real binary from
../shared/tools) made on this libvirtd: it uploads a stemcell, creates and starts a VM (domain type
qemu) and a disk, and attaches the disk. Then boshcpi makes a director's next deploy on all of it
(has_vm, set_vm_metadata, detach, attach, snapshot, delete, cleanup): nothing is lost or leaked."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from boshcpi.dev import bootimage
from boshcpi.dev.tools import GoLibvirtCPI
from boshcpi.drivers.libvirt import remote as libvirt
from tests.helpers import BOSHCPI, ROOT, call, go_call, require_tool

pytestmark = pytest.mark.libvirt

NET = {
    "default": {
        "type": "manual",
        "ip": "10.245.30.90",
        "netmask": "255.255.255.0",
        "gateway": "10.245.30.1",
        "dns": ["10.245.30.1"],
        "default": ["dns", "gateway"],
        "cloud_properties": {},
    }
}


@pytest.fixture(scope="module")
def go_cpi():
    path = require_tool("go-libvirt-cpi")
    return path


@pytest.fixture(scope="module")
def go_stemcell(tmp_path_factory) -> Path:
    """A bootable raw root.img over the 100 MiB the Go CPI looks for in a stemcell's image."""
    tmp = tmp_path_factory.mktemp("go-libvirt-stemcell")
    raw = bootimage.build_disk(tmp / "root.img", tmp / "kernel", size_mb=128)
    image = tmp / "image"
    with tarfile.open(image, "w:gz", compresslevel=1) as tf:
        tf.add(raw, arcname="root.img")
    raw.unlink()
    return image


def test_takeover_of_a_go_libvirt_deployment(libvirt_pool, go_cpi, go_stemcell, tmp_path):
    conn = libvirt.open("qemu:///system")
    pool = conn.storagePoolLookupByName(libvirt_pool)

    def volumes() -> set[str]:
        pool.refresh(0)
        return set(pool.listVolumes())

    before = volumes()
    go = GoLibvirtCPI(go_cpi, libvirt_pool, tmp_path)
    props = {
        "name": "bosh-openstack-kvm-go_agent",
        "version": "1",
        "disk": 128 << 20,
        "disk_format": "raw",
        "architecture": "x86_64",
        "infrastructure": "openstack",
    }
    stemcell = go_call(go.binary, go.config, "create_stemcell", str(go_stemcell), props)
    vm = go_call(
        go.binary,
        go.config,
        "create_vm",
        "go-agent",
        stemcell,
        {"cpu": 1, "memory": 256, "ephemeral_disk": 64},
        NET,
        [],
        {},
    )
    vm = vm[0] if isinstance(vm, list) else vm
    disk = go_call(go.binary, go.config, "create_disk", 64, {}, vm)
    assert disk.startswith("pdisk-")
    go_call(go.binary, go.config, "attach_disk", vm, disk)
    dom = conn.lookupByName(vm)
    assert dom.isActive()
    uid = vm[len("vm-") :]
    assert {f"bdisk-{uid}", f"edisk-{uid}", f"cdisk-{uid}", disk} <= volumes()

    cfg = tmp_path / "cpi.json"
    cfg.write_text(
        json.dumps(
            {
                "driver": "libvirt",
                "libvirt": {
                    "uri": "qemu:///system",
                    "domain_type": "qemu",
                    "storage_pool_name": libvirt_pool,
                    "network_name": "boshcpi-test-net",
                    "console_log_dir": str(tmp_path / "console"),
                },
                "agent": {"mbus": "nats://nats:mbus-s3cret-pw@10.245.30.11:4222"},
                "agent_config": {"type": "FAT32"},
            }
        )
    )

    def cpi(method, *args):
        return call(cfg, method, *args)

    # The director's next deploy, with boshcpi.
    assert cpi("has_vm", vm).ok() is True
    assert cpi("set_vm_metadata", vm, {"deployment": "d", "name": "db/0"}).ok() is None
    assert dom.metadata(libvirt.VIR_DOMAIN_METADATA_TITLE, None, 0) == "d/db/0"
    assert cpi("get_disks", vm).ok() == [disk]
    snap = cpi("snapshot_disk", disk, {}).ok()
    assert snap in volumes()
    assert cpi("delete_snapshot", snap).ok() is None
    assert cpi("delete_snapshot", "snap-cid").ok() is None  # the Go CPI's snapshot cid: nothing to delete
    # Recreate, as the director does it: detach (the settings the Go CPI wrote, FAT32 inside an MBR
    # partition, are read as they are and rewritten without the disk), delete the VM, make a new one
    # from the same (Go) stemcell, attach the disk to it.
    assert cpi("detach_disk", vm, disk).ok() is None
    assert cpi("get_disks", vm).ok() == []
    assert cpi("delete_vm", vm).ok() is None
    # The boot clone, ephemeral disk and config drives went with the VM; the persistent disk stayed.
    assert not {f"bdisk-{uid}", f"edisk-{uid}", f"cdisk-{uid}"} & volumes() and disk in volumes()
    assert not [n for n in volumes() if n.startswith("vol-c-")]
    new_vm, _ = cpi("create_vm", "new-agent", stemcell, {"cpus": 1, "memory": 256}, NET, [disk], {}).ok()
    hint = cpi("attach_disk", new_vm, disk).ok()
    assert hint["path"].startswith("/dev/disk/by-id/virtio-p") and len(hint["path"].rsplit("-", 1)[1]) == 20
    assert cpi("get_disks", new_vm).ok() == [disk]
    assert cpi("delete_vm", new_vm).ok() is None
    out = subprocess.run(
        [*BOSHCPI, "cleanup", "--config", str(cfg), "--older-than", "0s", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert json.loads(out.stdout)["orphans"] == [], out.stderr
    assert cpi("delete_disk", disk).ok() is None
    assert cpi("delete_stemcell", stemcell).ok() is None
    assert volumes() == before
