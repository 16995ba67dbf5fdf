"""Persistent disks on real LXD and Incus (btrfs pool): lifecycle across two containers, resize,
snapshots, settings rewrites, and the error paths."""

from __future__ import annotations

import json
import time

import pytest

from boshcpi.dev import stemcells
from tests.conftest import extra_pool
from tests.integration.test_lxd_containers import network

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def two_vms(daemon, test_stemcells):
    d = test_stemcells["warden"]
    sc = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    vms = [daemon.call("create_vm", f"agent-d{i}", sc, {}, network(daemon, 40 + i), [], {}).ok()[0] for i in (1, 2)]
    yield vms
    for vm in vms:
        daemon.call("delete_vm", vm)
    daemon.call("delete_stemcell", sc)


@pytest.fixture(scope="module")
def second_pool(daemon):
    yield from extra_pool(daemon, "p2")


def settings_of(ctx, vm_cid: str) -> dict:
    return json.loads(ctx.cli_run("exec", vm_cid, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json"))


def sh(ctx, vm_cid: str, script: str, check: bool = True) -> str:
    return ctx.cli_run("exec", vm_cid, "--", "sh", "-c", script, check=check)


def test_persistent_disk_lifecycle_across_two_vms(daemon, two_vms):
    ctx = daemon
    vm1, vm2 = two_vms
    disk = ctx.call("create_disk", 64, {}, vm1).ok()
    assert disk.startswith(f"{daemon.kind}_p") and len(disk) == 20
    assert ctx.call("has_disk", disk).ok() is True
    vol = ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")
    assert vol["content_type"] == "filesystem" and vol["config"]["size"] == "64MiB"
    assert ctx.call("get_disks", vm1).ok() == []

    hint = ctx.call("attach_disk", vm1, disk).ok()
    assert hint == f"/warden-cpi-dev/{disk}"
    assert ctx.call("get_disks", vm1).ok() == [disk]
    assert settings_of(ctx, vm1)["disks"]["persistent"] == {disk: hint}
    # Attaching again is harmless and answers the same hint.
    assert ctx.call("attach_disk", vm1, disk).ok() == hint
    # Write through the container.
    sh(ctx, vm1, f"echo precious-data > {hint}/file.txt && sync")

    # Delete while attached: refused, and the disk is intact.
    resp = ctx.call("delete_disk", disk)
    assert resp.error_type == "Bosh::Clouds::CloudError" and vm1 in resp.error["message"]
    assert ctx.call("has_disk", disk).ok() is True

    # Attached elsewhere: refused.
    assert ctx.call("attach_disk", vm2, disk).error_type == "Bosh::Clouds::CloudError"

    snap = ctx.call("snapshot_disk", disk, {"deployment": "cf", "instance_group": "db"}).ok()
    assert snap.startswith(disk + "@snap-")
    snaps = ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}/snapshots") or []
    assert [s for s in snaps if s.split("?")[0].endswith(snap.split("@")[1])]

    assert ctx.call("detach_disk", vm1, disk).ok() is None
    assert ctx.call("get_disks", vm1).ok() == []
    assert settings_of(ctx, vm1)["disks"]["persistent"] == {}
    assert disk in ctx.volumes()

    # Resize natively: it grows; with a snapshot it does not shrink (how much is used is unknown then),
    # and shrinks once the snapshot is gone (a container's disk size is a quota).
    assert ctx.call("resize_disk", disk, 128).ok() is None
    assert ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]["size"] == "128MiB"
    assert ctx.call("resize_disk", disk, 96).error_type == "Bosh::Clouds::NotSupported"
    assert ctx.call("delete_snapshot", snap).ok() is None
    assert ctx.call("resize_disk", disk, 96).ok() is None
    assert ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]["size"] == "96MiB"

    # Attach to the second VM: the data is still there and the new size is visible inside.
    hint2 = ctx.call("attach_disk", vm2, disk).ok()
    assert sh(ctx, vm2, f"cat {hint2}/file.txt").strip() == "precious-data"
    assert ctx.call("get_disks", vm2).ok() == [disk]
    assert settings_of(ctx, vm2)["disks"]["persistent"] == {disk: hint2}
    assert (
        ctx.call("set_disk_metadata", disk, {"deployment": "cf", "instance_group": "db", "instance_index": "0"}).ok()
        is None
    )
    assert ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]["user.bosh.deployment"] == "cf"

    assert ctx.call("delete_snapshot", snap).ok() is None
    assert ctx.call("delete_snapshot", snap).ok() is None  # idempotent
    assert sh(ctx, vm2, f"cat {hint2}/file.txt").strip() == "precious-data"

    # delete_vm detaches (never deletes) persistent disks.
    assert ctx.call("detach_disk", vm2, disk).ok() is None
    assert ctx.call("delete_disk", disk).ok() is None
    assert ctx.call("has_disk", disk).ok() is False
    assert ctx.call("delete_disk", disk).ok() is None


