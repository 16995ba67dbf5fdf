"""Faults against real LXD: a CPI killed (SIGKILL) inside create_vm, attach_disk, create_stemcell
and snapshot_disk; the director retries; `cleanup --apply` then leaves no orphan, no persistent disk
is lost and the data on it is intact. And a daemon restart in the middle of a call."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from boshcpi.dev import stemcells
from tests.conftest import extra_pool
from tests.helpers import ROOT, SECRETS, cpi_process
from tests.integration.test_cleanup import cleanup, killed_call
from tests.integration.test_lxd_containers import network

pytestmark = pytest.mark.lxd


def sh(ctx, vm: str, script: str) -> str:
    return ctx.cli_run("exec", vm, "--", "sh", "-c", script)


def test_killed_calls_then_retries_then_cleanup_lose_nothing(lxd, lxd_stemcell, test_stemcells):
    ctx = lxd
    volumes_before, instances_before = set(ctx.volumes()), set(ctx.instances())
    vm, _ = ctx.call("create_vm", "agent-f1", lxd_stemcell, {"ephemeral_disk": 32}, network(ctx, 61), [], {}).ok()
    disk = ctx.call("create_disk", 32, {}, vm).ok()
    hint = ctx.call("attach_disk", vm, disk).ok()
    sh(ctx, vm, f"echo survivor > {hint}/data && sync")
    ctx.call("detach_disk", vm, disk).ok()

    # create_vm killed after its instance exists; the director retries create_vm.
    killed_call(
        ctx.config_path,
        "create_vm",
        ["agent-f2", lxd_stemcell, {"ephemeral_disk": 32}, network(ctx, 62), [], {}],
        "settings",
    )
    vm2, _ = ctx.call("create_vm", "agent-f2", lxd_stemcell, {"ephemeral_disk": 32}, network(ctx, 62), [], {}).ok()
    # attach_disk killed between the device and the settings; the retry completes it.
    killed_call(ctx.config_path, "attach_disk", [vm2, disk], "attach-settings")
    hint2 = ctx.call("attach_disk", vm2, disk).ok()
    settings = json.loads(ctx.cli_run("exec", vm2, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json"))
    assert settings["disks"]["persistent"] == {disk: hint2}
    assert ctx.call("get_disks", vm2).ok() == [disk]
    # snapshot_disk killed before the snapshot; the retry takes one.
    killed_call(ctx.config_path, "snapshot_disk", [disk, {}], "snapshot")
    snap = ctx.call("snapshot_disk", disk, {}).ok()
    # create_stemcell killed after the upload, before its alias; the retry makes the stemcell.
    d = test_stemcells["warden"]
    props = {**stemcells.cloud_properties(d), "version": "6.6"}
    killed_call(ctx.config_path, "create_stemcell", [str(d / "image"), props], "alias")
    sc2 = ctx.call("create_stemcell", str(d / "image"), props).ok()

    # The retried create_vm already reclaimed the killed attempt's never-started instance (it held
    # the same IP); the cleanup finds nothing else: the retries completed what the kills left.
    assert set(ctx.instances()) - instances_before == {vm, vm2}
    applied = cleanup(ctx.config_path, "--apply")
    assert applied["orphans"] == []
    # Nothing lost: both VMs, the disk with its data and snapshot, both stemcells.
    assert set(ctx.instances()) >= {vm, vm2}
    assert sh(ctx, vm2, f"cat {hint2}/data").strip() == "survivor"
    assert ctx.call("has_disk", disk).ok() is True
    ctx.call("delete_snapshot", snap).ok()
    ctx.call("detach_disk", vm2, disk).ok()
    ctx.call("delete_disk", disk).ok()
    for v in (vm, vm2):
        ctx.call("delete_vm", v).ok()
    ctx.call("delete_stemcell", sc2).ok()
    assert set(ctx.instances()) == instances_before
    assert set(ctx.volumes()) == volumes_before


PIDFILE = Path("/var/lib/boshcpi-dev/lxd.pid")


def _lxd_pid() -> int | None:
    try:
        pid = int(PIDFILE.read_text())
        os.kill(pid, 0)
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return pid if b"lxd" in fh.read().split(b"\0")[0] else None
    except (OSError, ValueError):
        return None


def test_daemon_restart_during_a_call(lxd, tmp_path):
    """LXD goes away in the middle of an upload: the call answers a retryable CloudError, the director's
    retry succeeds, and exactly one image results."""
    if _lxd_pid() is None:
        pytest.skip("not run: no LXD daemon this test may restart (only the one scripts/host-setup.sh started)")
    ctx = lxd
    big = tmp_path / "rootfs.tar"
    with open(tmp_path / "blob", "wb") as fh:
        for _ in range(192):
            fh.write(os.urandom(1 << 20))
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(big), "blob"], check=True)
    props = {"name": "restart-test", "version": "1", "infrastructure": "warden", "disk_format": "files"}
    images_before = set(ctx.images())
    proc = cpi_process(ctx.config_path, "create_stemcell", [str(big), props])
    # Frozen the moment it reports a quarter of the upload sent: the daemon goes away mid-upload, always.
    seen = b""
    for line in proc.stderr:
        seen += line
        if b"uploading image: 25%" in line:
            proc.send_signal(signal.SIGSTOP)
            break
    assert proc.poll() is None, seen.decode()
    pid = _lxd_pid()
    os.kill(pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + 60
        while _lxd_pid() == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGCONT)
        out = proc.stdout.read()
        err = seen + proc.stderr.read()
        proc.wait(timeout=300)
    finally:
        # The daemon comes back whatever happened above: the tests after this one need it.
        subprocess.run(["bash", str(ROOT / "scripts/host-setup.sh"), "daemons"], check=True, capture_output=True)
    leaked = [x for x in SECRETS if x.encode() in out + err]
    assert not leaked, f"secret(s) {leaked} reached the CPI's output"
    doc = json.loads(out)
    assert doc["error"] is not None and doc["error"]["ok_to_retry"] is True, doc
    # The director retries: the call now succeeds, and the state is consistent: one new image.
    sc = ctx.call("create_stemcell", str(big), props).ok()
    assert len(set(ctx.images()) - images_before) == 1
    assert ctx.api(f"/1.0/images/aliases/{sc}") is not None
    ctx.call("delete_stemcell", sc).ok()
    assert set(ctx.images()) == images_before


def test_create_vm_killed_after_its_instance_started(lxd, lxd_stemcell, test_stemcells):
    """create_vm killed after the instance started (a director worker restarted): the instance is an
    interrupted attempt, not the director's VM. The director's retry with the same address reclaims it
    (never two VMs with one address, never a start refused), and without a retry `cleanup` does; then
    delete_stemcell has no leftover VM in its way."""
    ctx = lxd
    before = set(ctx.instances())
    args = ["agent-s1", lxd_stemcell, {"ephemeral_disk": 16}, network(ctx, 26), [], {}]
    for round_ in range(3):
        killed_call(ctx.config_path, "create_vm", args, "started")
        left = set(ctx.instances()) - before
        assert len(left) == 1, round_
        assert ctx.api(f"/1.0/instances/{next(iter(left))}")["status"] == "Running"
    # Each kill's retry reclaimed the attempt before it: one interrupted instance is left, and the
    # director's retry now succeeds on the same address.
    vm, _ = ctx.call("create_vm", *args).ok()
    holders = [
        i["name"]
        for i in ctx.api("/1.0/instances?recursion=1")
        if any(d.get("ipv4.address") == f"{ctx.subnet}.26" for d in i["devices"].values())
    ]
    assert holders == [vm]
    assert not ctx.api(f"/1.0/instances/{vm}")["config"].get("user.bosh.creating")  # answered: the mark is gone
    assert cleanup(ctx.config_path)["orphans"] == []  # the answered VM is the director's
    ctx.call("delete_vm", vm).ok()
    # No retry: cleanup finds the attempt and removes it, with its volumes.
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), {**stemcells.cloud_properties(d), "version": "16.1"}).ok()
    killed_call(
        ctx.config_path, "create_vm", ["agent-s2", sc, {"ephemeral_disk": 16}, network(ctx, 27), [], {}], "started"
    )
    found = cleanup(ctx.config_path, "--apply")["orphans"]
    assert [(o["kind"], o["removed"]) for o in found if o["kind"] == "instance"] == [("instance", True)]
    assert set(ctx.instances()) == before
    assert ctx.call("delete_stemcell", sc).ok() is None


@pytest.fixture(scope="module")
def lxd_pool2(lxd):
    yield from extra_pool(lxd, "f2")


# Where update_disk's move to another pool is killed, and where the disk is once the next call has
# settled it: before the copy is whole the move is undone, after it the move is finished.
POOL_MOVE_KILLS = [("pool-move-marked", "src"), ("pool-move-copy", "src"), ("pool-move-copied", "dst"),
                   ("pool-move-deleted", "dst")]  # fmt: skip


def test_a_pool_move_killed_anywhere_leaves_one_disk_with_its_data(lxd, lxd_stemcell, lxd_pool2):
    """update_disk killed at each step of a move to another pool: the next call that looks for the
    disk (has_disk here) finds exactly one volume of that name, with no move marks, in the pool the
    kill point says; the director's retry then completes the move; the data is whole each time."""
    ctx = lxd
    vm, _ = ctx.call("create_vm", "agent-pm", lxd_stemcell, {}, network(ctx, 63), [], {}).ok()
    disk = ctx.call("create_disk", 32, {}, vm).ok()
    hint = ctx.call("attach_disk", vm, disk).ok()
    sh(ctx, vm, f"head -c 3000000 /dev/urandom > {hint}/data; md5sum < {hint}/data > {hint}/sum; sync")
    ctx.call("detach_disk", vm, disk).ok()
    pools = ["boshcpi-btrfs", lxd_pool2]

    def where() -> list[tuple[str, dict]]:
        found = [(p, ctx.api(f"/1.0/storage-pools/{p}/volumes/custom/{disk}", missing_ok=True)) for p in pools]
        return [(p, v["config"]) for p, v in found if v is not None]

    src, dst = pools
    for point, ends_in in POOL_MOVE_KILLS:
        killed_call(ctx.config_path, "update_disk", [disk, 32, {"pool": dst}], point)
        assert any(k.startswith("user.bosh.moving") for _, cfg in where() for k in cfg), point  # marks left
        assert ctx.call("has_disk", disk).ok() is True
        left = where()
        assert [p for p, _ in left] == [src if ends_in == "src" else dst], point
        assert not [k for k in left[0][1] if "mov" in k], point
        assert ctx.call("update_disk", disk, 32, {"pool": dst}).ok() == disk  # the director's retry
        assert [p for p, _ in where()] == [dst], point
        assert ctx.call("attach_disk", vm, disk).ok() == hint
        assert sh(ctx, vm, f"md5sum < {hint}/data").strip() == sh(ctx, vm, f"cat {hint}/sum").strip(), point
        ctx.call("detach_disk", vm, disk).ok()
        src, dst = dst, src  # the next move goes back
    ctx.call("delete_vm", vm).ok()
    ctx.call("delete_disk", disk).ok()
    assert where() == []
    assert not [p for p in ctx.api("/1.0/profiles") if "boshcpi-lock-" in p]  # no lock left behind


