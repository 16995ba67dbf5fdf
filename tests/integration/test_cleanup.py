"""cleanup against real LXD and Incus: orphans made for real by killing CPI calls midway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from boshcpi.dev import stemcells
from tests.helpers import ROOT, SECRETS

pytestmark = pytest.mark.lxd


def killed_call(config, method: str, args: list, pause_at: str) -> None:
    """Run a CPI call, wait until it reaches `pause_at`, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "boshcpi.cli", "cpi", "--config", str(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "BOSHCPI_PAUSE_AT": pause_at},
    )
    proc.stdin.write(json.dumps({"method": method, "arguments": args, "context": {}}).encode())
    proc.stdin.close()
    line = seen = b""
    deadline = time.monotonic() + 60
    while b"paused at" not in line:
        assert time.monotonic() < deadline, "call never reached the pause point"
        line = proc.stderr.readline()
        seen += line
        assert line or proc.poll() is None, "call ended before the pause point"
    proc.kill()
    proc.wait()
    # Every CPI call of every suite is checked for leaked secrets: these too, up to the kill.
    seen += proc.stderr.read() + proc.stdout.read()
    leaked = [x for x in SECRETS if x.encode() in seen]
    assert not leaked, f"secret(s) {leaked} reached the CPI's output"


def cleanup(config, *flags: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "boshcpi.cli",
            "cleanup",
            "--config",
            str(config),
            "--older-than",
            "0s",
            "--json",
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_cleanup_finds_and_removes_exactly_the_orphans(daemon, test_stemcells):
    ctx = daemon
    warden = test_stemcells["warden"]
    vm_sc = test_stemcells["vm-qcow2"]
    # Legitimate objects that must survive.
    sc = ctx.call("create_stemcell", str(warden / "image"), stemcells.cloud_properties(warden)).ok()
    live_vm, _ = ctx.call("create_vm", "agent-live", sc, {"ephemeral_disk": 32}, {}, [], {}).ok()
    disk = ctx.call("create_disk", 32, {}, None).ok()
    snap = ctx.call("snapshot_disk", disk, {}).ok()
    foreign_vol = f"foreign-{ctx.project[-6:]}"
    ctx.cli_run("storage", "volume", "create", "boshcpi-btrfs", foreign_vol, "size=8MiB")

    # Orphans, made for real.
    killed_call(ctx.config_path, "create_vm", ["agent-k1", sc, {"ephemeral_disk": 32}, {}, [], {}], "settings")
    vm_cid = ctx.call("create_stemcell", str(vm_sc / "image"), stemcells.cloud_properties(vm_sc)).ok()
    killed_call(ctx.config_path, "create_vm", ["agent-k2", vm_cid, {"ephemeral_disk": 32}, {}, [], {}], "instance")
    props = {**stemcells.cloud_properties(warden), "version": "7.7"}
    killed_call(ctx.config_path, "create_stemcell", [str(warden / "image"), props], "alias")

    volumes_before, instances_before = set(ctx.volumes()), set(ctx.instances())
    images_before = set(ctx.images())
    listed = cleanup(ctx.config_path)
    kinds = sorted(o["kind"] for o in listed["orphans"])
    # The never-started container's ephemeral volume goes with the instance; the VM attempt left a
    # config drive and an ephemeral volume with no instance at all.
    assert kinds == ["config-volume", "ephemeral-volume", "image", "instance"], listed
    assert not any(o["removed"] for o in listed["orphans"])
    # Dry run removed nothing.
    assert set(ctx.volumes()) == volumes_before and set(ctx.instances()) == instances_before
    assert set(ctx.images()) == images_before

    applied = cleanup(ctx.config_path, "--apply")
    assert all(o["removed"] for o in applied["orphans"])
    names = {o["name"] for o in applied["orphans"]}
    orphan_vm = next(o["name"] for o in applied["orphans"] if o["kind"] == "instance")
    # A config drive goes with its readable copy (`-b`, where the daemon has iso volumes).
    copies = {f"{n}-b" for n in names}
    assert set(ctx.volumes()) == volumes_before - names - copies - {f"vol-e-{orphan_vm[3:]}"}
    assert set(ctx.instances()) == instances_before - names
    assert set(ctx.images()) == images_before - names
    # Survivors: the live VM and its ephemeral disk, the persistent disk and its snapshot, the
    # stemcells, and the foreign volume.
    assert disk in ctx.volumes() and foreign_vol in ctx.volumes()
    assert f"vol-e-{live_vm[3:]}" in ctx.volumes()
    assert ctx.call("has_disk", disk).ok() is True
    assert cleanup(ctx.config_path)["orphans"] == []

    ctx.call("delete_snapshot", snap).ok()
    ctx.call("delete_disk", disk).ok()
    ctx.call("delete_vm", live_vm).ok()
    ctx.call("delete_stemcell", sc).ok()
    ctx.call("delete_stemcell", vm_cid).ok()
    ctx.cli_run("storage", "volume", "delete", "boshcpi-btrfs", foreign_vol)
