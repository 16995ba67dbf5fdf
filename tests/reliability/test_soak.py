"""A chaos soak on LXD, Incus and libvirt: three director-like workers run random sequences of calls on
shared VMs and on their own disks while a killer SIGKILLs random calls at random moments; each killed
call is retried at once, as the director retries (the same arguments; a killed create_vm's retry asks
for the same address). Bounded in time (`BOSHCPI_SOAK_SECONDS`, 35 s a daemon by default).

Afterwards:
- every retry succeeded, and no call failed but for the answers a concurrent director sees too (a
  disk that another call of the same director holds: none here, each worker owns its disks);
- every disk is in exactly one place (one volume of its name, whatever pool), with the data written
  into it at the start (its checksum);
- every VM's agent settings name exactly the disks attached to it;
- the instrumented critical section of every lock (boshcpi.lease's test hook) never had two holders;
- `cleanup --apply` removes what the kills left and nothing alive, and a second `cleanup` finds nothing.
The figures (calls, kills, retries, failures) are printed per daemon.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from boshcpi.dev import stemcells
from tests.conftest import POOL, extra_pool, in_pool
from tests.helpers import ROOT, SECRETS, libvirt_config
from tests.integration.test_cleanup import cleanup
from tests.reliability.test_locks import assert_one_holder

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("BOSHCPI_SOAK_SECONDS", "35"))
KILLABLE = {
    "create_vm",
    "delete_vm",
    "attach_disk",
    "detach_disk",
    "resize_disk",
    "set_vm_metadata",
    "set_disk_metadata",
    "update_disk",
}
DATA = 256 * 1024


class Chaos:
    """Runs CPI calls as the director does, killing some at a random moment and retrying them."""

    def __init__(self, config: Path, events: Path, seed: int, finished: Any) -> None:
        """`finished(agent_id)`: the VM a killed create_vm for that agent made and answered for."""
        self.config, self.events, self.finished = config, events, finished
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.figures = {"calls": 0, "kills": 0, "retries": 0, "failures": 0, "answers lost": 0}
        self.failures: list[str] = []
        self.killed: dict[int, float] = {}  # pid -> when (monotonic)

    def _run(self, method: str, args: list, kill_after: float | None) -> tuple[dict | None, str]:
        """The response (None if killed before it answered), and what the call wrote to stderr."""
        env = {**os.environ, "BOSHCPI_TEST_FAULTS": "1", "BOSHCPI_TEST_LOCK_DIR": str(self.events)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "boshcpi.cli", "cpi", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        request = {"method": method, "arguments": args, "context": {"director_uuid": "soak"}, "api_version": 2}
        try:
            out, err = proc.communicate(json.dumps(request).encode(), timeout=kill_after or 900)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            with self.lock:
                self.killed[proc.pid] = time.monotonic()
            out, err = proc.communicate()
        for secret in SECRETS:
            assert secret.encode() not in out + err, f"secret reached the output of {method}"
        lines = [line for line in out.decode().splitlines() if line.strip()]
        if proc.returncode == -signal.SIGKILL and not (lines and out.endswith(b"\n")):
            # Killed before it answered. (Killed after writing its answer, it answered: the director
            # reads what the CPI wrote, whatever its exit, lib/cloud/external_cpi.rb.)
            return None, err.decode(errors="replace")
        assert len(lines) == 1, (method, out, err[-2000:])
        return json.loads(lines[0]), err.decode(errors="replace")

    def call(self, method: str, *args: Any, may_fail: tuple[str, ...] = ()) -> Any:
        """The call, killed at a random moment one time in four (and then retried, as often as it takes
        to get an answer); its result. An error not in `may_fail` is a failure."""
        with self.lock:
            self.figures["calls"] += 1
            kill = method in KILLABLE and self.rng.random() < 0.25
            delay = self.rng.uniform(0.01, 1.0)
        resp, stderr = self._run(method, list(args), delay if kill else None)
        while resp is None:
            with self.lock:
                self.figures["kills"] += 1
                self.figures["retries"] += 1
            finished = self.finished(args[0]) if method == "create_vm" else None
            if finished:
                # Killed in its last milliseconds, after its VM became the director's (the `creating`
                # mark cleared: the daemon had done the last request) and before the answer reached
                # stdout: the answer is lost, as it would be to a director, and the VM is one the
                # director never heard of. Never reclaimed by a retry (it may have been delivered):
                # counted, and deleted as an operator would.
                with self.lock:
                    self.figures["answers lost"] += 1
                self._run("delete_vm", [finished], None)
            resp, stderr = self._run(method, list(args), None)
        err = resp.get("error")
        if err is not None and err["type"] not in may_fail:
            with self.lock:
                self.figures["failures"] += 1
                self.failures.append(f"{method}{tuple(args)[:2]}: {err}\n{stderr[-1500:]}")
            return None
        return resp.get("result")


class LXDSide:
    """What the soak needs of LXD or Incus besides the CPI: the host-side view of a disk's data."""

    def __init__(self, ctx, pools: list[str]) -> None:
        self.ctx, self.pools = ctx, pools
        self.root = Path("/var/lib/lxd" if ctx.kind == "lxd" else "/var/lib/incus") / "storage-pools"

    def where(self, disk: str) -> list[tuple[str, Path]]:
        out = []
        for pool in self.pools:
            for v in self.ctx.api(f"/1.0/storage-pools/{pool}/volumes/custom?recursion=1", missing_ok=True) or []:
                if v["name"] == disk:
                    out.append((pool, self.root / pool / "custom" / f"{self.ctx.project}_{disk}"))
        return out

    def write(self, disk: str, data: bytes) -> None:
        [(_, path)] = self.where(disk)
        (path / "soak-data").write_bytes(data)

    def read(self, path: Path) -> bytes:
        return (path / "soak-data").read_bytes()

    def settings_disks(self, vm: str) -> set[str]:
        doc = json.loads(self.ctx.cli_run("file", "pull", f"{vm}/var/vcap/bosh/warden-cpi-agent-env.json", "-"))
        return set((doc.get("disks") or {}).get("persistent") or {})

    def ready(self, vm: str) -> None:
        pass  # a container takes a disk device at once

    def all_vms(self) -> set[str]:
        return {
            i["name"]
            for i in self.ctx.api("/1.0/instances?recursion=1")
            if (i.get("config") or {}).get("user.bosh.created_by") == "boshcpi"
        }

    def finished(self, agent_id: str) -> str | None:
        for inst in self.ctx.api("/1.0/instances?recursion=1"):
            cfg = inst.get("config") or {}
            if cfg.get("user.bosh.agent_id") == agent_id and not cfg.get("user.bosh.creating"):
                return inst["name"]
        return None


