"""A container deployment's long life, with the real bosh-agent and Debian's monit inside a boshcpi
container made from the stemcell-like agent image (boshcpi.dev.agentimage), on a private LXD 5.0 and
Incus 6.0 daemon this module starts and stops by PID (tests/cluster.py): the only daemon a test may
restart, shut down or kill.

The agent is driven over its HTTPS mbus as the director drives it (tests/agentclient.py), reached
through a proxy device on loopback (the private daemon has no bridge): attach_disk + mount_disk,
then a job installed with upload_blob + apply + start whose process refuses to start unless
/var/vcap/store is mounted. Then the container goes through what a single host meets:

- reboot_vm (the director's cloud check);
- the daemon restarted (a package upgrade): the containers keep running;
- the host rebooted: the daemon shuts down and stops its containers, and starts them again at boot;
- power loss: the daemon and the container's processes are killed outright, and the daemon starts
  the instances that were running.

After each, the agent's own get_state must show the job's process running and list_disk the disk,
and a file written to the store before is read back (`mountpoint` and the file, by exec).
lxcfs runs on this host (`make host`), so the same get_state shows what the agent reports under it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import agentimage, stemcells
from boshcpi.drivers.lxd.hostinit import generate_cert
from tests import cluster as cl
from tests.agentclient import AgentError
from tests.containerguest import JOB, PASSWORD, Guest
from tests.helpers import call, require_tool

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BTRFS_POOL = "b1"


@pytest.fixture(scope="module", params=["lxd", "incus"])
def private(request, tmp_path_factory):
    agent = require_tool("bosh-agent")
    image = agentimage.container_stemcell(agent, stemcell_like=True)
    d = cl.start(request.param, members=1, clustered=False)
    try:
        tmp = tmp_path_factory.mktemp(f"life-{request.param}")
        crt, key = generate_cert(str(tmp / "cert"), name="boshcpi-life-test")
        d.cli("config", "trust", "add", crt) if d.kind == "lxd" else d.cli("config", "trust", "add-certificate", crt)
        cfg = {
            "server": {
                "type": d.kind,
                "url": d.url,
                "tls_server_cert": d.server_cert(),
                "tls_client_cert": Path(crt).read_text(),
                "tls_client_key": Path(key).read_text(),
                "storage_pool_name": "local",
                "network_name": "none",
            },
            "agent": {
                "mbus": f"https://mbus:{PASSWORD}@0.0.0.0:6868",
                "blobstore": {"provider": "local", "options": {"blobstore_path": "/var/vcap/data/blobs"}},
            },
        }
        config = tmp / "cpi.json"
        config.write_text(json.dumps(cfg))
        stemcell = call(config, "create_stemcell", str(image / "image"), stemcells.cloud_properties(image)).ok()
        # A second pool of another driver, for a disk's pool move (`local` is a dir pool).
        d.cli("storage", "create", BTRFS_POOL, "btrfs", "size=1GiB")
        yield d, config, tmp, stemcell
    finally:
        cl.stop(d)


def check_figures_under_lxcfs(g: Guest, state: dict) -> None:
    """What the agent reports with lxcfs on (boshcpi.agent.containerboot explains the figures)."""
    assert Path("/var/lib/lxcfs/proc/uptime").exists(), "lxcfs is not running on this host (make host starts it)"
    mounts = g.sh("cat /proc/self/mounts")
    # lxcfs serves the container its own meminfo; boshcpi's boot hook took its /proc/uptime away.
    assert any(line.split()[1] == "/proc/meminfo" and "lxcfs" in line for line in mounts.splitlines()), mounts
    assert not any(line.split()[1] == "/proc/uptime" for line in mounts.splitlines()), mounts
    # A process uptime from monit: never negative, never longer than the container has run (under
    # lxcfs's /proc/uptime it would be short by the host's uptime at the container's start).
    age = _age(g.init_pid())
    proc_uptime = state["processes"][0].get("uptime", {}).get("secs", 0)
    assert 0 <= proc_uptime <= age + 5, (proc_uptime, age)
    # The agent's vitals: uptime is sysinfo(2)'s, the host's (lxcfs does not change it); memory is
    # lxcfs's meminfo, the container's 1024 MiB limit.
    host_uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert abs(state["vitals"]["uptime"]["secs"] - host_uptime) < 120, state["vitals"]
    assert 0 < int(state["vitals"]["mem"]["kb"]) <= 1024 * 1024, state["vitals"]


def _age(pid: int) -> float:
    """Seconds since a host process started, by the host's clock (/proc/<pid>/stat field 22)."""
    with open(f"/proc/{pid}/stat") as fh:
        start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    return float(Path("/proc/uptime").read_text().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")


def restart_daemon(d: cl.Cluster, how: str) -> None:
    """`restart`: SIGTERM, the containers keep running (a package upgrade). `reboot`: the daemon's own
    shutdown stops its instances, as at a host shutdown. `power-loss`: the daemon and every process of
    its containers SIGKILLed. Then the daemon starts again, as at boot."""
    pid = d.pids["m1"]
    if how == "reboot":
        cmd = ["lxd", "shutdown"] if d.kind == "lxd" else ["incus", "admin", "shutdown"]
        subprocess.run([*cmd, "--timeout=60"], env=d.env("m1"), check=True, capture_output=True, timeout=90)
    elif how == "power-loss":
        monitors = _container_monitors(d)
        os.kill(pid, signal.SIGKILL)
        _all_gone([p for mon in monitors for p in _kill_tree(mon)])
    else:
        os.kill(pid, signal.SIGTERM)
    assert cl.wait_gone(pid, 90), f"daemon {pid} still there after 90s"
    cl.restart_member(d, "m1")


def _container_monitors(d: cl.Cluster) -> list[int]:
    """The `[lxc monitor]` process of each running container (the parent of its init)."""
    out = []
    for inst in d.query("/1.0/instances?recursion=2") or []:
        init = (inst.get("state") or {}).get("pid") or 0
        if init > 0:
            with open(f"/proc/{init}/stat") as fh:
                out.append(int(fh.read().rsplit(")", 1)[1].split()[1]))
    return out


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants, each stopped first so that none forks past us."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return []
    killed = [pid]
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        killed += _kill_tree(int(child))
    os.kill(pid, signal.SIGKILL)
    return killed


def _all_gone(pids: list[int], timeout: float = 30) -> None:
    """Until every killed process has been reaped: a daemon that starts while a container's processes
    are still dying sees it running, and the container boots once more after the test looked."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if Path(f"/proc/{p}").exists()]
        time.sleep(0.1)
    assert not left, f"processes {left} outlived SIGKILL by {timeout}s"


def test_the_store_and_the_jobs_come_back_after_every_kind_of_restart(private):
    daemon, config, tmp, stemcell = private
    g = Guest(daemon, config, tmp)
    disks: list[str] = []
    try:
        g.create(stemcell)
        disk = g.call("create_disk", 256, {}, g.vm).ok()
        disks.append(disk)
        hint = g.call("attach_disk", g.vm, disk).ok()
        assert hint == f"/warden-cpi-dev/{disk}"
        g.agent.call("mount_disk", disk)
        token = uuid.uuid4().hex
        g.sh(f"echo {token} > /var/vcap/store/token")
        g.install_job()
        first = g.state()
        assert g.agent.call("list_disk") == [disk]
        assert first["processes"][0]["name"] == JOB

        for how in ("reboot_vm", "restart", "reboot", "power-loss"):
            before, starts = g.init_pid(), g.starts()
            if how == "reboot_vm":
                assert g.call("reboot_vm", g.vm).ok() is None
            else:
                restart_daemon(daemon, how)
            g.agent.wait_ready(300)
            state = g.state()
            # Only the daemon restart keeps the container running; everything else booted it anew,
            # and monit started the job again, with the store in place (its ctl refuses otherwise).
            rebooted = how != "restart"
            assert (g.init_pid() != before) == rebooted, how
            assert (g.starts() > starts) == rebooted, how
            assert g.sh("mountpoint -q /var/vcap/store && cat /var/vcap/store/token").strip() == token, how
            assert g.agent.call("list_disk") == [disk], how
            assert {p["name"]: p["state"] for p in state["processes"]} == {JOB: "running"}, how
        booted = g.init_pid()
        try:
            check_figures_under_lxcfs(g, state)
        except AssertionError as e:
            now = g.init_pid()
            raise AssertionError(f"{e}\n(container init pid {booted} when the check began, {now} now)") from None
        assert g.init_pid() == booted, "the container rebooted while the test looked"

        # The director's disk copy (a change of disk cloud properties, or a size resize_disk cannot
        # reach): a new disk beside the old, mount_disk (onto /var/vcap/store_migration_target), then
        # migrate_disk. A container's agent cannot finish it: after the copy it remounts the new disk by
        # the device `mount` shows for it, which the daemon's own mount of the disk shows too
        # (README "Containers: reboots, lxcfs, disk changes, nested containers", with the agent's file:line).
        new = g.call("create_disk", 256, {}, g.vm).ok()
        disks.append(new)
        g.call("attach_disk", g.vm, new).ok()
        g.agent.call("mount_disk", new)
        with pytest.raises(AgentError, match=r"Remounting new disk on original mountpoint: .* already mounted to"):
            g.agent.call("migrate_disk")
        # Nothing is lost: the old disk still holds its data, and the copy reached the new one.
        assert g.sh(f"cat /warden-cpi-dev/{disk}/token").strip() == token
        assert g.sh(f"cat /warden-cpi-dev/{new}/token").strip() == token
    finally:
        if g.vm:
            g.call("delete_vm", g.vm)
        for d in disks:
            g.call("delete_disk", d)


def store_mounts(g: Guest, disk: str) -> dict[str, list[str]]:
    """Where the container has the disk's volume mounted, read from its /proc/self/mountinfo: the
    daemon's device mount, and every other mount of the same filesystem and root (the agent's binds);
    and what is mounted on the store and on the migration target, whatever it is."""
    lines = [line.split() for line in g.sh("cat /proc/self/mountinfo").splitlines()]
    device = f"/warden-cpi-dev/{disk}"
    ident = next(((f[2], f[3]) for f in lines if f[4] == device), None)
    assert ident is not None, f"{device} is not mounted in the container"
    return {
        "volume": [f[4] for f in lines if (f[2], f[3]) == ident and f[4] != device],
        "store": [f[4] for f in lines if f[4] == "/var/vcap/store"],
        "migration": [f[4] for f in lines if f[4] == "/var/vcap/store_migration_target"],
    }


def test_disk_changes_in_a_row_keep_one_mount_of_the_store(private):
    """The director's disk changes in a container, each as cloudfoundry/bosh `disk_manager.rb` makes
    it (jobs stopped, the agent's `unmount_disk`, then `detach_disk`, the change, `attach_disk`, the
    agent's `mount_disk`, jobs started): a native resize, a pool move (update_disk), a resize again.
    After each: the disk mounted exactly once, on /var/vcap/store, nothing on the migration target,
    the data there, the job started once more from its counter, and the agent's `list_disk` right.
    A detach while a process uses the store is refused, and leaves the disk and the process as
    they were."""
    daemon, config, tmp, stemcell = private
    g = Guest(daemon, config, tmp)
    disk = ""
    try:
        g.create(stemcell)
        disk = g.call("create_disk", 256, {}, g.vm).ok()
        g.call("attach_disk", g.vm, disk).ok()
        g.agent.call("mount_disk", disk)
        token = uuid.uuid4().hex
        g.sh(f"echo {token} > /var/vcap/store/token")
        g.install_job()
        g.state()
        assert g.count() == 1

        def pool_and_size() -> tuple[str, str]:
            for pool in ("local", BTRFS_POOL):
                vols = daemon.query(f"/1.0/storage-pools/{pool}/volumes/custom?recursion=1") or []
                for v in vols:
                    if v["name"] == disk:
                        return pool, v["config"].get("size", "")
            raise AssertionError(f"disk {disk} is in no pool")

        # A detach the agent did not prepare for, while a process works on the store: refused; the
        # disk stays attached and mounted, the process runs on.
        holder = g.sh("cd /var/vcap/store && { setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!; }").strip()
        g.agent.call("stop")
        g.agent.call("unmount_disk", disk)
        refused = g.call("detach_disk", g.vm, disk)
        assert refused.error_type == "Bosh::Clouds::CloudError", refused.error
        assert refused.error["ok_to_retry"] is True
        assert "still in use" in refused.error["message"] and "/var/vcap/store" in refused.error["message"]
        assert f"{holder}:sleep" in refused.error["message"], refused.error["message"]
        assert g.call("get_disks", g.vm).ok() == [disk]
        assert g.sh(f"kill -0 {holder} && cat /var/vcap/store/token").strip() == token
        # The agent sees the disk mounted as before its unmount_disk (the CPI bound it back).
        assert g.agent.call("list_disk") == [disk]
        assert store_mounts(g, disk) == {"volume": ["/var/vcap/store"], "store": ["/var/vcap/store"], "migration": []}
        g.sh(f"kill {holder}")
        g.agent.call("start")
        g.state()
        assert g.count() == 2

        changes = [("resize", 384, None), ("pool move", 384, BTRFS_POOL), ("resize", 512, None)]
        for n, (what, size, pool) in enumerate(changes, 3):
            g.agent.call("stop")
            g.agent.call("unmount_disk", disk)
            assert g.call("detach_disk", g.vm, disk).ok() is None, what
            if pool:
                assert g.call("update_disk", disk, size, {"pool": pool}).ok() == disk
            else:
                assert g.call("resize_disk", disk, size).ok() is None
            assert g.call("attach_disk", g.vm, disk).ok() == f"/warden-cpi-dev/{disk}"
            g.agent.call("mount_disk", disk)
            g.agent.call("start")
            state = g.state()
            mounts = store_mounts(g, disk)
            assert mounts == {"volume": ["/var/vcap/store"], "store": ["/var/vcap/store"], "migration": []}, what
            assert g.sh("cat /var/vcap/store/token").strip() == token, what
            assert g.count() == n, what
            assert g.agent.call("list_disk") == [disk], what
            assert {p["name"]: p["state"] for p in state["processes"]} == {JOB: "running"}, what
            assert pool_and_size() == (pool or pool_and_size()[0], f"{size}MiB"), what
        assert pool_and_size()[0] == BTRFS_POOL

        # A detach without the agent's unmount (its disk mount still in place): the store goes too.
        g.agent.call("stop")
        assert g.call("detach_disk", g.vm, disk).ok() is None
        mountinfo = g.sh("cat /proc/self/mountinfo")
        assert " /var/vcap/store " not in mountinfo and disk not in mountinfo, mountinfo
    finally:
        if g.vm:
            g.call("delete_vm", g.vm)
        if disk:
            g.call("delete_disk", disk)