@pytest.mark.parametrize("kind", ["lxd", "incus"])
def test_the_retry_of_a_create_vm_killed_at_any_moment_succeeds(request, kind, test_stemcells):
    """create_vm SIGKILLed at a random moment, then the director's retry at once with the same address,
    while the daemon may still be starting (or stopping) the killed attempt's instance: the retry waits
    for the daemon's operations on it, reclaims it, and succeeds; every time (12 rounds)."""
    import random

    ctx = request.getfixturevalue(kind)
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), {**stemcells.cloud_properties(d), "version": "29.1"}).ok()
    before = set(ctx.instances())
    rng = random.Random()
    lost = 0
    try:
        for round_ in range(12):
            args = [f"agent-k{round_}", sc, {"ephemeral_disk": 16}, network(ctx, 29), [], {}]
            proc = cpi_process(ctx.config_path, "create_vm", args)
            try:
                proc.wait(rng.uniform(0.02, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            out = proc.stdout.read()
            # An answer written before the kill is an answer (the director reads what the CPI wrote).
            answered = json.loads(out) if out.endswith(b"\n") else None
            if answered is None:
                # Killed in its last milliseconds (the daemon had done its last request, the answer was
                # not out): no CPI can tell; the VM is one the director never heard of. Counted.
                done = [
                    i["name"]
                    for i in ctx.api("/1.0/instances?recursion=1")
                    if i["config"].get("user.bosh.agent_id") == args[0] and not i["config"].get("user.bosh.creating")
                ]
                if done:
                    lost += 1
                    ctx.call("delete_vm", done[0]).ok()
            if answered is None or answered["error"] is not None:
                retry = ctx.call("create_vm", *args)
                assert retry.error is None, f"round {round_}: the retry failed: {retry.error}"
                vm = retry.result[0]
            else:
                vm = answered["result"][0]
            holders = [
                i["name"]
                for i in ctx.api("/1.0/instances?recursion=1")
                if any(x.get("ipv4.address") == f"{ctx.subnet}.29" for x in i["devices"].values())
            ]
            assert holders == [vm], f"round {round_}: {holders}"
            ctx.call("delete_vm", vm).ok()
        assert lost <= 2, f"{lost} of 12 kills landed after the call had finished: the kill times are off"
        # What a kill before the instance existed left (its ephemeral volume) is cleanup's.
        cleanup(ctx.config_path, "--apply")
        assert cleanup(ctx.config_path)["orphans"] == []
        assert set(ctx.instances()) == before
    finally:
        ctx.call("delete_stemcell", sc)


@pytest.mark.parametrize("kind", ["lxd", "incus"])
def test_two_live_create_vm_calls_for_one_address_never_take_each_others_instance(request, kind, test_stemcells):
    """Two directors (or two BOSH networks on one LXD network) ask for the same address at once: both
    attempts are live, so neither reclaims the other's instance mid-boot. Each call either gets a
    running VM that stays (never deleted by the other), or a clean VMCreationFailed that names the
    address conflict and leaves nothing (the daemon refuses to start an instance while another has
    the address, so when both instances exist at once, both calls fail)."""
    ctx = request.getfixturevalue(kind)
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), {**stemcells.cloud_properties(d), "version": "29.4"}).ok()
    before = set(ctx.instances())
    args = ["agent-twin", sc, {"ephemeral_disk": 16}, network(ctx, 30), [], {}]
    try:
        for round_ in range(6):
            procs = [cpi_process(ctx.config_path, "create_vm", args) for _ in range(2)]
            answers = []
            for p in procs:
                answers.append(json.loads(p.stdout.read()))
                p.wait(300)
            won = [a["result"][0] for a in answers if a["error"] is None]
            lost = [a["error"] for a in answers if a["error"] is not None]
            for e in lost:
                assert e["type"] == "Bosh::Clouds::VMCreationFailed" and "already defined" in e["message"], e
            for vm in won:
                assert ctx.api(f"/1.0/instances/{vm}")["status"] == "Running", f"round {round_}: {vm} was taken"
            assert set(ctx.instances()) - before == set(won), round_
            for vm in won:
                ctx.call("delete_vm", vm).ok()
    finally:
        ctx.call("delete_stemcell", sc)