class LibvirtSide:
    def __init__(self, pool: str, config: Path, console: Path) -> None:
        from boshcpi import config as cfgmod
        from boshcpi.drivers.libvirt.cloud import LibvirtCloud

        self.pool, self.console = pool, console
        self.cloud = LibvirtCloud(cfgmod.load(str(config)))

    def where(self, disk: str) -> list[tuple[str, Path]]:
        vol = self.cloud.host.volume(disk)
        return [(self.pool, Path(vol.path()))] if vol is not None else []

    def write(self, disk: str, data: bytes) -> None:
        [(_, path)] = self.where(disk)
        with open(path, "r+b") as fh:
            fh.write(data)

    def read(self, path: Path) -> bytes:
        with open(path, "rb") as fh:
            return fh.read(DATA)

    def settings_disks(self, vm: str) -> set[str]:
        return set((self.cloud.read_settings(vm).get("disks") or {}).get("persistent") or {})

    def mine(self) -> list[Any]:
        """This run's domains: libvirt's are global, and another run may have some of its own."""
        return [d for d in self.cloud.host.all_domains() if in_pool(d, self.pool)]

    def all_vms(self) -> set[str]:
        return {d.name() for d in self.mine() if self.cloud.host.is_owned(d)}

    def finished(self, agent_id: str) -> str | None:
        for dom in self.mine():
            meta = self.cloud.host.metadata(dom) or {}
            if meta.get("agent_id") == agent_id and "creating" not in meta:
                return dom.name()
        return None

    def ready(self, vm: str) -> None:
        """Until the guest has booted (its console says so): the director hot-plugs disks only once a
        VM's agent answers, and a guest still booting ignores an unplug request."""
        log = self.console / f"{vm}.console.log"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if log.exists() and "boshcpi-test-image: done" in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise AssertionError(f"{vm} did not boot within 180s")


