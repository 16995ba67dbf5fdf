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

import base64
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import agentimage, stemcells
from boshcpi.drivers.lxd.hostinit import generate_cert
from tests import cluster as cl
from tests.agentclient import Agent, AgentError, mbus_cert
from tests.helpers import call, require_tool

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PASSWORD = "mbus-s3cret-pw"
JOB = "keeper"
MONIT = f"""check process {JOB}
  with pidfile /var/vcap/sys/run/{JOB}/{JOB}.pid
  start program "/var/vcap/jobs/{JOB}/bin/ctl start"
  stop program "/var/vcap/jobs/{JOB}/bin/ctl stop"
  group vcap
"""
# A job that, like a database, keeps its data on the persistent disk: it does not start without it.
CTL = f"""#!/bin/sh
RUN=/var/vcap/sys/run/{JOB}
case "$1" in
  start)
    mountpoint -q /var/vcap/store || {{ echo "no persistent disk on /var/vcap/store" >&2; exit 1; }}
    mkdir -p "$RUN" /var/vcap/store/{JOB}
    date +%s >> /var/vcap/store/{JOB}/starts
    setsid sh -c 'while :; do sleep 5; done' </dev/null >/dev/null 2>&1 &
    echo $! > "$RUN/{JOB}.pid"
    ;;
  stop)
    [ -f "$RUN/{JOB}.pid" ] && kill "$(cat "$RUN/{JOB}.pid")"
    rm -f "$RUN/{JOB}.pid"
    ;;
esac
exit 0
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendered_templates() -> bytes:
    """The rendered-templates archive as the CLI builds it (`tar -czf X -C dir .`: ./<job>/...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text, mode in ((f"./{JOB}/monit", MONIT, 0o644), (f"./{JOB}/bin/ctl", CTL, 0o755)):
            info = tarfile.TarInfo(name)
            data = text.encode()
            info.size, info.mode = len(data), mode
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Guest:
    """One container on the private daemon, and its agent."""

    def __init__(self, daemon: cl.Cluster, config: Path, tmp: Path) -> None:
        self.daemon, self.config, self.tmp = daemon, config, tmp
        self.cert = mbus_cert(tmp, "127.0.0.1")
        self.port = free_port()
        self.agent = Agent("127.0.0.1", PASSWORD, self.cert["ca"], port=self.port)
        self.vm = ""

    def call(self, method: str, *args):
        return call(self.config, method, *args)

    def create(self, stemcell: str) -> None:
        env = {
            "bosh": {
                "mbus": {"cert": self.cert},
                "blobstores": [{"provider": "local", "options": {"blobstore_path": "/var/vcap/data/blobs"}}],
                "password": "*",
            }
        }
        net = {"default": {"type": "vip", "ip": "127.0.0.1", "cloud_properties": {}}}
        props = {"cpus": 1, "memory": 1024, "ephemeral_disk": 512}
        self.vm, _ = self.call("create_vm", "agent-life", stemcell, props, net, [], env).ok()
        # The director reaches the agent on the VM's address; here, a proxy on loopback.
        self.daemon.cli(
            "config", "device", "add", self.vm, "mbus", "proxy",
            f"listen=tcp:127.0.0.1:{self.port}", "connect=tcp:127.0.0.1:6868",
        )  # fmt: skip
        self.agent.wait_ready(300)

    def sh(self, script: str, check: bool = True) -> str:
        return self.daemon.cli("exec", self.vm, "--", "sh", "-c", script, check=check)

    def init_pid(self) -> int:
        return int(self.daemon.query(f"/1.0/instances/{self.vm}/state")["pid"])

    def install_job(self) -> None:
        """What `bosh create-env` does to run a job (bosh-cli deployment/instance/instance.go)."""
        blob = rendered_templates()
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        blob_id = str(uuid.uuid4())
        self.agent.call(
            "upload_blob", {"blob_id": blob_id, "checksum": digest, "payload": base64.b64encode(blob).decode()}
        )
        self.agent.call("stop")
        spec = {
            "deployment": "life",
            "name": JOB,
            "index": 0,
            "id": "0",
            "az": "unknown",
            "networks": {},
            "packages": {},
            "job": {"name": JOB, "templates": [{"name": JOB, "version": "1"}]},
            "rendered_templates_archive": {"blobstore_id": blob_id, "sha1": digest},
            "configuration_hash": "life-1",
        }
        self.agent.call("apply", spec)
        self.agent.call("run_script", "pre-start", {})
        self.agent.call("start")

    def state(self, timeout: float = 180) -> dict:
        """get_state full, once the job's process runs (job_state alone is `running` with no process)."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.agent.call("get_state", "full", timeout=30)
            except (AgentError, OSError) as e:
                last = {"error": str(e)}
            procs = {p.get("name"): p.get("state") for p in last.get("processes") or []}
            if last.get("job_state") == "running" and procs.get(JOB) == "running":
                return last
            time.sleep(2)
        raise AssertionError(f"the job never ran again: {json.dumps(last)[:2000]}\n{self.log()}")

    def starts(self) -> int:
        return len(self.sh(f"cat /var/vcap/store/{JOB}/starts").split())

    def log(self) -> str:
        out = self.sh("tail -n 40 /var/vcap/monit/monit.log; journalctl -u bosh-agent -n 60 --no-pager", check=False)
        return out[-6000:]


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
