"""One holder per lock, on LXD, Incus and libvirt (boshcpi.lease over each driver's store), proven with
real processes (tests/lockworker.py) racing on real daemons, many rounds each. Every entry and exit of
the critical section is recorded (the lease's test hook); no two intervals of one key ever overlap.

- a stale lock (its holder's process is gone, or its record too old by the daemon's clock, or left
  unrenewed by a holder elsewhere) raced for by six processes at once: exactly one takes it over at a
  time, every time;
- a hold four times longer than the TTL, while two others wait: renewed, never taken over, and its
  release deletes only its own gate (the next holder's stays);
- a holder SIGKILLed inside: the next waiter takes over at once, not after the TTL;
- a killed taker's claim never blocks the lock for good, and `cleanup` removes what a kill left.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from boshcpi import lease
from tests.helpers import ROOT, libvirt_config
from tests.integration.test_cleanup import cleanup

pytestmark = pytest.mark.slow


@pytest.fixture(params=["lxd", "incus", "libvirt"])
def store(request, tmp_path):
    """(config path, a function reading a lock object's record, one planting one) for one daemon."""
    if request.param == "libvirt":
        pool = request.getfixturevalue("libvirt_pool")
        cfg = tmp_path / "cpi-libvirt.json"
        cfg.write_text(json.dumps(libvirt_config(pool, tmp_path / "console", "CDROM", "https://mbus:x@0.0.0.0:6868")))
        from boshcpi import config
        from boshcpi.drivers.libvirt import locks
        from boshcpi.drivers.libvirt.host import LibvirtHost

        host = LibvirtHost(config.load(str(cfg)))
        yield cfg, locks.SecretStore(host)
        host.close()
    else:
        ctx = request.getfixturevalue(request.param)
        from boshcpi import config
        from boshcpi.drivers.lxd import locks
        from boshcpi.drivers.lxd.host import connect

        client = connect(config.load(str(ctx.config_path)))
        yield ctx.config_path, locks.ProfileStore(client)
        client.close()


def run_workers(cfg: Path, key: str, n: int, rounds: int, hold: float, ttl: float, events: Path, **kw):
    start_at = time.monotonic() + kw.get("delay", 1.5)
    env = {**os.environ, "BOSHCPI_TEST_FAULTS": "1", "BOSHCPI_TEST_LOCK_DIR": str(events)}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "tests.lockworker", str(cfg), key, str(rounds), str(hold), str(ttl), str(start_at)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def finish(procs: list[subprocess.Popen], timeout: float = 240) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0 and out.startswith("ok"), err[-3000:]


def intervals(events: Path, key: str, killed: dict[int, float] | None = None) -> list[tuple[float, float, int]]:
    """(enter, exit, pid) of every hold of `key`; a killed holder's ends when it was killed."""
    opened: dict[str, tuple[float, int]] = {}
    out = []
    for line in (events / "events").read_text().splitlines():
        t, what, k, token, pid = line.split()
        if k != key:
            continue
        if what == "enter":
            opened[token] = (float(t), int(pid))
        else:
            start, p = opened.pop(token)
            out.append((start, float(t), p))
    for start, p in opened.values():
        assert killed and p in killed, f"process {p} entered and never left, and was not killed"
        out.append((start, killed[p], p))
    return sorted(out)


def assert_one_holder(spans: list[tuple[float, float, int]]) -> None:
    for (s1, e1, p1), (s2, _, p2) in itertools.pairwise(spans):
        assert s2 >= e1, f"two holders at once: {p1} held {s1:.3f}-{e1:.3f}, {p2} entered at {s2:.3f}"


def dead_identity() -> str:
    """The identity of a process of this machine that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    boot, ns, _, _ = lease.identity().split("/")
    return f"{boot}/{ns}/{proc.pid}/1"


def test_six_processes_race_for_a_stale_lock_and_only_one_holds_it(store, tmp_path):
    cfg, st = store
    events = tmp_path / "events-dir"
    events.mkdir()
    key = f"race-{uuid.uuid4().hex[:8]}"
    gate = "boshcpi-lock-" + key
    # Each round starts from a stale lock of another kind: a holder of this machine that is gone; a
    # holder elsewhere (an identity of another machine) whose record is old by the daemon's clock (LXD
    # and Incus keep the daemon's time in it) or, on libvirt, that nobody renews.
    foreign = "0" * 32 + "/4026531836/1/1"
    assert st.read(gate) is None  # (an answer with the daemon's Date, on LXD and Incus)
    now = st.daemon_time()
    old = f"{now - 600:.0f}" if now is not None else "?"
    stale_records = [
        f"{lease.MARK} {'a' * 16} {dead_identity()} 120 ? killed-call",
        f"{lease.MARK} {'b' * 16} {foreign} 3 {old} elsewhere",
        f"{lease.MARK} {'c' * 16} {dead_identity()} 120 ? killed-call",
    ]
    for n, record in enumerate(stale_records):
        assert st.create(gate, record)
        procs = run_workers(cfg, key, 6, 4, 0.05, 120, events)
        finish(procs)
        spans = intervals(events, key)
        assert len(spans) == 24 * (n + 1)
        assert_one_holder(spans)
        assert st.read(gate) is None, "the last holder released its lock"
    assert not [o for o in cleanup(cfg)["orphans"] if o["kind"] == "lock"]


def test_a_hold_longer_than_the_ttl_is_renewed_and_its_release_frees_only_its_own(store, tmp_path):
    cfg, st = store
    events = tmp_path / "events-dir"
    events.mkdir()
    key = f"long-{uuid.uuid4().hex[:8]}"
    # One process holds for 12 s with a TTL of 3 s (renewed each second); two wait meanwhile and then
    # hold in turn. Without renewal a waiter would take the lock over after 3 s.
    long = run_workers(cfg, key, 1, 1, 12.0, 3.0, events, delay=0.5)
    time.sleep(3.0)
    waiters = run_workers(cfg, key, 2, 2, 0.5, 3.0, events, delay=0.0)
    finish(long + waiters)
    spans = intervals(events, key)
    assert len(spans) == 5
    assert_one_holder(spans)
    first = spans[0]
    assert first[1] - first[0] >= 12.0 and first[2] == long[0].pid
    assert st.read("boshcpi-lock-" + key) is None


def test_a_killed_holder_is_taken_over_at_once_and_nothing_is_left(store, tmp_path):
    cfg, st = store
    events = tmp_path / "events-dir"
    events.mkdir()
    key = f"kill-{uuid.uuid4().hex[:8]}"
    holder = run_workers(cfg, key, 1, 1, 60.0, 120, events, delay=0.2)[0]
    deadline = time.monotonic() + 30
    while not (events / "events").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    waiter = run_workers(cfg, key, 1, 1, 0.1, 120, events, delay=0.0)
    time.sleep(1.0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed_at = time.monotonic()
    finish(waiter, timeout=60)
    spans = intervals(events, key, {holder.pid: killed_at})
    assert_one_holder(spans)
    assert spans[-1][0] - killed_at < 10, "the waiter took over long after the holder was gone"
    # A taker killed holding its claim: the claim is passed over, and cleanup removes it.
    gate = "boshcpi-lock-" + key
    token = "d" * 16
    assert st.create(gate, f"{lease.MARK} {token} {dead_identity()} 120 ? killed-call")
    assert st.create(lease.claim_name(gate, token, 1), f"{lease.MARK} {'e' * 16} {dead_identity()} 120 ? claim")
    finish(run_workers(cfg, key, 2, 1, 0.05, 120, events, delay=0.5), timeout=60)
    assert st.read(gate) is None
    assert st.read(lease.claim_name(gate, token, 1)) is None, "the taker that passed it over removed it"
    # What a kill leaves where nobody takes the lock again: cleanup finds it, and only it.
    left = lease.claim_name("boshcpi-lock-" + key + "-gone", "f" * 16, 1)
    assert st.create(left, f"{lease.MARK} {'e' * 16} {dead_identity()} 120 ? claim")
    found = {o["name"] for o in cleanup(cfg)["orphans"] if o["kind"] == "lock"}
    assert found == {left}
    cleanup(cfg, "--apply")
    assert st.read(left) is None