def soak(config: Path, side: Any, stemcell: str, nets: list[dict], events: Path, move_pools: list[str]) -> dict:
    chaos = Chaos(config, events, seed=int(time.time()), finished=side.finished)
    vms: list[str] = []
    for net in nets:
        vm, _ = chaos.call("create_vm", f"soak-{uuid.uuid4().hex}", stemcell, {"ephemeral_disk": 32}, net, [], {})
        vms.append(vm)
    for vm in vms:
        side.ready(vm)
    vm_locks = [threading.Lock() for _ in vms]  # one worker recreates a VM while no other uses it
    disks: dict[str, dict[str, Any]] = {}
    for w in range(len(nets)):
        for _ in range(2):
            disk = chaos.call("create_disk", 64, {}, vms[w])
            data = os.urandom(DATA)
            side.write(disk, data)
            disks[disk] = {"owner": w, "sum": hashlib.sha256(data).hexdigest(), "vm": None, "size": 64, "snaps": []}

    def worker(w: int) -> None:
        rng = random.Random(w * 7919 + int(time.time()))
        mine = [d for d, m in disks.items() if m["owner"] == w]
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            disk = rng.choice(mine)
            d = disks[disk]
            op = rng.choice(["attach", "detach", "resize", "snapshot", "vm_meta", "disk_meta", "move", "recreate"])
            if op == "attach" and d["vm"] is None:
                i = rng.randrange(len(vms))
                with vm_locks[i]:
                    chaos.call("attach_disk", vms[i], disk)
                    d["vm"] = i
            elif op == "detach" and d["vm"] is not None:
                i = d["vm"]
                with vm_locks[i]:
                    if d["vm"] == i:  # not detached meanwhile by the VM's recreate
                        chaos.call("detach_disk", vms[i], disk)
                        d["vm"] = None
            elif op == "resize":
                d["size"] += 16
                chaos.call("resize_disk", disk, d["size"])
            elif op == "snapshot":
                if d["snaps"] and rng.random() < 0.5:
                    chaos.call("delete_snapshot", d["snaps"].pop())
                else:
                    d["snaps"].append(chaos.call("snapshot_disk", disk, {"soak": str(w)}))
            elif op == "vm_meta":
                i = rng.randrange(len(vms))
                with vm_locks[i]:
                    chaos.call("set_vm_metadata", vms[i], {"soak": f"w{w}", "n": str(rng.random())})
            elif op == "disk_meta":
                chaos.call("set_disk_metadata", disk, {"soak": f"w{w}"})
            elif op == "move" and move_pools and d["vm"] is None and not d["snaps"]:
                chaos.call("update_disk", disk, d["size"], {"pool": rng.choice(move_pools)})
            elif op == "recreate":
                with vm_locks[w]:
                    attached = [x for x, m in disks.items() if m["vm"] == w]
                    for x in attached:  # as the director: detach before it deletes
                        chaos.call("detach_disk", vms[w], x)
                        disks[x]["vm"] = None
                    chaos.call("delete_vm", vms[w])
                    agent = f"soak-{uuid.uuid4().hex}"  # a new one per VM, as the director's
                    got = chaos.call("create_vm", agent, stemcell, {"ephemeral_disk": 32}, nets[w], [], {})
                    assert got is not None, chaos.failures
                    vms[w] = got[0]
                    side.ready(vms[w])

    errors: list[BaseException] = []

    def run(w: int) -> None:
        try:
            worker(w)
        except BaseException as e:  # a worker's own failure fails the soak
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(len(nets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    assert chaos.figures["failures"] == 0, "\n".join(chaos.failures)
    # Every disk in exactly one place, with its data.
    for disk, m in disks.items():
        places = side.where(disk)
        assert len(places) == 1, (disk, places)
        assert hashlib.sha256(side.read(places[0][1])).hexdigest() == m["sum"], f"{disk}: data changed"
    # Every VM's settings name exactly the disks attached to it.
    for i, vm in enumerate(vms):
        attached = set(chaos.call("get_disks", vm))
        assert attached == {x for x, m in disks.items() if m["vm"] == i}, (vm, attached)
        assert side.settings_disks(vm) == attached, vm
    # Never two holders of one lock.
    spans: dict[str, list] = {}
    if (events / "events").exists():
        opened: dict[str, tuple[float, int, str]] = {}
        for line in (events / "events").read_text().splitlines():
            t, what, key, token, pid = line.split()
            if what == "enter":
                opened[token] = (float(t), int(pid), key)
            else:
                start, p, k = opened.pop(token)
                spans.setdefault(k, []).append((start, float(t), p))
        for start, p, k in opened.values():
            assert p in chaos.killed, f"process {p} entered {k} and never left, and was not killed"
            spans.setdefault(k, []).append((start, chaos.killed[p], p))
    for holds in spans.values():
        assert_one_holder(sorted(holds))
    # cleanup removes what the kills left, and nothing alive.
    cleanup(config, "--apply")
    assert cleanup(config)["orphans"] == []
    for vm in vms:
        assert chaos.call("has_vm", vm) is True
    # Not a VM more than the director knows (a killed create_vm's attempt is reclaimed or cleanup's).
    assert side.all_vms() == set(vms)
    for disk in disks:
        assert chaos.call("has_disk", disk) is True
    # The end: everything goes.
    for disk, m in disks.items():
        if m["vm"] is not None:
            chaos.call("detach_disk", vms[m["vm"]], disk)
        for snap in m["snaps"]:
            chaos.call("delete_snapshot", snap)
        chaos.call("delete_disk", disk)
    for vm in vms:
        chaos.call("delete_vm", vm)
    assert chaos.figures["failures"] == 0, "\n".join(chaos.failures)
    return {**chaos.figures, "lock holds": sum(len(h) for h in spans.values())}


@pytest.mark.parametrize("kind", ["lxd", "incus"])
def test_chaos_soak_on_containers(request, kind, test_stemcells, tmp_path):
    ctx = request.getfixturevalue(kind)
    d = test_stemcells["warden"]
    sc = ctx.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    gen = extra_pool(ctx, "soak")
    other = next(gen)
    try:
        nets = [
            {
                "default": {
                    "type": "manual",
                    "ip": f"{ctx.subnet}.{140 + i}",
                    "netmask": "255.255.255.0",
                    "gateway": f"{ctx.subnet}.1",
                    "dns": [f"{ctx.subnet}.1"],
                    "default": ["dns", "gateway"],
                    "cloud_properties": {},
                }
            }
            for i in range(3)
        ]
        events = tmp_path / "events"
        events.mkdir()
        figures = soak(ctx.config_path, LXDSide(ctx, [POOL, other]), sc, nets, events, [POOL, other])
        print(f"\nsoak on {kind}: {figures}")
        assert figures["kills"] > 0
    finally:
        ctx.call("delete_stemcell", sc)
        for _ in gen:
            pass


def test_chaos_soak_on_libvirt(libvirt_pool, tmp_path):
    cfg = tmp_path / "cpi-libvirt.json"
    cfg.write_text(
        json.dumps(libvirt_config(libvirt_pool, tmp_path / "console", "FAT32", "nats://n:x@10.245.30.11:4222"))
    )
    boot = stemcells.build_boot_stemcell(Path("/var/tmp/boshcpi-stemcells"))
    from tests.helpers import call

    sc = call(cfg, "create_stemcell", str(boot / "image"), stemcells.cloud_properties(boot)).ok()
    try:
        nets = [
            {
                "default": {
                    "type": "manual",
                    "ip": f"10.245.30.{140 + i}",
                    "netmask": "255.255.255.0",
                    "gateway": "10.245.30.1",
                    "dns": ["10.245.30.1"],
                    "default": ["dns", "gateway"],
                    "cloud_properties": {},
                }
            }
            for i in range(3)
        ]
        events = tmp_path / "events"
        events.mkdir()
        figures = soak(cfg, LibvirtSide(libvirt_pool, cfg, tmp_path / "console"), sc, nets, events, [])
        print(f"\nsoak on libvirt: {figures}")
        assert figures["kills"] > 0
    finally:
        call(cfg, "delete_stemcell", sc)
