"""Load: 50 mixed calls from 10 parallel processes against real LXD; at the end every object is
accounted for (what exists is exactly what the calls said they made and did not delete)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from boshcpi.dev import stemcells

pytestmark = pytest.mark.lxd


def test_fifty_mixed_calls_from_ten_workers(lxd, test_stemcells):
    ctx = lxd
    volumes_before, instances_before = set(ctx.volumes()), set(ctx.instances())
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    rng = random.Random(7)

    def worker(w: int) -> dict:
        made = {"vms": [], "disks": [], "calls": 0}
        vm = ctx.call("create_vm", f"load-{w}", sc, {"ephemeral_disk": 16}, {}, [], {}).ok()[0]
        made["vms"].append(vm)
        made["calls"] += 1
        for _ in range(4):
            op = rng.choice(["disk", "meta", "has", "snapshot"])
            if op == "disk":
                disk = ctx.call("create_disk", 16, {}, vm).ok()
                made["disks"].append(disk)
                ctx.call("attach_disk", vm, disk).ok()
                made["calls"] += 2
            elif op == "meta":
                ctx.call("set_vm_metadata", vm, {"deployment": "load", "index": str(w)}).ok()
                made["calls"] += 1
            elif op == "has":
                assert ctx.call("has_vm", vm).ok() is True
                made["calls"] += 1
            else:
                disk = ctx.call("create_disk", 16, {}, None).ok()
                made["disks"].append(disk)
                ctx.call("snapshot_disk", disk, {}).ok()
                made["calls"] += 2
        # Half the workers clean up their VM (its attached disks are only detached).
        if w % 2 == 0:
            ctx.call("delete_vm", vm).ok()
            made["vms"].remove(vm)
            made["calls"] += 1
        return made

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(worker, range(10)))
    assert sum(r["calls"] for r in results) >= 50
    vms = {v for r in results for v in r["vms"]}
    disks = {d for r in results for d in r["disks"]}
    assert set(ctx.instances()) - instances_before == vms
    assert {v for v in ctx.volumes() if v.startswith(f"{ctx.kind}_p")} - volumes_before == disks
    # Every remaining VM still has its ephemeral volume; no ephemeral volume of a deleted VM is left.
    assert {v for v in ctx.volumes() if v.startswith("vol-e-")} - volumes_before == {f"vol-e-{v[3:]}" for v in vms}
    for vm in vms:
        for disk in ctx.call("get_disks", vm).ok():
            ctx.call("detach_disk", vm, disk).ok()
        ctx.call("delete_vm", vm).ok()
    for disk in disks:
        for snap in ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}/snapshots") or []:
            ctx.call("delete_snapshot", f"{disk}@{snap.rsplit('/', 1)[-1].split('?')[0]}").ok()
        ctx.call("delete_disk", disk).ok()
    ctx.call("delete_stemcell", sc).ok()
    assert set(ctx.volumes()) == volumes_before
