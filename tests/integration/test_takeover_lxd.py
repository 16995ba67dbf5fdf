"""Taking over a deployment the Go LXD CPI (a2geek/bosh-lxd-cpi-release, the real binary from
../shared/tools) made: its stemcells, disks and snapshots made by the Go CPI itself on this daemon, and
a VM laid out through the daemon's API exactly as its create_vm lays one out (it can only make VMs,
which this host cannot start). boshcpi then makes a director's next calls on all of them, and nothing
is lost or leaked."""

from __future__ import annotations

import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pytest

from boshcpi.agent import iso9660
from boshcpi.drivers.lxd.hostinit import generate_cert
from tests.helpers import SECRETS, go_call, require_tool

POOL = "boshcpi-btrfs"
HTTPS = {"lxd": "https://127.0.0.1:8443", "incus": "https://127.0.0.1:8444"}


@pytest.fixture(scope="module")
def go_cpi():
    path = require_tool("go-lxd-cpi")
    return path


@pytest.fixture(scope="module")
def go_vm_stemcell(tmp_path_factory) -> Path:
    """A VM stemcell image whose root.img (qcow2) is over the 100 MiB the Go CPI looks for."""
    tmp = tmp_path_factory.mktemp("go-stemcell")
    raw = tmp / "root.raw"
    with open(raw, "wb") as fh:
        chunk = (b"boshcpi-takeover " * 64)[:1024] * 1024
        for _ in range(120):
            fh.write(chunk)
    qcow2 = tmp / "root.img"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    raw.unlink()
    image = tmp / "image"
    with tarfile.open(image, "w:gz", compresslevel=1) as tf:
        tf.add(qcow2, arcname="root.img")
    qcow2.unlink()
    return image


class Go:
    """The Go CPI, configured the way its job renders cpi.json, against the test daemon over HTTPS."""

    def __init__(self, binary: Path, ctx, tmp: Path, crt: str, key: str) -> None:
        self.binary, self.ctx = binary, ctx
        self.filestore = tmp / "agent-data"
        self.filestore.mkdir()
        self.config = tmp / "go-cpi.json"
        self.config.write_text(
            json.dumps(
                {
                    "Server": {
                        "Type": ctx.kind,
                        "URL": HTTPS[ctx.kind],
                        "TLSClientCert": crt,
                        "TLSClientKey": key,
                        "InsecureSkipVerify": True,
                        "Project": ctx.project,
                        "Profile": "default",
                        "Network": ctx.config["server"]["network_name"],
                        "ManagedNetworkAssignment": "static",
                        "StoragePool": POOL,
                        "InstanceConfig": {"default": {"security.secureboot": "false"}},
                        "CreateVMLock": {"Enabled": False, "Timeout": "10m", "Path": str(tmp / "create-vm.lock")},
                    },
                    "Agent": {"Mbus": "nats://nats:mbus-s3cret-pw@10.245.0.11:4222", "NTP": []},
                    "AgentConfig": {
                        "SourceType": "CDROM",
                        "Label": "config-2",
                        "MetadataPath": "ec2/latest/meta-data.json",
                        "UserdataPath": "ec2/latest/user-data",
                        "FileStorePath": str(self.filestore),
                    },
                    "ThrottleConfig": {"Enabled": False},
                }
            )
        )

    def call(self, method: str, *args):
        return go_call(self.binary, self.config, method, *args)


@pytest.fixture(params=["lxd", "incus"])
def go(request, go_cpi, tmp_path):
    ctx = request.getfixturevalue(request.param)
    crt, key = generate_cert(str(tmp_path / "tls"), name=f"boshcpi-go-{ctx.kind}")
    key_text = Path(key).read_text()
    SECRETS.update(line for line in key_text.splitlines() if not line.startswith("-----"))
    fingerprint = _trust(ctx, crt)
    try:
        yield Go(go_cpi, ctx, tmp_path, Path(crt).read_text(), key_text)
    finally:
        subprocess.run([ctx.cli, "config", "trust", "remove", fingerprint], capture_output=True)


def _trust(ctx, crt: str) -> str:
    args = ["config", "trust", "add", crt] if ctx.kind == "lxd" else ["config", "trust", "add-certificate", crt]
    subprocess.run([ctx.cli, *args], check=True, capture_output=True)
    out = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256"], capture_output=True)
    return out.stdout.decode().split("=", 1)[1].strip().replace(":", "").lower()


