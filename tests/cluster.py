"""A real multi-member LXD or Incus cluster on this machine, for the cluster tests.

Extra daemons with their own state directories and loopback HTTPS addresses, bootstrapped and
joined with `init --preseed` and a join token, a member-local `dir` pool, no NICs. Started and
stopped by PID; nothing else on the host is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

KINDS = {
    # kind: (daemon command, client, state dir variable, "init" command, addresses)
    "lxd": (["lxd", "--group", "root"], "lxc", "LXD_DIR", ["lxd", "init", "--preseed"], ["127.0.0.11", "127.0.0.12"]),
    "incus": (
        ["/usr/libexec/incus/incusd", "--group", "root"],
        "incus",
        "INCUS_DIR",
        ["incus", "admin", "init", "--preseed"],
        ["127.0.0.21", "127.0.0.22"],
    ),
}


@dataclass
class Cluster:
    kind: str
    root: Path
    members: list[str] = field(default_factory=list)
    pids: dict[str, int] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def env(self, member: str) -> dict[str, str]:
        return {**os.environ, KINDS[self.kind][2]: str(self.root / member)}

    def cli(self, *args: str, member: str = "m1", check: bool = True) -> str:
        proc = subprocess.run([KINDS[self.kind][1], *args], env=self.env(member), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{KINDS[self.kind][1]} {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def query(self, path: str) -> object:
        return json.loads(self.cli("query", path))

    @property
    def url(self) -> str:
        return f"https://{self.addresses['m1']}:8443"

    def server_cert(self) -> str:
        return self.query("/1.0")["environment"]["certificate"]


def _wait_ready(cluster: Cluster, member: str, timeout: float = 60) -> None:
    cmd = ["lxd", "waitready"] if cluster.kind == "lxd" else ["incus", "admin", "waitready"]
    subprocess.run([*cmd, f"--timeout={int(timeout)}"], env=cluster.env(member), check=True, capture_output=True)


def start(kind: str, members: int = 2, clustered: bool = True) -> Cluster:
    """`clustered=False` (one member): a standalone daemon on its loopback address, as a single
    host runs it."""
    daemon, _cli, _var, init, addrs = KINDS[kind]
    root = Path(f"/tmp/boshcpi-cl-{uuid.uuid4().hex[:6]}")
    root.mkdir(mode=0o700)
    cluster = Cluster(kind, root)
    try:
        for n in range(1, members + 1):
            name = f"m{n}"
            (root / name).mkdir()
            log = open(root / f"{name}.log", "w")  # noqa: SIM115 - kept open for the daemon's life
            proc = subprocess.Popen(
                [*daemon, "--logfile", str(root / f"{name}.daemon.log")],
                env=cluster.env(name),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            cluster.members.append(name)
            cluster.pids[name] = proc.pid
            cluster.addresses[name] = addrs[n - 1]
        for name in cluster.members:
            _wait_ready(cluster, name)
        preseed = {
            "config": {"core.https_address": f"{addrs[0]}:8443"},
            **({"cluster": {"server_name": "m1", "enabled": True}} if clustered else {}),
            "storage_pools": [{"name": "local", "driver": "dir"}],
            "profiles": [{"name": "default", "devices": {"root": {"path": "/", "pool": "local", "type": "disk"}}}],
        }
        subprocess.run(
            init, input=json.dumps(preseed), text=True, env=cluster.env("m1"), check=True, capture_output=True
        )
        for n, name in enumerate(cluster.members[1:], 2):
            token = cluster.cli("cluster", "add", name).strip().splitlines()[-1]
            join = {
                "cluster": {
                    "enabled": True,
                    "server_name": name,
                    "server_address": f"{addrs[n - 1]}:8443",
                    "cluster_address": f"{addrs[0]}:8443",
                    "cluster_token": token,
                    "member_config": [{"entity": "storage-pool", "name": "local", "key": "source", "value": ""}],
                }
            }
            subprocess.run(
                init, input=json.dumps(join), text=True, env=cluster.env(name), check=True, capture_output=True
            )
        return cluster
    except BaseException:
        stop(cluster)
        raise


def _launch(cluster: Cluster, name: str) -> None:
    daemon = KINDS[cluster.kind][0]
    log = open(cluster.root / f"{name}.log", "a")  # noqa: SIM115 - kept open for the daemon's life
    proc = subprocess.Popen(
        [*daemon, "--logfile", str(cluster.root / f"{name}.daemon.log")],
        env=cluster.env(name),
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    cluster.pids[name] = proc.pid


def kill_member(cluster: Cluster, name: str) -> None:
    """A member's daemon gone at once (power loss, a crash): SIGKILL, by the PID this module started."""
    os.kill(cluster.pids[name], signal.SIGKILL)
    wait_gone(cluster.pids[name], 10)


def wait_gone(pid: int, timeout: float) -> bool:
    """True once a daemon this process started has exited, reaped (it stays a zombie until then,
    and a zombie still answers kill(pid, 0)); False after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child (or already reaped): gone once kill(0) says so
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def restart_member(cluster: Cluster, name: str) -> None:
    _launch(cluster, name)
    _wait_ready(cluster, name)


def wait_member_status(cluster: Cluster, name: str, status: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            seen = cluster.query(f"/1.0/cluster/members/{name}")["status"]
        except (RuntimeError, ValueError):
            seen = "?"
        if seen == status:
            return
        time.sleep(1)
    raise AssertionError(f"member {name} is {seen}, not {status}, after {timeout}s")


def stop(cluster: Cluster) -> None:
    for name in reversed(cluster.members):
        cmd = ["lxd", "shutdown"] if cluster.kind == "lxd" else ["incus", "admin", "shutdown"]
        subprocess.run([*cmd, "--timeout=30"], env=cluster.env(name), capture_output=True, timeout=60)
    for pid in cluster.pids.values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        if not wait_gone(pid, 10):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_gone(pid, 10)
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout.split()
    for target in sorted((m for m in mounts if m.startswith(str(cluster.root))), reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    shutil.rmtree(cluster.root, ignore_errors=True)
