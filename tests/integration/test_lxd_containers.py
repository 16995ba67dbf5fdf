"""Container lifecycle against real LXD 5.0 and Incus 6.0 (same test code), warden-style stemcell."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from boshcpi.dev import stemcells

pytestmark = pytest.mark.lxd

SECRETS = ("mbus-s3cret-pw", "blob-s3cret-pw", "env-s3cret-pw")


def network(ctx, ip_last: int) -> dict:
    return {
        "default": {
            "type": "manual",
            "ip": f"{ctx.subnet}.{ip_last}",
            "netmask": "255.255.255.0",
            "gateway": f"{ctx.subnet}.1",
            "dns": [f"{ctx.subnet}.1"],
            "default": ["dns", "gateway"],
            "cloud_properties": {},
        }
    }


ENV = {"bosh": {"password": "env-s3cret-pw", "group": "cf-router"}}


@pytest.fixture(scope="module")
def warden_stemcell(daemon, test_stemcells):
    d = test_stemcells["warden"]
    cid = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    yield cid
    daemon.call("delete_stemcell", cid)


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_container_lifecycle(daemon, warden_stemcell):
    ctx = daemon
    net = network(ctx, 21)
    resp = ctx.call(
        "create_vm", "agent-life", warden_stemcell, {"instance_type": "c1-m1", "ephemeral_disk": 256}, net, [], ENV
    )
    vm_cid, networks = resp.ok()
    assert_no_secrets(resp.stderr, resp.log, resp.stdout)
    assert vm_cid.startswith("vm-")
    mac = networks["default"]["mac"]
    assert networks["default"]["ip"] == f"{ctx.subnet}.21"
    assert len(mac.split(":")) == 6

    # The settings file inside the container holds exactly what the agent needs.
    settings = json.loads(ctx.cli_run("exec", vm_cid, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json"))
    assert settings == {
        "agent_id": "agent-life",
        "vm": {"name": vm_cid, "id": vm_cid},
        "mbus": ctx.config["agent"]["mbus"],
        "ntp": ["10.245.0.1"],
        "blobstore": ctx.config["agent"]["blobstore"],
        "networks": {"default": {**net["default"], "mac": mac, "preconfigured": True, "routes": []}},
        "disks": {"system": "", "ephemeral": "/var/vcap/data", "persistent": {}},
        "env": ENV,
    }
    # The NIC carries the MAC and the fixed address; limits follow instance_type.
    inst = ctx.api(f"/1.0/instances/{vm_cid}")
    assert inst["devices"]["eth0"]["hwaddr"] == mac
    assert inst["devices"]["eth0"]["ipv4.address"] == f"{ctx.subnet}.21"
    assert inst["config"]["limits.cpu"] == "1"
    assert inst["config"]["limits.memory"] == "1024MiB"
    assert inst["config"]["user.bosh.agent_id"] == "agent-life"
    # No secret lands in instance config that any API reader can list.
    assert_no_secrets(json.dumps(inst))
    # The container got its address from the bridge (static DHCP lease) by itself.
    deadline = time.monotonic() + 20
    addrs = ""
    while time.monotonic() < deadline:
        addrs = ctx.cli_run("exec", vm_cid, "--", "ip", "-4", "addr", "show", "eth0", check=False)
        if f"{ctx.subnet}.21" in addrs:
            break
        time.sleep(0.5)
    assert f"{ctx.subnet}.21" in addrs
    # Ephemeral disk is its own volume, mounted where the agent expects it.
    assert f"vol-e-{vm_cid[3:]}" in ctx.volumes()
    assert "/var/vcap/data" in ctx.cli_run("exec", vm_cid, "--", "cat", "/proc/mounts")

    assert ctx.call("has_vm", vm_cid).ok() is True
    # A reboot really restarts the container: a file on its /dev (the tmpfs LXD/Incus mount at every
    # start) is gone, its init has a new pid on the host (a no-op reboot_vm fails here).
    ctx.cli_run("exec", vm_cid, "--", "sh", "-c", "echo before > /dev/boshcpi-reboot-mark")
    pid_before = ctx.api(f"/1.0/instances/{vm_cid}/state")["pid"]
    assert ctx.call("reboot_vm", vm_cid).ok() is None
    state = ctx.api(f"/1.0/instances/{vm_cid}/state")
    assert state["status"] == "Running" and state["pid"] != pid_before
    assert ctx.cli_run("exec", vm_cid, "--", "cat", "/dev/boshcpi-reboot-mark", check=False).strip() == ""

    meta = {"director": "d", "deployment": "cf", "job": "router", "index": "0", "id": "abc", "name": "router/abc"}
    assert ctx.call("set_vm_metadata", vm_cid, meta).ok() is None
    inst = ctx.api(f"/1.0/instances/{vm_cid}")
    assert inst["config"]["user.bosh.deployment"] == "cf"
    assert inst["config"]["user.bosh.job"] == "router"
    assert inst["description"] == "cf/router/abc"

    assert ctx.call("delete_vm", vm_cid).ok() is None
    assert ctx.call("has_vm", vm_cid).ok() is False
    assert vm_cid not in ctx.instances()
    assert not [v for v in ctx.volumes() if vm_cid[3:] in v]
    # Deleting again is not an error.
    assert ctx.call("delete_vm", vm_cid).ok() is None


def test_v1_create_vm_returns_only_the_cid(daemon, warden_stemcell):
    resp = daemon.call("create_vm", "agent-v1", warden_stemcell, {}, network(daemon, 22), [], {}, api_version=1)
    vm_cid = resp.ok()
    assert isinstance(vm_cid, str) and vm_cid.startswith("vm-")
    daemon.call("delete_vm", vm_cid).ok()


def test_two_bosh_networks_on_one_managed_network_are_refused_before_anything_is_made(daemon, warden_stemcell):
    """Two manual networks without `cloud_properties.name` both land on server.network_name, and an
    instance has one NIC per managed network: the caller's input, refused with both names and the
    setting to use, before an instance or a volume exists."""
    before = (set(daemon.instances()), set(daemon.volumes()))
    nets = network(daemon, 23)
    second = dict(nets["default"], ip=f"{daemon.subnet}.24", default=[])
    resp = daemon.call(
        "create_vm", "agent-2nets", warden_stemcell, {"ephemeral_disk": 64}, {**nets, "other": second}, [], {}
    )
    assert resp.error_type == "Bosh::Clouds::CpiError", resp.error
    msg = resp.error["message"]
    assert "'default'" in msg and "'other'" in msg and "cloud_properties.name" in msg, msg
    assert resp.error["ok_to_retry"] is False
    assert (set(daemon.instances()), set(daemon.volumes())) == before


def test_missing_objects_give_typed_errors(daemon):
    ghost = "vm-00000000-0000-4000-8000-000000000000"
    assert daemon.call("has_vm", ghost).ok() is False
    assert daemon.call("reboot_vm", ghost).error_type == "Bosh::Clouds::VMNotFound"
    assert daemon.call("set_vm_metadata", ghost, {"a": "b"}).error_type == "Bosh::Clouds::VMNotFound"
    assert daemon.call("delete_vm", ghost).ok() is None
    assert daemon.call("delete_stemcell", "img-00000000-0000-4000-8000-000000000000").ok() is None
    resp = daemon.call("create_vm", "a", "img-00000000-0000-4000-8000-000000000000", {}, {}, [], {})
    assert resp.error_type == "Bosh::Clouds::VMCreationFailed"
    assert "not found" in resp.error["message"]


def test_same_image_uploaded_twice_is_stored_once(daemon, test_stemcells, warden_stemcell):
    d = test_stemcells["warden"]
    before = daemon.images()
    second = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    assert second != warden_stemcell
    assert daemon.images() == before
    # Deleting one stemcell keeps the image for the other.
    assert daemon.call("delete_stemcell", second).ok() is None
    assert daemon.images() == before


def test_delete_stemcell_refuses_while_a_vm_uses_it(daemon, test_stemcells):
    d = test_stemcells["warden"]
    # A distinct image (different manifest version -> different metadata -> different fingerprint).
    props = {**stemcells.cloud_properties(d), "version": "9.9"}
    cid = daemon.call("create_stemcell", str(d / "image"), props).ok()
    vm_cid, _ = daemon.call("create_vm", "agent-sc", cid, {}, network(daemon, 23), [], {}).ok()
    resp = daemon.call("delete_stemcell", cid)
    assert resp.error_type == "Bosh::Clouds::CloudError"
    assert vm_cid in resp.error["message"]
    daemon.call("delete_vm", vm_cid).ok()
    assert daemon.call("delete_stemcell", cid).ok() is None
    assert daemon.api(f"/1.0/images/aliases/{cid}", missing_ok=True) is None


@pytest.mark.parametrize("step", ["volumes", "instance", "settings", "start"])
def test_failure_in_each_create_vm_step_leaves_nothing(daemon, warden_stemcell, step):
    before_instances, before_volumes = set(daemon.instances()), set(daemon.volumes())
    resp = daemon.call(
        "create_vm",
        "agent-fail",
        warden_stemcell,
        {"ephemeral_disk": 64},
        network(daemon, 24),
        [],
        {},
        env={"BOSHCPI_FAIL_AT": step},
    )
    assert resp.error_type == "Bosh::Clouds::VMCreationFailed"
    assert step in resp.error["message"]
    assert set(daemon.instances()) == before_instances
    assert set(daemon.volumes()) == before_volumes


def _vm_capable(daemon) -> bool:
    from boshcpi.drivers.lxd.doctor import instance_types

    return "virtual-machine" in instance_types(daemon.api("/1.0")["environment"])


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_vm_stemcell_imports_as_a_vm_image(daemon, test_stemcells, fmt, tmp_path):
    d = test_stemcells[f"vm-{fmt}"]
    cid = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    fingerprint = daemon.api(f"/1.0/images/aliases/{cid}")["target"]
    image = daemon.api(f"/1.0/images/{fingerprint}")
    assert image["type"] == "virtual-machine"
    assert image["properties"]["bosh.stemcell.kind"] == "vm"
    if fmt == "raw":
        # The raw root.img became qcow2 on the way (boshcpi's own writer, no qemu-img): QEMU's tools find
        # it clean, with the raw image's size and content.
        _check_qcow2_matches_raw(daemon, fingerprint, d / "image", tmp_path)
    assert daemon.call("delete_stemcell", cid).ok() is None


def _check_qcow2_matches_raw(daemon, fingerprint, image_tarball, tmp_path):
    import tarfile

    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        pytest.skip("not run: no qemu-img (package qemu-utils) to check the image the daemon holds")
    daemon.cli_run("image", "export", fingerprint, str(tmp_path / "export"))
    rootfs = next(p for p in tmp_path.iterdir() if p.name.startswith("export") and p.name.endswith(".root"))
    with tarfile.open(image_tarball) as tf:
        tf.extract("root.img", tmp_path, filter="data")
    raw = tmp_path / "root.img"
    check = subprocess.run([qemu_img, "check", "-f", "qcow2", str(rootfs)], capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout + check.stderr
    info = json.loads(subprocess.check_output([qemu_img, "info", "--output=json", "-f", "qcow2", str(rootfs)]))
    assert info["virtual-size"] == raw.stat().st_size
    same = subprocess.run([qemu_img, "compare", "-f", "raw", "-F", "qcow2", str(raw), str(rootfs)], capture_output=True)
    assert same.returncode == 0, same.stdout


def test_vm_is_created_and_started(daemon, test_stemcells):
    """A VM from a VM stemcell: devices as naming.py says, started. Needs a host that runs VMs."""
    if not _vm_capable(daemon):
        pytest.skip(f"not run: {daemon.kind} here has no virtual-machine support (no vhost_vsock)")
    d = test_stemcells["vm-qcow2"]
    cid = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    vm_cid, _ = daemon.call("create_vm", "agent-vm", cid, {"ephemeral_disk": 64}, network(daemon, 25), [], {}).ok()
    inst = daemon.api(f"/1.0/instances/{vm_cid}")
    assert inst["status"] == "Running" and inst["type"] == "virtual-machine"
    assert {"root", "ephemeral", "metadata"} <= set(inst["devices"])
    daemon.call("delete_vm", vm_cid).ok()
    daemon.call("delete_stemcell", cid).ok()


def test_vm_creation_fails_cleanly_where_vms_cannot_run(daemon, test_stemcells):
    """On a host without VM support create_vm answers VMCreationFailed (not retryable) and leaves
    nothing behind: no instance, no ephemeral or config volume."""
    if _vm_capable(daemon):
        pytest.skip(f"not run: {daemon.kind} here runs VMs (this checks the failure where it cannot)")
    d = test_stemcells["vm-qcow2"]
    cid = daemon.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    before_volumes, before_instances = set(daemon.volumes()), set(daemon.instances())
    resp = daemon.call("create_vm", "agent-vm", cid, {"ephemeral_disk": 64}, network(daemon, 25), [], {})
    assert resp.error_type == "Bosh::Clouds::VMCreationFailed" and resp.error["ok_to_retry"] is False
    assert "create_vm" in resp.error["message"]
    assert set(daemon.instances()) == before_instances
    assert set(daemon.volumes()) == before_volumes
    assert daemon.call("delete_stemcell", cid).ok() is None


def test_settings_file_is_written_even_without_its_directory(daemon, warden_stemcell):
    """A bare root filesystem may lack /var/vcap/bosh: the CPI creates the directories."""
    from boshcpi import config
    from boshcpi.drivers.lxd import settingsio
    from boshcpi.drivers.lxd.host import LXDHost

    vm_cid, _ = daemon.call("create_vm", "agent-dir", warden_stemcell, {}, network(daemon, 26), [], {}).ok()
    daemon.cli_run("exec", vm_cid, "--", "/bin/busybox", "rm", "-rf", "/var/vcap/bosh")
    host = LXDHost(config.load(str(daemon.config_path)))
    settingsio.write_container_file(host, vm_cid, {"agent_id": "again"})
    host.close()
    assert json.loads(daemon.cli_run("exec", vm_cid, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json")) == {
        "agent_id": "again"
    }
    daemon.call("delete_vm", vm_cid).ok()


def test_settings_reach_the_container_when_the_stopped_file_api_fails(daemon, warden_stemcell):
    """LXD 5.0's file API on stopped containers fails now and then under load (forkfile): the CPI
    then writes the settings into the running container and restarts it."""
    resp = daemon.call(
        "create_vm", "agent-ff", warden_stemcell, {}, network(daemon, 27), [], {}, env={"BOSHCPI_FAIL_AT": "forkfile"}
    )
    vm_cid, _ = resp.ok()
    assert "writing it running" in resp.stderr
    settings = json.loads(daemon.cli_run("exec", vm_cid, "--", "cat", "/var/vcap/bosh/warden-cpi-agent-env.json"))
    assert settings["agent_id"] == "agent-ff"
    assert daemon.api(f"/1.0/instances/{vm_cid}")["status"] == "Running"
    daemon.call("delete_vm", vm_cid).ok()


def test_manifest_metadata_never_takes_a_vm_or_disk_from_the_cpi(daemon, warden_stemcell):
    """Tags named like the CPI's own marks (created_by, kind, vm, group, ...) are kept, but elsewhere:
    the VM stays the CPI's (has_vm true, delete_vm deletes it) and the disk stays a persistent disk."""
    vm, _ = daemon.call("create_vm", "agent-meta", warden_stemcell, {}, network(daemon, 97), [], {}).ok()
    disk = daemon.call("create_disk", 16, {}, vm).ok()
    try:
        hostile = {"created_by": "someone-else", "kind": "config", "agent_id": "x", "stemcell": "y", "group": "g",
                   "Created_By": "again", "tag.created_by": "nested", "deployment": "d", "name": "db/0"}  # fmt: skip
        daemon.call("set_vm_metadata", vm, hostile).ok()
        cfg = daemon.api(f"/1.0/instances/{vm}")["config"]
        assert cfg["user.bosh.created_by"] == "boshcpi" and cfg["user.bosh.kind"] == "vm"
        assert cfg["user.bosh.tag.created_by"] in ("someone-else", "again")
        assert cfg["user.bosh.tag.tag.created_by"] == "nested" and cfg["user.bosh.deployment"] == "d"
        assert daemon.call("has_vm", vm).ok() is True
        daemon.call("set_disk_metadata", disk, {"kind": "config", "vm": vm, "created": "0"}).ok()
        vcfg = daemon.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}")["config"]
        assert vcfg["user.bosh.kind"] == "persistent" and vcfg["user.bosh.tag.kind"] == "config"
        assert daemon.call("has_disk", disk).ok() is True
        daemon.call("delete_vm", vm).ok()
        assert vm not in daemon.instances()
    finally:
        daemon.call("delete_vm", vm)
        daemon.call("delete_disk", disk)