def test_resize_is_seen_inside_the_container(daemon, two_vms):
    ctx = daemon
    vm1, _ = two_vms
    disk = ctx.call("create_disk", 64, {}, vm1).ok()
    hint = ctx.call("attach_disk", vm1, disk).ok()
    # btrfs quota: 100 MiB does not fit in the 64 MiB disk...
    out = ctx.cli_run(
        "exec",
        vm1,
        "--",
        "sh",
        "-c",
        f"dd if=/dev/zero of={hint}/big bs=1M count=100 2>&1 && sync; echo rc=$?",
        check=False,
    )
    size = int(sh(ctx, vm1, f"stat -c %s {hint}/big").strip())
    assert size < 100 * 1024 * 1024, out
    sh(ctx, vm1, f"rm -f {hint}/big && sync")
    # ...and fits once the disk is resized.
    assert ctx.call("resize_disk", disk, 128).ok() is None
    sh(ctx, vm1, f"dd if=/dev/zero of={hint}/big bs=1M count=100 2>/dev/null && sync")
    size = int(sh(ctx, vm1, f"stat -c %s {hint}/big").strip())
    assert size == 100 * 1024 * 1024
    # Shrinking below the data: NotSupported (the director would copy), and the disk is unchanged.
    resp = ctx.call("resize_disk", disk, 64)
    assert resp.error_type == "Bosh::Clouds::NotSupported" and "would not fit" in resp.error["message"]
    vol = f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}"
    assert ctx.api(vol)["config"]["size"] == "128MiB"
    assert int(sh(ctx, vm1, f"stat -c %s {hint}/big").strip()) == 100 * 1024 * 1024
    # Once the data fits, it shrinks in place, and the smaller quota holds inside the container.
    sh(ctx, vm1, f"rm -f {hint}/big && sync")
    deadline = time.monotonic() + 30
    while (resp := ctx.call("resize_disk", disk, 32)).error and time.monotonic() < deadline:
        time.sleep(1)  # btrfs accounts the freed space at its next commit
    assert resp.ok() is None
    assert ctx.api(vol)["config"]["size"] == "32MiB"
    sh(ctx, vm1, f"dd if=/dev/zero of={hint}/big bs=1M count=40 2>/dev/null; sync", check=False)
    assert int(sh(ctx, vm1, f"stat -c %s {hint}/big").strip()) < 40 * 1024 * 1024
    ctx.call("detach_disk", vm1, disk).ok()
    ctx.call("delete_disk", disk).ok()


