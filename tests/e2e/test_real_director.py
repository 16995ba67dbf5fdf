"""The real BOSH director (tests/director.py) deploying with boshcpi as its CPI, driven with the real
bosh CLI the way an operator does, onto LXD and Incus system containers that run the real bosh-agent.

One deployment spread over both daemons through a cpi-config with two named CPIs (an AZ per CPI;
the Incus CPI's server settings arrive in the request context), two instances with persistent
disks, one on each daemon, then: a recreate; a disk type change by native resize, twice in a row;
`cck` with `reboot_vm` after an agent was stopped; `stop --hard` then `start`; a scale up and down;
`delete-deployment` and `clean-up --all`. The job keeps a token and a counter on its persistent disk
and refuses to start without /var/vcap/store mounted. After every step: each instance's data is
there, the disk mounted exactly once (on the store, nothing on the migration target) and the job
running; and every CPI call of every task, read from the task debug logs, was answered without an
error.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from boshcpi.dev import agentimage
from tests import director as dr
from tests.conftest import POOL
from tests.containerguest import CTL, JOB, MONIT
from tests.helpers import require_tool

pytestmark = pytest.mark.slow

PROFILE = "boshcpi-director"
DEPLOYMENT = "keeper"
# Addresses the director may give instances: .80-.119 on each bridge (other tests use others).
RANGE = (80, 119)

# The job of tests/containerguest.py (it counts its starts on the store, and does not start without it),
# and a pre-start that leaves a token there once.
PRE_START = f"""#!/bin/sh
set -e
mountpoint -q /var/vcap/store
mkdir -p /var/vcap/store/{JOB}
[ -f /var/vcap/store/{JOB}/token ] || cat /proc/sys/kernel/random/uuid > /var/vcap/store/{JOB}/token
"""


def keeper_release(bosh: dr.Director, tmp: Path) -> Path:
    """The job above as a release, built by the real CLI."""
    d = tmp / "keeper-release"
    job = d / "jobs" / JOB
    (job / "templates").mkdir(parents=True)
    (d / "config").mkdir()
    (d / "packages").mkdir()
    (d / "config" / "final.yml").write_text("name: keeper\n")
    (d / "config" / "blobs.yml").write_text("--- {}\n")
    (job / "spec").write_text(
        yaml.safe_dump(
            {"name": JOB, "templates": {"ctl.erb": "bin/ctl", "pre-start.erb": "bin/pre-start"}, "packages": []}
        )
    )
    (job / "monit").write_text(MONIT)
    (job / "templates" / "ctl.erb").write_text(CTL)
    (job / "templates" / "pre-start.erb").write_text(PRE_START)
    subprocess.run(["git", "init", "-q", str(d)], check=True)  # the CLI reads the folder through git
    out = tmp / "keeper-release.tgz"
    bosh.bosh("create-release", "--dir", str(d), "--force", "--tarball", str(out))
    return out


def server_section(ctx) -> dict[str, Any]:
    return {
        "type": ctx.kind,
        "url": ctx.config["server"]["url"],
        "project_name": ctx.project,
        "profile_name": PROFILE,
        "network_name": ctx.config["server"]["network_name"],
        "storage_pool_name": POOL,
    }


def cloud_config() -> dict[str, Any]:
    def subnet(prefix: str, az: str, bridge: str) -> dict[str, Any]:
        lo, hi = RANGE
        return {
            "range": f"{prefix}.0/24",
            "gateway": f"{prefix}.1",
            "dns": [f"{prefix}.1"],
            "reserved": [f"{prefix}.2-{prefix}.{lo - 1}", f"{prefix}.{hi + 1}-{prefix}.254"],
            "az": az,
            "cloud_properties": {"name": bridge},
        }

    return {
        "azs": [{"name": "z-lxd", "cpi": "lxd"}, {"name": "z-incus", "cpi": "incus"}],
        "vm_types": [{"name": "default", "cloud_properties": {"cpus": 1, "memory": 512, "ephemeral_disk": 1024}}],
        "disk_types": [
            {"name": "small", "disk_size": 1024, "cloud_properties": {}},
            {"name": "big", "disk_size": 2048, "cloud_properties": {}},
            {"name": "bigger", "disk_size": 3072, "cloud_properties": {}},
        ],
        "networks": [
            {
                "name": "default",
                "type": "manual",
                "subnets": [
                    subnet("10.245.10", "z-lxd", "boshcpi-lxdbr0"),
                    subnet("10.245.20", "z-incus", "boshcpi-incbr0"),
                ],
            }
        ],
        "compilation": {
            "workers": 1,
            "az": "z-lxd",
            "vm_type": "default",
            "network": "default",
            "reuse_compilation_vms": True,
        },
    }


def deployment(instances: int, disk_type: str) -> dict[str, Any]:
    return {
        "name": DEPLOYMENT,
        "releases": [{"name": "keeper", "version": "latest"}],
        "stemcells": [{"alias": "default", "os": "ubuntu-jammy", "version": "latest"}],
        "update": {
            "canaries": 1,
            "max_in_flight": 4,
            "canary_watch_time": "1000-60000",
            "update_watch_time": "1000-60000",
        },
        "instance_groups": [
            {
                "name": JOB,
                "instances": instances,
                "azs": ["z-lxd", "z-incus"],
                "vm_type": "default",
                "stemcell": "default",
                "persistent_disk_type": disk_type,
                "networks": [{"name": "default"}],
                "jobs": [{"name": JOB, "release": "keeper", "properties": {}}],
            }
        ],
    }


class Deployment:
    """The operator's view (the CLI) and the host's (each daemon's own client) of one deployment."""

    def __init__(self, bosh: dr.Director, daemons: dict[str, Any], tmp: Path) -> None:
        self.bosh, self.daemons, self.tmp = bosh, daemons, tmp

    def deploy(self, instances: int, disk_type: str, *extra: str) -> None:
        path = self.tmp / f"manifest-{uuid.uuid4().hex[:6]}.yml"
        path.write_text(yaml.safe_dump(deployment(instances, disk_type)))
        self.bosh.bosh("-d", DEPLOYMENT, "deploy", str(path), *extra)

    def instances(self) -> list[dict[str, Any]]:
        rows = self.bosh.bosh_json("-d", DEPLOYMENT, "instances", "--details")
        return [r for r in rows if r.get("instance", "").startswith(JOB + "/")]

    def where(self, row: dict[str, Any]) -> Any:
        return self.daemons["lxd" if row["az"] == "z-lxd" else "incus"]

    def sh(self, row: dict[str, Any], script: str, check: bool = True) -> str:
        return self.where(row).cli_run("exec", row["vm_cid"], "--", "sh", "-c", script, check=check)

    def data(self) -> dict[str, tuple[str, int]]:
        """Per instance id: the token and the start counter on its store; and every check that the
        store is as it must be (one mount of its disk there, nothing on the migration target, the job
        running with its pidfile's process alive)."""
        out = {}
        rows = self.instances()
        assert rows and all(r["process_state"] == "running" for r in rows), rows
        for r in rows:
            mi = [line.split() for line in self.sh(r, "cat /proc/self/mountinfo").splitlines()]
            store = [f for f in mi if f[4] == "/var/vcap/store"]
            assert len(store) == 1, (r["instance"], [f[4] for f in mi])
            same = [f[4] for f in mi if (f[2], f[3]) == (store[0][2], store[0][3])]
            assert sorted(same) == sorted(["/var/vcap/store", f"/warden-cpi-dev/{r['disk_cids']}"]), (r, same)
            assert not [f for f in mi if f[4] == "/var/vcap/store_migration_target"], r["instance"]
            state = self.sh(r, f"kill -0 $(cat /var/vcap/sys/run/{JOB}/{JOB}.pid) && echo alive").strip()
            assert state == "alive", r["instance"]
            token = self.sh(r, f"cat /var/vcap/store/{JOB}/token").strip()
            count = int(self.sh(r, f"cat /var/vcap/store/{JOB}/count").strip())
            out[r["instance"]] = (token, count)
        return out

    def wait_process_state(self, state: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        rows: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            rows = self.instances()
            if rows and all(r["process_state"] == state for r in rows):
                return
            time.sleep(3)
        raise AssertionError(f"instances not {state} after {timeout}s: {rows}")


def every_cpi_call(bosh: dr.Director) -> tuple[Counter, list[str]]:
    """Every CPI call of every task, by method, and every answer that was not a result."""
    methods: Counter = Counter()
    failed: list[str] = []
    for task in bosh.task_ids():
        for call in bosh.cpi_calls(task):
            methods[call["method"]] += 1
            resp = call["response"]
            if resp is None or resp.get("error") is not None:
                failed.append(f"task {task}: {call['method']}: {resp}")
    return methods, failed


def clean_up_all(bosh: dr.Director) -> None:
    """`bosh clean-up --all`. A stemcell the director put in several CPIs is one row per CPI, and the
    director deletes each row's name and version in a thread of its own, every row of them each time
    (cloudfoundry/bosh cleanup_artifact_manager.rb:154-170 delete_stemcells, unchanged upstream):
    with two CPIs one thread finds its rows gone and the task fails, "Attempt to delete object did
    not result in a single row modification". The CPI calls succeeded; the second run finds the rest."""
    first = bosh.bosh("clean-up", "--all", check=False)
    if first.returncode != 0:
        assert "did not result in a single row modification" in first.stdout, first.stdout[-4000:]
        bosh.bosh("clean-up", "--all")
    assert bosh.bosh_json("stemcells") == [] and bosh.bosh_json("releases") == []


@pytest.fixture(scope="module")
def director(lxd, incus, tmp_path_factory):
    reason = dr.missing()
    if reason:
        pytest.skip(reason)
    require_tool("bosh")
    agent = require_tool("bosh-agent")
    tmp = tmp_path_factory.mktemp("director")
    work = Path(f"/tmp/boshcpi-director-{uuid.uuid4().hex[:6]}")
    work.mkdir(mode=0o755)
    nats_port = dr.free_port()
    cpi_config = tmp / "cpi.json"
    bosh = dr.Director(work, cpi_config, dr.BRIDGE_HOSTS[0])
    bosh.ports["nats"] = nats_port
    cpi_config.write_text(
        json.dumps(
            {
                "server": server_section(lxd),
                "agent": {
                    "mbus": f"nats://{dr.BRIDGE_HOSTS[0]}:{nats_port}",
                    "blobstore": {"provider": "local", "options": {"blobstore_path": dr.AGENT_BLOBSTORE}},
                },
            }
        )
    )
    # Every instance of the director sees its blobstore, where the agents are told it is.
    for ctx in (lxd, incus):
        ctx.cli_run("profile", "create", PROFILE)
        ctx.cli_run("profile", "device", "add", PROFILE, "root", "disk", "path=/", f"pool={POOL}")
        ctx.cli_run(
            "profile", "device", "add", PROFILE, "blobstore", "disk",
            f"source={bosh.blobstore}", f"path={dr.AGENT_BLOBSTORE}",
        )  # fmt: skip
    before = {k: (set(c.instances()), set(c.volumes()), set(c.images())) for k, c in (("lxd", lxd), ("incus", incus))}
    try:
        bosh.start()
        cpis = {
            "cpis": [
                {"name": "lxd", "type": "boshcpi", "exec_path": str(work / "bin" / "cpi")},
                {
                    "name": "incus",
                    "type": "boshcpi",
                    "exec_path": str(work / "bin" / "cpi"),
                    "properties": {"server": server_section(incus)},
                },
            ]
        }
        (tmp / "cpi-config.yml").write_text(yaml.safe_dump(cpis))
        bosh.bosh("update-cpi-config", str(tmp / "cpi-config.yml"))
        (tmp / "cloud-config.yml").write_text(yaml.safe_dump(cloud_config()))
        bosh.bosh("update-cloud-config", str(tmp / "cloud-config.yml"))
        # After the cpi-config: the director puts the stemcell in each CPI's daemon.
        image = agentimage.container_stemcell(agent, stemcell_like=True)
        bosh.bosh("upload-stemcell", bosh.offer(agentimage.stemcell_tarball(image)))
        bosh.bosh("upload-release", bosh.offer(keeper_release(bosh, tmp)))
        yield bosh, {"lxd": lxd, "incus": incus}, tmp, before
    finally:
        bosh.bosh("-d", DEPLOYMENT, "delete-deployment", "--force", check=False)
        bosh.stop()
        for ctx in (lxd, incus):
            ctx.cli_run("profile", "delete", PROFILE, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def test_a_deployment_over_lxd_and_incus_lives_through_what_operators_do(director):
    bosh, daemons, tmp, before = director
    d = Deployment(bosh, daemons, tmp)
    timings: dict[str, float] = {}

    def step(name: str, fn, *args: Any) -> None:
        start = time.monotonic()
        fn(*args)
        timings[name] = round(time.monotonic() - start, 1)

    # Deploy: one instance on each daemon, each with its disk.
    step("deploy", d.deploy, 2, "small")
    rows = d.instances()
    assert sorted(r["az"] for r in rows) == ["z-incus", "z-lxd"], rows
    first = d.data()
    assert all(count == 1 for _, count in first.values()), first
    vm_cids = {r["instance"]: r["vm_cid"] for r in rows}

    # Recreate: new VMs, the same disks with their data.
    step("recreate", bosh.bosh, "-d", DEPLOYMENT, "recreate")
    rows = d.instances()
    assert all(vm_cids[r["instance"]] != r["vm_cid"] for r in rows), rows
    data = d.data()
    assert {k: t for k, (t, _) in data.items()} == {k: t for k, (t, _) in first.items()}
    counts = {k: c for k, (_, c) in data.items()}

    # A disk type change by native resize, twice in a row (enable_cpi_resize_disk).
    for disk_type, mib in (("big", 2048), ("bigger", 3072)):
        disks = {r["instance"]: r["disk_cids"] for r in d.instances()}
        step(f"disk {disk_type}", d.deploy, 2, disk_type)
        rows = d.instances()
        assert {r["instance"]: r["disk_cids"] for r in rows} == disks, "a resize keeps the disk"
        data = d.data()
        assert {k: t for k, (t, _) in data.items()} == {k: t for k, (t, _) in first.items()}, disk_type
        assert all(data[k][1] == counts[k] + 1 for k in counts), (disk_type, data, counts)
        counts = {k: c for k, (_, c) in data.items()}
        for r in rows:
            vol = d.where(r).api(f"/1.0/storage-pools/{POOL}/volumes/custom/{r['disk_cids']}")
            assert vol["config"]["size"] == f"{mib}MiB", (disk_type, vol["config"])

    # cck: an agent stopped; the director's reboot_vm resolution brings it, its store and its job back.
    victim = d.instances()[0]
    d.sh(victim, "systemctl stop bosh-agent")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        report = bosh.bosh("-d", DEPLOYMENT, "cck", "--report", check=False).stdout
        if "not responding" in report or "unresponsive" in report.lower():
            break
        time.sleep(5)
    step("cck reboot_vm", bosh.bosh, "-d", DEPLOYMENT, "cck", "--resolution", "reboot_vm")
    d.wait_process_state("running")
    data = d.data()
    assert {k: t for k, (t, _) in data.items()} == {k: t for k, (t, _) in first.items()}

    # stop --hard (the VMs go, the disks stay), then start.
    step("stop --hard", bosh.bosh, "-d", DEPLOYMENT, "stop", "--hard")
    assert all(not r.get("vm_cid") for r in d.instances())
    step("start", bosh.bosh, "-d", DEPLOYMENT, "start")
    data = d.data()
    assert {k: t for k, (t, _) in data.items()} == {k: t for k, (t, _) in first.items()}

    # Scale up and down: the new instances get disks of their own; the first two keep theirs.
    step("scale 2->4", d.deploy, 4, "bigger")
    rows = d.instances()
    assert Counter(r["az"] for r in rows) == {"z-lxd": 2, "z-incus": 2}, rows
    grown = d.data()
    assert len({t for t, _ in grown.values()}) == 4
    step("scale 4->2", d.deploy, 2, "bigger")
    data = d.data()
    assert {k: t for k, (t, _) in data.items()} == {k: t for k, (t, _) in first.items()}

    # Every call the director made so far, answered.
    methods, failed = every_cpi_call(bosh)
    assert not failed, "\n".join(failed)

    # delete-deployment and clean-up --all leave nothing of it in either daemon.
    step("delete-deployment", bosh.bosh, "-d", DEPLOYMENT, "delete-deployment")
    step("clean-up --all", clean_up_all, bosh)
    for kind, ctx in daemons.items():
        inst, vols, imgs = before[kind]
        assert set(ctx.instances()) - inst == set(), kind
        assert set(ctx.volumes()) - vols == set(), kind
        assert set(ctx.images()) - imgs == set(), kind
    methods, failed = every_cpi_call(bosh)
    assert not failed, "\n".join(failed)
    for needed in ("create_vm", "delete_vm", "create_disk", "attach_disk", "detach_disk", "resize_disk",
                   "reboot_vm", "delete_disk", "create_stemcell", "delete_stemcell", "set_vm_metadata"):  # fmt: skip
        assert methods[needed] > 0, (needed, methods)
    print(f"\nCPI calls by method: {dict(sorted(methods.items()))} (all {sum(methods.values())} answered)")
    print(f"timings (s): {timings}")
