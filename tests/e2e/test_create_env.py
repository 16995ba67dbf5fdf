"""`bosh create-env` with the real bosh CLI and the boshcpi release built by `make release`, on real
LXD and Incus: one instance of a trivial job, from a container stemcell that runs the real bosh-agent,
with a persistent disk. Then `create-env --recreate` (a new VM that finds the old disk's data under
/var/vcap/store), then `delete-env`, then nothing of it is left in the daemon.

What the CLI does here is what it does for an operator: it compiles the release's packages on this
machine (CPython from source), renders the lxd_cpi job's templates with its own ERB renderer, runs
bin/cpi, talks to the agent over its HTTPS mbus and uploads job blobs to it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import agentimage
from tests import boshcli
from tests.helpers import require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent_stemcell_tgz() -> Path:
    agent = require_tool("bosh-agent")
    return agentimage.stemcell_tarball(agentimage.container_stemcell(agent))


def manifest(ctx, tmp: Path, release: Path, dummy: Path, stemcell: Path, ip: str) -> Path:
    server = {
        "type": ctx.kind,
        "url": ctx.config["server"]["url"],
        "project_name": ctx.project,
        "network_name": ctx.config["server"]["network_name"],
        "storage_pool_name": ctx.config["server"]["storage_pool_name"],
    }
    return boshcli.manifest(
        tmp,
        f"e2e-{ctx.kind}",
        (release, dummy),
        stemcell,
        {"instance_type": "c1-m1", "ephemeral_disk": 1024},
        ctx.subnet,
        ip,
        "lxd_cpi",
        {"server": server},
    )


def agent_log(ctx, state: Path) -> str:
    """The agent's own log from the deployed VM, for a failure's report."""
    try:
        vm = json.loads(state.read_text()).get("current_vm_cid") or next(
            i for i in ctx.instances() if i.startswith("vm-")
        )
        # The agent logs to the console (its unit's StandardOutput=journal+console).
        return ctx.cli_run("console", vm, "--show-log", check=False)[-12000:]
    except (StopIteration, OSError, ValueError) as e:
        return f"(no agent log: {e})"


def exec_in(ctx, vm: str, *cmd: str) -> str:
    return ctx.cli_run("exec", vm, "--", *cmd)


@pytest.mark.parametrize("kind", ["lxd", "incus"])
def test_create_env_recreate_delete_env(request, kind, tmp_path, agent_stemcell_tgz):
    ctx = request.getfixturevalue(kind)
    release = boshcli.boshcpi_release()
    dummy = boshcli.dummy_release(tmp_path)
    ip = f"{ctx.subnet}.{200 + (uuid.uuid4().int % 40)}"
    path = manifest(ctx, tmp_path, release, dummy, agent_stemcell_tgz, ip)
    state, creds = tmp_path / "state.json", tmp_path / "creds.yml"
    boshcli.new_state(state)
    boshcli.restore_compiled()
    before = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    args = ["create-env", str(path), "--state", str(state), "--vars-store", str(creds)]
    try:
        boshcli.timed(f"create-env ({kind})", boshcli.run, *args)
        boshcli.keep_compiled()
        first = json.loads(state.read_text())
        vm = first["current_vm_cid"]
        disk = first["current_disk_id"] and next(
            d["cid"] for d in first["disks"] if d["id"] == first["current_disk_id"]
        )
        # The job ran (pre-start, rendered by the CLI with the manifest's property) on the real agent,
        # and the persistent disk is mounted where the agent mounts it.
        assert exec_in(ctx, vm, "cat", "/var/vcap/data/trivial-greeting").strip() == "hello from create-env"
        token = exec_in(ctx, vm, "cat", "/var/vcap/store/trivial/token").strip()
        assert len(token) == 36
        mounts = exec_in(ctx, vm, "cat", "/proc/mounts")
        assert " /var/vcap/store " in mounts
        inst = ctx.api(f"/1.0/instances/{vm}")
        assert inst["devices"][f"p{disk[len(kind) + 2 :]}"]["source"] == disk

        boshcli.timed(f"recreate ({kind})", boshcli.run, *args, "--recreate")
        second = json.loads(state.read_text())
        vm2 = second["current_vm_cid"]
        assert vm2 != vm and vm not in ctx.instances()
        assert [d["cid"] for d in second["disks"]] == [disk]
        # The new VM has the old disk, and its data.
        assert exec_in(ctx, vm2, "cat", "/var/vcap/store/trivial/token").strip() == token
    except AssertionError:
        print(agent_log(ctx, state))
        raise
    finally:
        boshcli.delete_env(kind, path, state, creds)
    assert not state.exists()
    after = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    assert after == before, f"left behind: {[a - b for a, b in zip(after, before, strict=True)]}"
    print(f"timings: {json.dumps(boshcli.TIMINGS)}")
