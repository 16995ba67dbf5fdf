"""Containers inside a boshcpi container (what a diego-cell's garden does), on real LXD 5.0 and Incus
6.0, in a container made from the agent stemcell (the real bosh-agent, boshcpi.dev.agentimage):

- Debian's runc (the host's package, pushed in as garden-runc-release ships its own runc) runs a
  busybox container in its own namespaces and cgroup;
- a loop-mounted filesystem, as grootfs keeps its image store;
- `umount -f`, which diego's rep runs on every restart and which failed in 2019 with "block devices
  are not permitted on filesystem" (LXD's default seccomp policy answers EACCES).

With `nested_containers: true` (manifests/ops/container-stemcells.yml's vm_extension) all three work;
without it, the last two fail as they did then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from boshcpi.dev import agentimage, stemcells
from tests.helpers import require_tool
from tests.integration.test_lxd_containers import network

pytestmark = pytest.mark.slow

# As garden's start script does (greenskeeper system-preparation create_loop_devices).
LOOP_NODES = (
    "mknod -m 660 /dev/loop-control c 10 237 2>/dev/null; "
    "for i in $(seq 0 15); do mknod -m 660 /dev/loop$i b 7 $i 2>/dev/null; done"
)
UMOUNT_F = "mkdir -p /mnt/id && mount -t tmpfs tmpfs /mnt/id && umount -f /mnt/id 2>&1"


@pytest.fixture(scope="module")
def agent_stemcell(daemon):
    image = agentimage.container_stemcell(require_tool("bosh-agent"))
    cid = daemon.call("create_stemcell", str(image / "image"), stemcells.cloud_properties(image)).ok()
    yield cid
    daemon.call("delete_stemcell", cid)


def host_tool(name: str) -> Path:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"not run: no {name} on this host (make host installs it)")
    return Path(path).resolve()


def sh(ctx, vm: str, script: str, check: bool = True) -> str:
    return ctx.cli_run("exec", vm, "--", "sh", "-c", script, check=check)


def push(ctx, vm: str, src: Path, dest: str, mode: str = "0755") -> None:
    ctx.cli_run("file", "push", "--create-dirs", f"--mode={mode}", str(src), f"{vm}{dest}")


def create(ctx, stemcell: str, ip_last: int, nested: bool) -> str:
    props = {"instance_type": "c1-m1", "ephemeral_disk": 256}
    if nested:
        props["nested_containers"] = True
    vm, _ = ctx.call("create_vm", "agent-nest", stemcell, props, network(ctx, ip_last), [], {}).ok()
    return vm


def test_runc_runs_a_container_inside_a_boshcpi_container(daemon, agent_stemcell, tmp_path):
    ctx = daemon
    runc, busybox = host_tool("runc"), host_tool("busybox")
    vm = create(ctx, agent_stemcell, 41, nested=True)
    try:
        inst = ctx.api(f"/1.0/instances/{vm}")
        assert inst["config"]["security.privileged"] == "true" and inst["config"]["security.nesting"] == "true"
        push(ctx, vm, runc, "/usr/local/bin/runc")
        push(ctx, vm, busybox, "/root/bundle/rootfs/bin/busybox")
        sh(ctx, vm, "cd /root/bundle && /usr/local/bin/runc spec && ln -s busybox rootfs/bin/sh")
        spec = json.loads(sh(ctx, vm, "cat /root/bundle/config.json"))
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["/bin/busybox", "sh", "-c", "echo inner-pid=$$; cat /proc/self/cgroup"]
        spec["hostname"] = "inner"
        (tmp_path / "config.json").write_text(json.dumps(spec))
        push(ctx, vm, tmp_path / "config.json", "/root/bundle/config.json", mode="0644")
        out = sh(ctx, vm, "cd /root/bundle && /usr/local/bin/runc run boshcpi-inner")
        # Its own PID namespace (pid 1) and its own cgroup below the container's.
        assert "inner-pid=1" in out, out
        assert "boshcpi-inner" in out, out
        assert sh(ctx, vm, "/usr/local/bin/runc list -q").strip() == ""

        # grootfs's store: a filesystem on a file, loop-mounted.
        loop = sh(
            ctx,
            vm,
            f"{LOOP_NODES}; truncate -s 64M /root/store.img && mke2fs -q -F /root/store.img && mkdir -p /mnt/store"
            " && mount -o loop /root/store.img /mnt/store && echo grootfs > /mnt/store/x && cat /mnt/store/x"
            " && umount /mnt/store",
        )
        assert loop.strip() == "grootfs"
        # rep's `umount -f`.
        assert sh(ctx, vm, UMOUNT_F + " && echo ok").strip() == "ok"
    finally:
        ctx.call("delete_vm", vm)


def test_without_nested_containers_the_2019_failures_come_back(daemon, agent_stemcell):
    ctx = daemon
    vm = create(ctx, agent_stemcell, 42, nested=False)
    try:
        out = sh(ctx, vm, UMOUNT_F, check=False)
        assert "block devices are not permitted on filesystem" in out, out
        out = sh(
            ctx,
            vm,
            f"{LOOP_NODES}; truncate -s 64M /root/store.img && mke2fs -q -F /root/store.img && mkdir -p /mnt/store"
            " && mount -o loop /root/store.img /mnt/store 2>&1; echo rc=$?",
            check=False,
        )
        assert "rc=0" not in out, out
    finally:
        ctx.call("delete_vm", vm)


def test_nested_containers_is_refused_where_it_cannot_work(daemon, agent_stemcell):
    resp = daemon.call(
        "create_vm", "agent-nest", agent_stemcell, {"nested_containers": "yes"}, network(daemon, 43), [], {}
    )
    assert resp.error_type == "Bosh::Clouds::CpiError" and "true or false" in resp.error["message"]