def _post(ctx, path: str, body: dict | None = None, method: str = "POST") -> None:
    sep = "&" if "?" in path else "?"
    args = [ctx.cli, "query", "--wait", "-X", method, f"{path}{sep}project={ctx.project}"]
    if body is not None:
        args += ["-d", json.dumps(body)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{method} {path}: {proc.stderr}"


def go_style_vm(ctx, go: Go, stemcell: str, with_disk: str | None) -> tuple[str, str, str]:
    """What the Go CPI's create_vm makes (src/cpi/create_vm.go, utils_agent.go, utils_disk.go): an
    instance vm-<uuid> with a bridged eth0 and a root disk, an ephemeral block volume vol-e-<its own
    uuid> as device `ephemeral`, its settings in <filestore>/<vm>.json and on an `iso` config drive
    vol-c-<uuid> as device `config`; a disk it attached is device `persistent-1` with hint /dev/sdc."""
    vm = f"vm-{uuid.uuid4()}"
    eph = f"vol-e-{uuid.uuid4()}"
    cfg = f"vol-c-{uuid.uuid4()}"
    network = ctx.config["server"]["network_name"]
    settings = {
        "agent_id": "go-agent",
        "vm": {"name": vm, "id": vm},
        "mbus": "nats://nats:mbus-s3cret-pw@10.245.0.11:4222",
        "ntp": [],
        "blobstore": {"provider": "", "options": None},
        "networks": {},
        "disks": {"system": "/dev/sda", "ephemeral": "/dev/sdb", "persistent": {}},
        "env": {"bosh": {"password": "env-s3cret-pw"}},
    }
    if with_disk:
        settings["disks"]["persistent"][with_disk] = {"path": "/dev/sdc"}
    _post(
        ctx,
        "/1.0/instances",
        {
            "name": vm,
            "type": "virtual-machine",
            "source": {"type": "image", "alias": stemcell},
            "profiles": ["default"],
            "config": {"security.secureboot": "false"},
            "devices": {
                "eth0": {"name": "eth0", "nictype": "bridged", "parent": network, "type": "nic"},
                "root": {"type": "disk", "pool": POOL, "path": "/"},
            },
        },
    )
    _post(
        ctx,
        f"/1.0/storage-pools/{POOL}/volumes/custom",
        {"name": eph, "type": "custom", "content_type": "block", "config": {"size": "64MiB"}},
    )
    (go.filestore / f"{vm}.json").write_text(json.dumps(settings))
    iso = iso9660.build(
        {"ec2/latest/user-data": json.dumps(settings).encode(), "ec2/latest/meta-data.json": b'{"public-keys":null}'},
        label="config-2",
    )
    upload = subprocess.run(
        [ctx.cli, "--project", ctx.project, "storage", "volume", "import", POOL, "-", cfg, "--type=iso"],
        input=iso,
        capture_output=True,
    )
    if upload.returncode != 0:  # written to a file: some clients cannot read the backup from stdin
        path = go.filestore.parent / f"{cfg}.iso"
        path.write_bytes(iso)
        ctx.cli_run("storage", "volume", "import", POOL, str(path), cfg, "--type=iso")
    devices = {
        "ephemeral": {"type": "disk", "pool": POOL, "source": eph},
        "config": {"type": "disk", "pool": POOL, "source": cfg},
    }
    if with_disk:
        devices["persistent-1"] = {"type": "disk", "pool": POOL, "source": with_disk}
    inst = ctx.api(f"/1.0/instances/{vm}")
    inst["devices"].update(devices)
    _post(
        ctx,
        f"/1.0/instances/{vm}",
        {k: inst[k] for k in ("config", "devices", "profiles", "description")},
        method="PUT",
    )
    return vm, eph, cfg


GO_PROPS = {
    "name": "bosh-openstack-kvm-ubuntu-jammy-go_agent",
    "version": "1.99",
    "disk": 3072,
    "os_distro": "ubuntu",
    "architecture": "x86_64",
    "infrastructure": "openstack",
    "disk_format": "qcow2",
}


def test_takeover_of_go_stemcells_disks_and_snapshots(go, go_vm_stemcell):
    ctx = go.ctx
    before = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    stemcell = go.call("create_stemcell", str(go_vm_stemcell), GO_PROPS)
    assert stemcell.startswith("img-")
    # The Go CPI's create_disk needs a VM hint it can look up (it dereferences it): a container will do.
    holder = f"vm-{uuid.uuid4()}"
    ctx.cli_run("init", "--empty", holder, "-s", POOL)
    try:
        disk = go.call("create_disk", 64, {}, holder)
    finally:
        ctx.cli_run("delete", "--force", holder)
    assert disk.startswith("vol-p-")
    go_snap = go.call("snapshot_disk", disk, {"deployment": "cf"})
    assert go_snap.startswith(f"{disk}_snap-")

    # boshcpi takes the Go CPI's disk, snapshots and stemcell over.
    assert ctx.call("has_disk", disk).ok() is True
    assert ctx.call("set_disk_metadata", disk, {"deployment": "cf", "instance_group": "db"}).ok() is None
    ours = ctx.call("snapshot_disk", disk, {}).ok()
    assert ctx.call("delete_snapshot", go_snap).ok() is None
    assert ctx.call("delete_snapshot", ours).ok() is None
    assert ctx.api(f"/1.0/storage-pools/{POOL}/volumes/custom/{disk}/snapshots") == []
    assert ctx.call("resize_disk", disk, 128).ok() is None
    assert ctx.api(f"/1.0/storage-pools/{POOL}/volumes/custom/{disk}")["config"]["size"] == "128MiB"
    # A boshcpi VM from the Go CPI's stemcell: boots where VMs run; here it fails cleanly.
    resp = ctx.call("create_vm", "agent-new", stemcell, {"ephemeral_disk": 64}, {}, [], {})
    if _can_run_vms(ctx):
        ctx.call("delete_vm", resp.ok()[0]).ok()
    else:
        assert resp.error_type == "Bosh::Clouds::VMCreationFailed"
    assert ctx.call("delete_disk", disk).ok() is None
    assert ctx.call("delete_stemcell", stemcell).ok() is None
    assert (set(ctx.instances()), set(ctx.volumes()), set(ctx.images())) == before


def _can_run_vms(ctx) -> bool:
    env = ctx.api("/1.0")["environment"]
    types = env.get("instance_types") or (["virtual-machine"] if "qemu" in str(env.get("driver", "")) else [])
    return "virtual-machine" in types


def test_takeover_of_a_go_vm(go, go_vm_stemcell):
    ctx = go.ctx
    if "custom_volume_iso" not in ctx.api("/1.0")["api_extensions"]:
        pytest.skip(f"not run: {ctx.kind} has no iso volumes (custom_volume_iso), so the Go CPI cannot make VMs on it")
    if not _can_run_vms(ctx):
        pytest.skip(
            f"not run: {ctx.kind} here has no virtual-machine support (vhost_vsock), so no VM exists to take over"
        )
    before = (set(ctx.instances()), set(ctx.volumes()), set(ctx.images()))
    stemcell = go.call("create_stemcell", str(go_vm_stemcell), GO_PROPS)
    vm, eph, cfg_vol = go_style_vm(ctx, go, stemcell, None)
    disk = go.call("create_disk", 64, {}, vm)
    _takeover_vm(ctx, go, vm, eph, cfg_vol, disk)
    assert ctx.call("delete_disk", disk).ok() is None
    assert ctx.call("delete_stemcell", stemcell).ok() is None
    assert (set(ctx.instances()), set(ctx.volumes()), set(ctx.images())) == before


def test_cleanup_recognises_the_go_cpis_leftovers(go, tmp_path):
    """What the Go CPI leaves behind (a config drive a running VM kept, an ephemeral volume of a VM
    that is gone) is listed and removed; its persistent disks and snapshots never are."""
    ctx = go.ctx
    leftovers = {f"vol-e-{uuid.uuid4()}"}
    _post(
        ctx,
        f"/1.0/storage-pools/{POOL}/volumes/custom",
        {"name": next(iter(leftovers)), "type": "custom", "content_type": "block", "config": {"size": "16MiB"}},
    )
    if "custom_volume_iso" in ctx.api("/1.0")["api_extensions"]:
        drive = f"vol-c-{uuid.uuid4()}"
        ctx.cli_run("storage", "volume", "import", POOL, str(_iso_file(go)), drive, "--type=iso")
        leftovers.add(drive)
    disk = f"vol-p-{uuid.uuid4()}"
    _post(
        ctx,
        f"/1.0/storage-pools/{POOL}/volumes/custom",
        {"name": disk, "type": "custom", "content_type": "block", "config": {"size": "16MiB"}},
    )
    _post(ctx, f"/1.0/storage-pools/{POOL}/volumes/custom/{disk}/snapshots", {"name": f"snap-{uuid.uuid4()}"})
    from tests.helpers import BOSHCPI, ROOT

    out = subprocess.run(
        [*BOSHCPI, "cleanup", "--config", str(ctx.config_path), "--older-than", "0s", "--apply", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    removed = {o["name"] for o in json.loads(out.stdout)["orphans"] if o["removed"]}
    assert removed == leftovers, out.stderr
    assert disk in ctx.volumes() and len(ctx.api(f"/1.0/storage-pools/{POOL}/volumes/custom/{disk}/snapshots")) == 1
    ctx.call("delete_disk", disk).ok()


def _takeover_vm(ctx, go: Go, vm: str, eph: str, cfg_vol: str, disk: str) -> None:
    # The Go CPI attached the disk: device persistent-1, hint /dev/sdc, settings in its filestore.
    settings = json.loads((go.filestore / f"{vm}.json").read_text())
    settings["disks"]["persistent"][disk] = {"path": "/dev/sdc"}
    (go.filestore / f"{vm}.json").write_text(json.dumps(settings))
    inst = ctx.api(f"/1.0/instances/{vm}")
    inst["devices"]["persistent-1"] = {"type": "disk", "pool": POOL, "source": disk}
    _post(
        ctx,
        f"/1.0/instances/{vm}",
        {k: inst[k] for k in ("config", "devices", "profiles", "description")},
        method="PUT",
    )
    cfg = ctx.write_config(agent_config={"filestore_path": str(go.filestore)})

    def call(method, *args):
        from tests.helpers import call as cpi

        return cpi(cfg, method, *args)

    assert call("has_vm", vm).ok() is True
    assert call("get_disks", vm).ok() == [disk]
    assert call("set_vm_metadata", vm, {"deployment": "cf", "name": "db/0"}).ok() is None
    assert ctx.api(f"/1.0/instances/{vm}")["description"] == "cf/db/0"
    # detach the Go-attached disk: its device goes, and the settings (read from the Go CPI's copy)
    # lose it; the new settings are on a new config drive of boshcpi's (with its readable copy).
    assert call("detach_disk", vm, disk).ok() is None
    devices = ctx.api(f"/1.0/instances/{vm}")["devices"]
    assert "persistent-1" not in devices and devices["config"]["source"] != cfg_vol
    new_cfg = devices["config"]["source"]
    assert cfg_vol not in ctx.volumes() and f"{new_cfg}-b" in ctx.volumes()
    assert not (go.filestore / f"{vm}.json").exists()
    # attach again (boshcpi's device and hint), with the settings now read from its own copy.
    hint = call("attach_disk", vm, disk).ok()
    device = next(n for n, d in ctx.api(f"/1.0/instances/{vm}")["devices"].items() if d.get("source") == disk)
    assert hint == {"path": f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{ctx.kind}_{device}"}
    assert call("get_disks", vm).ok() == [disk]
    assert call("detach_disk", vm, disk).ok() is None
    # delete_vm removes the instance, its ephemeral volume (its own uuid) and its config drive, never
    # the persistent disk; cleanup then finds nothing of it.
    volumes = set(ctx.volumes())
    assert call("delete_vm", vm).ok() is None
    assert vm not in ctx.instances()
    gone = volumes - set(ctx.volumes())
    assert gone == {eph, new_cfg, f"{new_cfg}-b"} and disk in ctx.volumes()
    # A Go config drive its VM left behind (the Go CPI kept drives of running VMs): cleanup's.
    leftover = f"vol-c-{uuid.uuid4()}"
    ctx.cli_run("storage", "volume", "import", POOL, str(_iso_file(go)), leftover, "--type=iso")
    from tests.helpers import BOSHCPI, ROOT

    out = subprocess.run(
        [*BOSHCPI, "cleanup", "--config", str(cfg), "--older-than", "0s", "--apply", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    removed = [(o["kind"], o["name"]) for o in json.loads(out.stdout)["orphans"]]
    assert removed == [("config-volume", leftover)], out.stderr
    assert disk in ctx.volumes()


def _iso_file(go: Go) -> Path:
    path = go.filestore.parent / "leftover.iso"
    path.write_bytes(iso9660.build({"ec2/latest/user-data": b"{}"}, label="config-2"))
    return path
