"""Cid forms and the disk scheme's names: what the agent's by-id glob needs (cloudfoundry/bosh-agent
id_device_path_resolver.go: `/dev/disk/by-id/*<disk cid>`, cids of 20+ characters, older agents
glob the first 20) and what LXD/Incus and libvirt make of device names (serials, escaping, limits)."""

import fnmatch

import pytest

from boshcpi import ids
from boshcpi.cloud import parse_vm_size
from boshcpi.drivers.libvirt import naming as lv
from boshcpi.drivers.lxd import naming as lxd
from boshcpi.protocol import CpiError


def test_vm_and_stemcell_cids_have_fixed_forms():
    vm = ids.new_vm_cid()
    assert ids.is_vm_cid(vm) and not ids.is_vm_cid("vm-1234") and not ids.is_vm_cid(vm + "/state")
    assert lxd.volume_owner(lxd.ephemeral_volume(vm)) == vm
    assert lxd.volume_owner(lxd.config_volume(vm)) == vm
    assert lxd.config_volume(vm) != lxd.config_volume(vm)
    # The Go CPI's volumes carry their own uuids: never taken for a VM's.
    assert lxd.volume_owner("vol-e-" + ids.new_id()) != vm
    assert lxd.volume_owner("vol-c-" + ids.new_id()) is None


@pytest.mark.parametrize(("server_type", "prefix"), [("lxd", "lxd_p"), ("incus", "incus_p")])
def test_lxd_disk_cid_is_the_tail_of_its_by_id_link(server_type, prefix):
    cids = {lxd.new_disk_cid(server_type) for _ in range(300)}
    assert len(cids) == 300
    for cid in cids:
        assert cid.startswith(prefix) and len(cid) == 20 and lxd.is_disk_cid(cid)
        device = lxd.persistent_device(cid, server_type)
        assert len(device) <= 16 and device.startswith("p")
        link = lxd.by_id_path(device, server_type)
        # The agent's glob, and the older agents' glob of the first 20 characters, both find it.
        assert fnmatch.fnmatch(link, f"/dev/disk/by-id/*{cid}")
        assert fnmatch.fnmatch(link, f"/dev/disk/by-id/*{cid[:20]}")
        assert link == "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_" + cid
        # Sorted after the ephemeral disk and the config drive: even /dev/sdX guesses hold.
        assert sorted([device, lxd.CONFIG_DEVICE, lxd.EPHEMERAL_DEVICE]) == [
            lxd.EPHEMERAL_DEVICE,
            lxd.CONFIG_DEVICE,
            device,
        ]


def test_lxd_legacy_and_go_disks_get_a_stable_serial():
    legacy = "vol-p-" + ids.new_id()
    assert lxd.is_disk_cid(legacy)
    device = lxd.persistent_device(legacy, "lxd")
    assert len(lxd.serial(device, "lxd")) == 20
    # The Go CPI's devices: escaped by the daemon (`-` -> `--`), still under 20 characters.
    assert lxd.by_id_path("persistent-1", "lxd") == "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_lxd_persistent--1"
    # boshcpi 0.1's 20-character devices make 24-character serials: no stable link.
    assert lxd.by_id_path("p" + "a" * 19, "lxd") is None


def test_lxd_cids_refuse_anything_else():
    for bad in ("vol-p-dead", "lxd_p" + "g" * 15, "lxd_p" + "a" * 14, "operator-data", "lxd_p" + "a" * 15 + "/x"):
        assert not lxd.is_disk_cid(bad), bad
    disk = lxd.new_disk_cid("lxd")
    snap = lxd.new_snapshot_cid(disk)
    assert lxd.split_snapshot_cid(snap) == (disk, snap.split("@")[1])
    go = "vol-p-" + ids.new_id()
    go_snap_uuid = ids.new_id()
    assert lxd.split_snapshot_cid(f"{go}_snap-{go_snap_uuid}") == (go, "snap-" + go_snap_uuid)
    assert lxd.split_snapshot_cid("vol-p-x@snap-1") is None
    assert lxd.split_snapshot_cid(disk + "@snap-" + "a" * 12 + "/x") is None


def test_lxd_guest_order_puts_root_first_and_isos_nowhere():
    devices = {
        "root": {"type": "disk", "path": "/", "pool": "p"},
        "persistent-1": {"type": "disk", "pool": "p", "source": "vol-p-1"},
        "ephemeral": {"type": "disk", "pool": "p", "source": "vol-e-1"},
        "config": {"type": "disk", "pool": "p", "source": "vol-c-1"},
        "eth0": {"type": "nic"},
    }
    assert lxd.guest_order(devices, {"vol-c-1"}) == ["root", "ephemeral", "persistent-1"]
    assert lxd.guest_order(devices, set()) == ["root", "config", "ephemeral", "persistent-1"]
    assert [lxd.sd_path(i) for i in (0, 1, 25, 26)] == ["/dev/sda", "/dev/sdb", "/dev/sdz", "/dev/sdaa"]


def test_libvirt_disk_cid_is_its_serial():
    cids = {lv.new_disk_cid() for _ in range(300)}
    assert len(cids) == 300
    for cid in cids:
        assert len(cid) == 20 and lv.is_disk_cid(cid) and lv.disk_serial(cid) == cid
        assert fnmatch.fnmatch(lv.by_id_path(lv.disk_serial(cid)), f"/dev/disk/by-id/*{cid}")
    old = "vol-p-" + ids.new_id()
    assert len(lv.disk_serial(old)) == 20
    go = "pdisk-" + ids.new_id()
    assert lv.is_disk_cid(go) and len(lv.disk_serial(go)) == 20
    assert lv.stemcell_volume("img-" + ids.new_id()).startswith("img-")
    uid = ids.new_id()
    assert lv.is_stemcell_cid(uid) and lv.stemcell_volume(uid) == "sc-" + uid
    vm = "vm-" + uid
    assert all(lv.owned_by(v, vm) for v in (vm + "-root", "bdisk-" + uid, "edisk-" + uid, "cdisk-" + uid))
    assert not lv.owned_by("pdisk-" + uid, vm) and not lv.owned_by("vol-e-" + ids.new_id(), vm)


def test_vm_size():
    s = parse_vm_size({"instance_type": "c2-m4", "ephemeral_disk": 1024})
    assert (s.cpus, s.memory_mb, s.ephemeral_mb, s.named_type) == (2, 4096, 1024, "")
    assert parse_vm_size({"instance_type": "c2-m4", "cpus": 3}).cpus == 3
    assert parse_vm_size({"ephemeral_disk": {"size": 2048}}).ephemeral_mb == 2048
    # Any other name goes to the daemon as it is (LXD knows cloud names such as t2.micro).
    assert parse_vm_size({"instance_type": "t2.micro"}).named_type == "t2.micro"
    for bad in ({"memory": -1}, {"instance_type": "c1-m99999"}, {"cpus": 10**6}, {"ephemeral_disk": 1e300}):
        with pytest.raises(CpiError):
            parse_vm_size(bad)
