"""Throttle: real concurrency against real LXD. Twelve CPI processes call create_vm at once with a
limit of 3, through the lease server and through the flock fallback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import ROOT, call

pytestmark = pytest.mark.lxd


def max_concurrency(trace: Path) -> int:
    events = []
    for line in trace.read_text().splitlines():
        kind, t, pid, _method = line.split()
        events.append((float(t), 0 if kind == "exit" else 1, pid))
    events.sort()
    live, peak = 0, 0
    for _t, enter, _pid in events:
        live += 1 if enter else -1
        peak = max(peak, live)
    return peak


def start_server(sock: Path, limit: int, hold: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "boshcpi.cli", "throttle", "--path", str(sock), "--limit", str(limit), "--hold", hold],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "throttle server did not start"
        time.sleep(0.05)
    return proc


def status(sock: Path) -> dict:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(b'{"op": "status"}\n')
        return json.loads(s.makefile().readline())


def run_twelve(ctx, config: Path, stemcell: str, trace: Path) -> list:
    env = {"BOSHCPI_THROTTLE_TRACE": str(trace)}
    with ThreadPoolExecutor(12) as pool:
        futures = [
            pool.submit(call, config, "create_vm", f"agent-t{i}", stemcell, {}, {}, [], {}, env=env) for i in range(12)
        ]
        results = [f.result() for f in futures]
    vms = [r.ok()[0] for r in results]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda vm: call(config, "delete_vm", vm).ok(), vms))
    return results


def test_lease_server_caps_concurrent_create_vm(lxd, lxd_stemcell, tmp_path):
    sock = tmp_path / "throttle.sock"
    server = start_server(sock, 3, "2m")
    try:
        assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
        config = lxd.write_config(throttle_config={"enabled": True, "path": str(sock), "limit": 3})
        trace = tmp_path / "trace"
        results = run_twelve(lxd, config, lxd_stemcell, trace)
        assert len(results) == 12 and all(r.error is None for r in results)
        assert max_concurrency(trace) == 3
        assert not any("flock fallback" in r.stderr or "not reachable" in r.stderr for r in results)
    finally:
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=30)[1]
    assert server.returncode == 0
    # 12 create_vm and 12 delete_vm: both are heavy calls.
    assert out.count("granted L") == 24 and out.count("released L") == 24
    assert not sock.exists()


def test_flock_fallback_enforces_the_same_limit(lxd, lxd_stemcell, tmp_path):
    sock = tmp_path / "nobody-listens.sock"
    config = lxd.write_config(throttle_config={"enabled": True, "path": str(sock), "limit": 3})
    trace = tmp_path / "trace"
    results = run_twelve(lxd, config, lxd_stemcell, trace)
    assert all(r.error is None for r in results)
    assert max_concurrency(trace) == 3
    assert all("using flock slots" in r.stderr for r in results)


def paused_holder(config: Path, args: list) -> subprocess.Popen:
    """A create_vm CPI process that holds its lease and waits at its `instance` step to be killed."""
    holder = subprocess.Popen(
        [sys.executable, "-m", "boshcpi.cli", "cpi", "--config", str(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "BOSHCPI_PAUSE_AT": "instance"},
    )
    holder.stdin.write(json.dumps({"method": "create_vm", "arguments": args, "context": {}}).encode())
    holder.stdin.close()
    for line in holder.stderr:
        if b"paused at instance" in line:
            break
    return holder


def test_killed_holder_releases_its_lease(lxd, lxd_stemcell, tmp_path):
    sock = tmp_path / "throttle.sock"
    server = start_server(sock, 1, "20s")
    try:
        config = lxd.write_config(throttle_config={"enabled": True, "path": str(sock), "limit": 1})
        # Killed once it holds the lease and has made its ephemeral volume (it says "paused at").
        holder = paused_holder(config, ["agent-k", lxd_stemcell, {"ephemeral_disk": 32}, {}, [], {}])
        assert len(status(sock)["active"]) == 1
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 20
        while status(sock)["active"]:
            assert time.monotonic() < deadline, "lease not released within hold"
            time.sleep(0.1)
        # The next caller gets the lease at once.
        start = time.monotonic()
        disk = call(config, "create_disk", 16, {}, None).ok()
        assert time.monotonic() - start < 10
        call(config, "delete_disk", disk).ok()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    # The killed create_vm left an ephemeral volume: cleanup finds and removes exactly that.
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
            "--apply",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    removed = json.loads(out.stdout)["orphans"]
    assert [o["kind"] for o in removed] == ["ephemeral-volume"]
    assert all(o["removed"] for o in removed)


def test_hold_reclaims_a_hung_lease(tmp_path):
    import socket

    sock = tmp_path / "throttle.sock"
    server = start_server(sock, 1, "1s")
    try:
        hung = socket.socket(socket.AF_UNIX)
        hung.connect(str(sock))
        hung.sendall(b'{"op": "acquire", "id": "hung"}\n')
        assert json.loads(hung.makefile().readline())["granted"] is True
        waiter = socket.socket(socket.AF_UNIX)
        waiter.connect(str(sock))
        waiter.sendall(b'{"op": "acquire", "id": "next"}\n')
        waiter.settimeout(10)
        start = time.monotonic()
        reply = json.loads(waiter.makefile().readline())
        assert reply["granted"] is True
        assert 0.5 < time.monotonic() - start < 5
        hung.close()
        waiter.close()
    finally:
        server.send_signal(signal.SIGTERM)
        err = server.communicate(timeout=30)[1]
    assert "reclaimed (hold exceeded)" in err


def test_a_lease_is_renewed_while_its_call_runs(lxd, lxd_stemcell, tmp_path):
    """A call that outlasts the hold (a large create_stemcell, a slow create_vm) keeps its lease: the
    CPI renews it every third of the hold, so the limit keeps holding. Killed, it frees it at once."""
    sock = tmp_path / "throttle.sock"
    server = start_server(sock, 1, "1s")
    holder = None
    try:
        config = lxd.write_config(throttle_config={"enabled": True, "path": str(sock), "limit": 1})
        holder = paused_holder(config, ["agent-r", lxd_stemcell, {}, {}, [], {}])
        time.sleep(4)  # four holds
        active = status(sock)["active"]
        assert len(active) == 1 and active[0]["held"] > 3.5 and "create_vm" in active[0]["client"]
        holder.kill()
        holder.wait()
        deadline = time.monotonic() + 5
        while status(sock)["active"]:
            assert time.monotonic() < deadline, "lease not released"
            time.sleep(0.1)
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        server.send_signal(signal.SIGTERM)
        err = server.communicate(timeout=30)[1]
    assert "reclaimed (hold exceeded)" not in err