def test_update_disk_moves_a_detached_disk_to_another_pool(daemon, two_vms, second_pool):
    """The director's native update (`enable_cpi_update_disk`) of a disk type whose pool differs: the
    same cid, its data and snapshots, in the new pool at the new size, and nothing left in the old.
    In a container this is the only way to change a disk's type (the agent's copy cannot work there)."""
    ctx = daemon
    vm1, _ = two_vms
    disk = ctx.call("create_disk", 64, {}, vm1).ok()
    hint = ctx.call("attach_disk", vm1, disk).ok()
    sh(ctx, vm1, f"dd if=/dev/urandom of={hint}/data bs=1M count=8 2>/dev/null; md5sum <{hint}/data >{hint}/sum; sync")
    snap = ctx.call("snapshot_disk", disk, {"deployment": "d"}).ok()
    # With a snapshot, btrfs reports as used only what the snapshot does not share: a disk with
    # snapshots does not shrink (a refused btrfs shrink leaves the smaller quota: no write would
    # work again), and it keeps taking writes.
    resp = ctx.call("resize_disk", disk, 16)
    assert resp.error_type == "Bosh::Clouds::NotSupported" and "snapshot" in resp.error["message"], resp.error
    sh(ctx, vm1, f"dd if=/dev/zero of={hint}/more bs=1M count=20 2>&1 && rm {hint}/more && sync")
    old_vol = f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}"
    new_vol = f"/1.0/storage-pools/{second_pool}/volumes/custom/{disk}"

    # Attached: refused (the director detaches first), nothing moves.
    resp = ctx.call("update_disk", disk, 64, {"pool": second_pool})
    assert resp.error_type == "Bosh::Clouds::CloudError" and vm1 in resp.error["message"]
    ctx.call("detach_disk", vm1, disk).ok()
    # A pool that does not exist: the caller's mistake, said before anything moves.
    resp = ctx.call("update_disk", disk, 64, {"pool": f"{second_pool}-none"})
    assert resp.error_type == "Bosh::Clouds::CpiError" and "does not exist" in resp.error["message"], resp.error
    # A smaller size while the disk has a snapshot (btrfs then reports less in use than its quota
    # counts): NotSupported (the director falls back), before anything moves, and the disk still
    # takes writes (a refused btrfs shrink would have left its quota at 4 MiB).
    resp = ctx.call("update_disk", disk, 4, {"pool": second_pool})
    assert resp.error_type == "Bosh::Clouds::NotSupported" and "snapshot" in resp.error["message"], resp.error
    assert ctx.api(new_vol, missing_ok=True) is None
    assert ctx.api(old_vol)["config"]["size"] == "64MiB"
    assert not [k for k in ctx.api(old_vol)["config"] if "mov" in k]

    assert ctx.call("update_disk", disk, 96, {"pool": second_pool}).ok() == disk
    assert ctx.api(old_vol, missing_ok=True) is None
    moved = ctx.api(new_vol)
    assert moved["config"]["size"] == "96MiB" and moved["config"]["user.bosh.kind"] == "persistent"
    assert not [k for k in moved["config"] if "mov" in k]
    assert [s.rsplit("/", 1)[-1] for s in ctx.api(f"{new_vol}/snapshots")] == [snap.split("@", 1)[1]]
    assert ctx.call("has_disk", disk).ok() is True
    # The director attaches it again: the same hint, the device in the new pool, the data whole.
    assert ctx.call("attach_disk", vm1, disk).ok() == hint
    inst = ctx.api(f"/1.0/instances/{vm1}")
    assert [d["pool"] for d in inst["devices"].values() if d.get("source") == disk] == [second_pool]
    assert sh(ctx, vm1, f"md5sum < {hint}/data").strip() == sh(ctx, vm1, f"cat {hint}/sum").strip()
    sh(ctx, vm1, f"dd if=/dev/zero of={hint}/more bs=1M count=20 2>&1 && rm {hint}/more && sync")
    ctx.call("detach_disk", vm1, disk).ok()
    # The same update again (the director's retry) changes nothing.
    assert ctx.call("update_disk", disk, 96, {"pool": second_pool}).ok() == disk
    assert ctx.api(new_vol)["config"]["size"] == "96MiB"
    assert ctx.call("delete_snapshot", snap).ok() is None
    assert ctx.api(f"{new_vol}/snapshots") == []
    assert ctx.call("delete_disk", disk).ok() is None
    assert ctx.api(new_vol, missing_ok=True) is None


def test_delete_vm_keeps_attached_persistent_disk(daemon, test_stemcells):
    ctx = daemon
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    vm, _ = ctx.call("create_vm", "agent-keep", sc, {}, network(ctx, 45), [], {}).ok()
    disk = ctx.call("create_disk", 32, None, None).ok()  # null cloud properties and locality
    ctx.call("attach_disk", vm, disk).ok()
    assert ctx.call("delete_vm", vm).ok() is None
    assert ctx.call("has_disk", disk).ok() is True
    assert ctx.call("delete_disk", disk).ok() is None
    ctx.call("delete_stemcell", sc).ok()


