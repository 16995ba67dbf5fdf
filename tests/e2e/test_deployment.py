"""A whole deployment's call sequence as a director sends it (deploy, recreate, disk resize,
delete), against real LXD and Incus with container stemcells."""

from __future__ import annotations

import json

import pytest

from boshcpi.dev import stemcells

pytestmark = pytest.mark.lxd


def manual(ctx, last: int) -> dict:
    return {
        "default": {
            "type": "manual",
            "ip": f"{ctx.subnet}.{last}",
            "netmask": "255.255.255.0",
            "gateway": f"{ctx.subnet}.1",
            "dns": [f"{ctx.subnet}.1"],
            "default": ["dns", "gateway"],
            "cloud_properties": {},
        }
    }


def env(index: int) -> dict:
    return {
        "bosh": {
            "group": "director-pg-postgres",
            "groups": ["director", "pg", "postgres", f"postgres-{index}"],
            "password": "env-s3cret-pw",
        }
    }


def settings(ctx, vm: str) -> dict:
    return json.loads(ctx.cli_run("exec", vm, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json"))


def test_deploy_recreate_resize_delete(daemon, test_stemcells):
    ctx = daemon
    volumes_before, instances_before = set(ctx.volumes()), set(ctx.instances())
    d = test_stemcells["warden"]
    # Upload stemcell.
    sc = ctx.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    # Deploy 2 instances with persistent disks, the way the director orders it.
    props = ctx.call("calculate_vm_cloud_properties", {"cpu": 1, "ram": 1024, "ephemeral_disk_size": 512}).ok()
    instances = []
    for i in range(2):
        vm, nets = ctx.call("create_vm", f"agent-pg-{i}", sc, props, manual(ctx, 70 + i), [], env(i)).ok()
        assert ctx.call("has_vm", vm).ok() is True
        ctx.call(
            "set_vm_metadata",
            vm,
            {
                "director": "d",
                "deployment": "pg",
                "job": "postgres",
                "index": str(i),
                "id": f"uuid-{i}",
                "name": f"postgres/uuid-{i}",
            },
        ).ok()
        disk = ctx.call("create_disk", 64, {}, vm).ok()
        hint = ctx.call("attach_disk", vm, disk).ok()
        ctx.call(
            "set_disk_metadata",
            disk,
            {
                "director": "d",
                "deployment": "pg",
                "instance_group": "postgres",
                "instance_index": str(i),
                "attached_at": "2026-11-22T00:00:00Z",
            },
        ).ok()
        ctx.cli_run("exec", vm, "--", "sh", "-c", f"echo row-{i} > {hint}/db && sync")
        assert ctx.call("get_disks", vm).ok() == [disk]
        instances.append({"vm": vm, "disk": disk, "ip": nets["default"]["ip"]})

    # `bosh recreate`: detach, delete the VM, create a new one with the same IP, reattach the disk.
    for i, inst in enumerate(instances):
        ctx.call("detach_disk", inst["vm"], inst["disk"]).ok()
        ctx.call("delete_vm", inst["vm"]).ok()
        vm, _ = ctx.call("create_vm", f"agent-pg-{i}-r", sc, props, manual(ctx, 70 + i), [inst["disk"]], env(i)).ok()
        hint = ctx.call("attach_disk", vm, inst["disk"]).ok()
        assert settings(ctx, vm)["disks"]["persistent"] == {inst["disk"]: hint}
        assert ctx.cli_run("exec", vm, "--", "cat", f"{hint}/db").strip() == f"row-{i}"
        inst["vm"] = vm

    # Persistent disk size change: native resize of the detached disk.
    inst = instances[0]
    ctx.call("detach_disk", inst["vm"], inst["disk"]).ok()
    ctx.call("resize_disk", inst["disk"], 128).ok()
    hint = ctx.call("attach_disk", inst["vm"], inst["disk"]).ok()
    assert ctx.cli_run("exec", inst["vm"], "--", "cat", f"{hint}/db").strip() == "row-0"
    snap = ctx.call("snapshot_disk", inst["disk"], {"deployment": "pg"}).ok()

    # `bosh delete-deployment`, then `bosh clean-up --all`.
    for inst in instances:
        for disk in ctx.call("get_disks", inst["vm"]).ok():
            ctx.call("detach_disk", inst["vm"], disk).ok()
        ctx.call("delete_vm", inst["vm"]).ok()
    ctx.call("delete_snapshot", snap).ok()
    for inst in instances:
        ctx.call("delete_disk", inst["disk"]).ok()
    ctx.call("delete_stemcell", sc).ok()
    assert set(ctx.volumes()) == volumes_before
    assert set(ctx.instances()) == instances_before
