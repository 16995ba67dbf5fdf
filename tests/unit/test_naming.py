import pytest

from boshcpi import naming
from boshcpi.cloud import parse_vm_size
from boshcpi.protocol import CpiError


def test_cids_have_fixed_forms():
    vm = naming.new_vm_cid()
    assert naming.is_cid(vm, naming.VM_PREFIX)
    assert not naming.is_cid("vm-1234", naming.VM_PREFIX)
    assert naming.owner_of_volume(naming.ephemeral_volume(vm)) == vm
    assert naming.owner_of_volume(naming.config_volume(vm)) == vm
    assert naming.config_volume(vm) != naming.config_volume(vm)
    disk = naming.new_disk_cid()
    snap = naming.new_snapshot_cid(disk)
    assert naming.split_snapshot_cid(snap)[0] == disk
    assert naming.split_snapshot_cid("vol-p-x@snap-1") is None


def test_persistent_device_names_are_short_and_unique():
    names = {naming.persistent_device(naming.new_disk_cid()) for _ in range(200)}
    assert len(names) == 200
    assert all(len(n) == 20 for n in names)


def test_vm_size():
    s = parse_vm_size({"instance_type": "c2-m4", "ephemeral_disk": 1024})
    assert (s.cpus, s.memory_mb, s.ephemeral_mb) == (2, 4096, 1024)
    assert parse_vm_size({"instance_type": "c2-m4", "cpus": 3}).cpus == 3
    assert parse_vm_size({"ephemeral_disk": {"size": 2048}}).ephemeral_mb == 2048
    with pytest.raises(CpiError):
        parse_vm_size({"memory": -1})