def test_disk_error_paths(daemon, two_vms):
    ctx = daemon
    vm1, _ = two_vms
    ghost_vm = "vm-00000000-0000-4000-8000-000000000000"
    ghost_disk = "vol-p-00000000-0000-4000-8000-000000000000"
    disk = ctx.call("create_disk", 32, {}, vm1).ok()
    assert ctx.call("attach_disk", ghost_vm, disk).error_type == "Bosh::Clouds::VMNotFound"
    assert ctx.call("attach_disk", vm1, ghost_disk).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("detach_disk", vm1, ghost_disk).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("detach_disk", ghost_vm, disk).error_type == "Bosh::Clouds::VMNotFound"
    assert ctx.call("get_disks", ghost_vm).error_type == "Bosh::Clouds::VMNotFound"
    assert ctx.call("has_disk", ghost_disk).ok() is False
    assert ctx.call("delete_disk", ghost_disk).ok() is None
    assert ctx.call("resize_disk", ghost_disk, 64).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("snapshot_disk", ghost_disk, {}).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("set_disk_metadata", ghost_disk, {}).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("delete_snapshot", ghost_disk + "@snap-000000000000").ok() is None
    assert ctx.call("update_disk", disk, 64, {}).ok() == disk
    assert ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]["size"] == "64MiB"
    assert ctx.call("update_disk", disk, 64, {"type": "block"}).error_type == "Bosh::Clouds::NotImplemented"
    assert ctx.call("update_disk", ghost_disk, 64, {}).error_type == "Bosh::Clouds::DiskNotFound"
    assert ctx.call("create_disk", 32, {"type": "tape"}, None).error_type == "Bosh::Clouds::CpiError"
    resp = ctx.call("create_disk", 32, {"pool": "boshcpi-no-such-pool"}, None)
    assert resp.error_type == "Bosh::Clouds::CpiError" and "does not exist" in resp.error["message"]
    assert ctx.call("has_disk", disk).ok() is True
    ctx.call("delete_disk", disk).ok()


def test_concurrent_resize_and_metadata_never_write_an_old_size_back(daemon):
    """resize_disk and set_disk_metadata from concurrent CPI processes: each writes the volume only if
    it is still what it read (ETag), so after every round the disk has the new size and every tag."""
    from concurrent.futures import ThreadPoolExecutor

    disk = daemon.call("create_disk", 16, {}, None).ok()
    try:
        size = 16
        for round_ in range(6):
            size += 8
            with ThreadPoolExecutor(4) as pool:
                calls = [pool.submit(daemon.call, "resize_disk", disk, size)]
                calls += [
                    pool.submit(daemon.call, "set_disk_metadata", disk, {f"tag{round_}{i}": "v"}) for i in range(3)
                ]
                for c in calls:
                    c.result().ok()
            cfg = daemon.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]
            assert cfg["size"] == f"{size}MiB", round_
            assert all(cfg[f"user.bosh.tag{round_}{i}"] == "v" for i in range(3))
        # A smaller size after all that: the empty disk shrinks in place (its data fits).
        daemon.call("resize_disk", disk, size - 8).ok()
        cfg = daemon.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]
        assert cfg["size"] == f"{size - 8}MiB"
    finally:
        daemon.call("delete_disk", disk)


def test_concurrent_attach_and_detach_on_one_vm(daemon, two_vms):
    """Attaches and detaches on one VM from concurrent CPI processes (the director runs many): after
    every round the agent's settings list exactly the disks the instance has, none lost, none extra,
    and no call failed (no HTTP 412 turned into an error)."""
    from concurrent.futures import ThreadPoolExecutor

    vm = two_vms[0]
    disks = [daemon.call("create_disk", 16, {}, vm).ok() for _ in range(3)]
    try:
        for round_ in range(3):
            with ThreadPoolExecutor(3) as pool:
                for r in [pool.submit(daemon.call, "attach_disk", vm, d) for d in disks]:
                    r.result().ok()
            devices = {d.get("source") for d in daemon.api(f"/1.0/instances/{vm}")["devices"].values()}
            assert set(disks) <= devices, round_
            assert set(settings_of(daemon, vm)["disks"]["persistent"]) == set(disks), round_
            with ThreadPoolExecutor(3) as pool:
                for r in [pool.submit(daemon.call, "detach_disk", vm, d) for d in disks]:
                    r.result().ok()
            devices = {d.get("source") for d in daemon.api(f"/1.0/instances/{vm}")["devices"].values()}
            assert not set(disks) & devices, round_
            assert settings_of(daemon, vm)["disks"]["persistent"] == {}, round_
        assert not [p for p in daemon.api("/1.0/profiles") if "boshcpi-lock-" in p]  # every lock released
    finally:
        for d in disks:
            daemon.call("detach_disk", vm, d)
            daemon.call("delete_disk", d)
