"""What create_vm sends for a virtual machine (this host's LXD cannot run VMs, so the request is
checked here): devices, boot config by stemcell line, and the config drive's contents, decoded from
the volume import exactly as sent. The fake stands in for the daemon's answers only."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from boshcpi import config, lease
from boshcpi.agent import configdisk
from boshcpi.cloud import VMSpec
from boshcpi.dispatch import build_networks
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.cloud import LXDCloud
from boshcpi.protocol import CpiError

# API extensions that change what create_vm sends, by daemon version.
EXTENSIONS = {
    "lxd-5.0": (),
    "lxd-5.21": ("custom_volume_iso", "disk_io_bus"),
    "lxd-6.7": ("custom_volume_iso", "disk_io_bus", "instance_boot_mode"),
    "incus-6.0": ("custom_volume_iso", "disk_io_bus"),
}


class RecordingDaemon:
    """Answers like an LXD/Incus server that knows one VM image; records every request."""

    def __init__(self, os_line: str, daemon: str = "lxd-5.0") -> None:
        self.os_line = os_line
        self.daemon = daemon
        self.header_prefix = "X-Incus-" if daemon.startswith("incus") else "X-LXD-"
        self.sent: list[tuple[str, str, object]] = []
        self.headers: list[dict] = []
        self.params: list[tuple[str, str, dict]] = []  # (method, path, params) of every request
        self.server = {"environment": {"server_clustered": False}, "api_extensions": list(EXTENSIONS[daemon])}

    def has_extension(self, name):
        return name in EXTENSIONS[self.daemon]

    @property
    def server_type(self):
        return "incus" if self.daemon.startswith("incus") else "lxd"

    def get(self, path, **kw):
        if path.startswith("/1.0/images/aliases/"):
            return {"target": "f" * 64, "type": "virtual-machine"}
        if path.startswith("/1.0/images/"):
            return {"type": "virtual-machine", "properties": {"os": self.os_line, "bosh.stemcell.kind": "vm"}}
        if path.startswith("/1.0/networks/"):
            return {"managed": True}
        if path == "/1.0/instances":
            return []  # no other instance holds the new VM's address
        if path == "/1.0/resources":
            return {"cpu": {"total": 8}, "memory": {"total": 16 << 30}}
        if path.endswith("/resources"):
            return {"space": {"total": 100 << 30, "used": 0}}
        if "/volumes/custom/" in path:
            return {"config": {"size": "4096"}, "content_type": "iso"}
        raise LXDError(404, "not found")

    def request(self, method, path, body=None, params=None, **kw):
        self.sent.append((method, path, body))
        self.params.append((method, path, dict(params or {})))
        return {}

    def raw(self, method, path, body=None, headers=None, params=None, **kw):
        self.sent.append((method, path, body))
        self.params.append((method, path, dict(params or {})))
        self.headers.append(dict(headers or {}))
        return 200, {}, b'{"type": "sync", "metadata": {}}'

    def answer(self, status, payload, wait):
        return {}

    def daemon_time(self):
        return None  # as a client before its first answer: the CPI uses its own clock then

    def close(self):
        pass


def make(kind: str, os_line: str, daemon: str = "lxd-5.0", **server):
    cfg = config.from_dict(
        {
            "server": {
                "type": "incus" if daemon.startswith("incus") else "lxd",
                "network_name": "br0",
                "storage_pool_name": "fast",
                **server,
            },
            "agent": {"mbus": "nats://u:p@10.0.0.1:4222", "ntp": ["ntp"]},
            "agent_config": {"type": kind},
        }
    )
    cloud = LXDCloud(cfg)
    cloud.host.client = RecordingDaemon(os_line, daemon)
    return cloud


NETS = {
    "default": {
        "type": "manual",
        "ip": "10.245.0.20",
        "netmask": "255.255.255.0",
        "gateway": "10.245.0.1",
        "dns": ["10.245.0.1"],
        "default": ["dns", "gateway"],
        "cloud_properties": {},
    }
}


def spec(props=None):
    return VMSpec(
        agent_id="agent-vm",
        stemcell_cid="img-1",
        cloud_properties=props or {"instance_type": "c2-m4", "ephemeral_disk": 2048},
        networks=build_networks("create_vm", NETS),
        disk_cids=(),
        env={"bosh": {}},
        raw_networks=NETS,
    )


def settings_from_import(body: bytes) -> dict:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(body))) as tf:
        index = tf.extractfile("backup/index.yaml").read().decode()
        assert "content_type: block" in index and "user.bosh.kind" in index
        image = tf.extractfile("backup/volume.img").read()
    return configdisk.read_settings(image, userdata_path="ec2/latest/user-data")


def imports(cloud) -> list[tuple[str, dict, bytes]]:
    """(path, headers, body) of every volume import (backup tarballs and iso uploads) sent."""
    d = cloud.host.client
    raws = [(m, p, b) for m, p, b in d.sent if isinstance(b, bytes)]
    return [(p, h, b) for (m, p, b), h in zip(raws, d.headers, strict=True) if m == "POST"]


@pytest.mark.parametrize("daemon", sorted(EXTENSIONS))
@pytest.mark.parametrize(
    ("kind", "os_line", "boot"),
    [
        ("CDROM", "ubuntu-jammy", {"security.csm": "true", "security.secureboot": "false"}),
        ("FAT32", "ubuntu-noble", {"security.secureboot": "false"}),
    ],
)
def test_vm_request(kind, os_line, boot, daemon):
    cloud = make(kind, os_line, daemon)
    prefix = "incus_" if daemon.startswith("incus") else "lxd_"
    vm_cid, nets = cloud.create_vm(spec())
    sent = cloud.host.client.sent
    posts = {path: body for method, path, body in sent if method == "POST" and isinstance(body, dict)}
    # Ephemeral disk: a block volume of the asked size, owned by the VM.
    eph = posts["/1.0/storage-pools/fast/volumes/custom"]
    assert eph["content_type"] == "block" and eph["config"]["size"] == "2048MiB"
    assert eph["config"]["user.bosh.vm"] == vm_cid
    inst = posts["/1.0/instances"]
    assert inst["type"] == "virtual-machine" and inst["source"] == {"type": "image", "alias": "img-1"}
    devices, cfg = inst["devices"], inst["config"]
    assert devices["root"] == {"type": "disk", "path": "/", "pool": "fast"}  # no size: no full copy
    assert devices["eth0"] == {
        "type": "nic",
        "name": "eth0",
        "hwaddr": nets["default"]["mac"],
        "network": "br0",
        "ipv4.address": "10.245.0.20",
    }
    # Device names sort root < ephemeral < config drive < persistent disks (p...), the order the
    # guest's SCSI targets follow (devices_sort.go: root first, then by name).
    assert devices["ephemeral"] == {"type": "disk", "pool": "fast", "source": eph["name"]}
    assert devices["metadata"]["source"].startswith(f"vol-c-{vm_cid[3:]}")
    assert sorted(n for n, d in devices.items() if d["type"] == "disk" and n != "root") == ["ephemeral", "metadata"]
    assert cfg["limits.cpu"] == "2" and cfg["limits.memory"] == "4096MiB"
    if daemon == "lxd-6.7":
        # boot.mode replaced security.csm/security.secureboot (API extension instance_boot_mode).
        assert cfg["boot.mode"] == ("bios" if boot.get("security.csm") == "true" else "uefi-nosecureboot")
        assert "security.csm" not in cfg and "security.secureboot" not in cfg
    else:
        for key, value in boot.items():
            assert cfg[key] == value
        if "security.csm" not in boot:
            assert "security.csm" not in cfg
    # No secret in instance config; the settings live on the config drive.
    assert "nats://u:p@" not in str(cfg)
    uploads = imports(cloud)
    iso = kind == "CDROM" and daemon != "lxd-5.0"
    if iso:
        # Where the daemon has iso volumes a CDROM drive is one (a CD-ROM in the guest, no sd letter),
        # with a block copy of the same image beside it for reading back.
        iso_up = [(p, h, b) for p, h, b in uploads if h.get(f"{cloud.host.client.header_prefix}type") == "iso"]
        assert (
            len(iso_up) == 1 and iso_up[0][1][f"{cloud.host.client.header_prefix}name"] == devices["metadata"]["source"]
        )
        image = iso_up[0][2]
        assert image[16 * 2048 + 1 : 16 * 2048 + 6] == b"CD001"
        settings = configdisk.read_settings(image, userdata_path="ec2/latest/user-data")
        copies = [b for p, h, b in uploads if h.get(f"{cloud.host.client.header_prefix}name", "").endswith("-b")]
        assert len(copies) == 1 and settings_from_import(copies[0]) == settings
        assert "readonly" not in devices["metadata"]  # a CD-ROM
    else:
        assert len(uploads) == 1
        settings = settings_from_import(uploads[0][2])
        # A block config drive is attached read-only: the guest cannot rewrite what the CPI reads back.
        assert devices["metadata"]["readonly"] == "true"
    assert settings["agent_id"] == "agent-vm" and settings["mbus"] == "nats://u:p@10.0.0.1:4222"
    # The agent finds the ephemeral disk by path only: the by-id link of its serial.
    assert settings["disks"]["ephemeral"] == {"path": f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{prefix}ephemeral"}
    assert settings["disks"]["system"] == f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{prefix}root"
    assert settings["networks"]["default"]["mac"] == nets["default"]["mac"]
    assert settings["networks"]["default"]["preconfigured"] is False
    # Started last; then the `creating` mark goes: the VM is the director's once create_vm answers.
    assert sent[-2][:2] == ("PUT", f"/1.0/instances/{vm_cid}/state")
    assert sent[-1] == ("PATCH", f"/1.0/instances/{vm_cid}", {"config": {"user.bosh.creating": ""}})
    # The mark names when and which process (boshcpi.lease.identity): the reclaim of a retry never takes
    # a live call's attempt.
    when, who = cfg["user.bosh.creating"].split()
    assert when.isdigit() and who == lease.identity()


def test_go_dhcp_assignment_pins_the_address_and_tells_the_agent_dynamic():
    cloud = make("FAT32", "ubuntu-noble", managed_network_assignment="dhcp")
    _vm_cid, nets = cloud.create_vm(spec())
    inst = next(b for m, p, b in cloud.host.client.sent if p == "/1.0/instances")
    assert inst["devices"]["eth0"]["ipv4.address"] == "10.245.0.20"
    settings = settings_from_import(imports(cloud)[0][2])
    assert settings["networks"]["default"]["type"] == "dynamic" and nets["default"]["type"] == "dynamic"
    agent = make("FAT32", "ubuntu-noble", managed_network_assignment="agent")
    agent.create_vm(spec())
    inst = next(b for m, p, b in agent.host.client.sent if p == "/1.0/instances")
    assert "ipv4.address" not in inst["devices"]["eth0"]


def test_instance_config_default_key_and_named_instance_types():
    cloud = make("FAT32", "ubuntu-noble", instance_config={"jammy": {"security.csm": "true"}, "default": {"x.y": "1"}})
    cloud.create_vm(spec({"instance_type": "t2.micro", "network": "br0"}))
    inst = next(b for m, p, b in cloud.host.client.sent if p == "/1.0/instances")
    assert inst["config"]["x.y"] == "1" and "security.csm" not in inst["config"]
    # A name the daemon knows sizes the VM there, as the Go CPI passed it.
    assert inst["instance_type"] == "t2.micro" and "limits.cpu" not in inst["config"]


def test_raw_devices_and_config_need_the_operators_opt_in():
    raw = {
        "config": {"limits.cpu": "8", "security.secureboot": True},
        "devices": {"gpu": {"type": "gpu"}, "hostetc": {"type": "disk", "source": "/etc", "path": "/mnt"}},
    }
    for key in ("config", "devices"):
        cloud = make("CDROM", "ubuntu-jammy")
        with pytest.raises(CpiError, match=f"allow_raw_{key}"):
            cloud.create_vm(spec({key: raw[key]}))
        assert cloud.host.client.sent == []  # refused before the daemon heard of it
    cloud = make("CDROM", "ubuntu-jammy", allow_raw_devices=True, allow_raw_config=True)
    cloud.create_vm(spec(raw))
    inst = next(body for method, path, body in cloud.host.client.sent if path == "/1.0/instances")
    assert inst["config"]["limits.cpu"] == "8" and inst["config"]["security.secureboot"] == "true"
    assert inst["devices"]["gpu"] == {"type": "gpu"} and inst["devices"]["hostetc"]["source"] == "/etc"
    # Safe keys and pool volumes need no opt-in.
    cloud = make("CDROM", "ubuntu-jammy")
    cloud.create_vm(
        spec({"config": {"limits.cpu": "3"}, "devices": {"d": {"type": "disk", "pool": "p", "source": "v"}}})
    )


def test_persistent_hints_follow_the_devices_the_guest_sees():
    from boshcpi.drivers.lxd import disks, naming

    cloud = make("CDROM", "ubuntu-noble")
    new = naming.new_disk_cid("lxd")
    old = "vol-p-" + "1" * 8 + "-2222-3333-4444-" + "5" * 12
    inst = {
        "type": "virtual-machine",
        "devices": {
            "root": {"type": "disk", "path": "/"},
            "ephemeral": {"type": "disk", "source": "vol-e-x"},
            "metadata": {"type": "disk", "source": "vol-c-x"},
            naming.persistent_device(new, "lxd"): {"type": "disk", "source": new},
            "p" + "0" * 19: {"type": "disk", "source": old},  # boshcpi 0.1: a 24-character serial
        },
    }
    settings = {"disks": {"persistent": {new: {}, old: {"path": "/dev/sdc"}}}}
    out = disks.refresh_hints(cloud.host, inst, settings)["disks"]["persistent"]
    assert out[new] == {"path": "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_" + new}
    # The old disk sorts first among the p... devices; the config drive here is an iso (no sd letter):
    # sda root, sdb ephemeral, sdc p000..., sdd the new disk.
    assert out[old] == {"path": "/dev/sdc"}


@pytest.mark.parametrize("daemon", sorted(EXTENSIONS))
@pytest.mark.parametrize(
    ("given", "old_keys", "mode"),
    [
        # LXD's upgrade patch maps security.csm/secureboot to boot.mode (lxd/patches.go); the reverse
        # holds for servers without `instance_boot_mode` (LXD <= 6.5, Incus).
        ({"boot.mode": "bios"}, {"security.csm": "true", "security.secureboot": "false"}, "bios"),
        ({"boot.mode": "uefi-nosecureboot"}, {"security.secureboot": "false"}, "uefi-nosecureboot"),
        ({"boot.mode": "uefi-secureboot"}, {"security.secureboot": "true"}, "uefi-secureboot"),
        # CSM without secure boot off never starts: it is turned off with it.
        ({"security.csm": "true"}, {"security.csm": "true", "security.secureboot": "false"}, "bios"),
        (
            {"security.csm": "true", "security.secureboot": "true"},
            {"security.csm": "true", "security.secureboot": "false"},
            "bios",
        ),
    ],
)
def test_boot_keys_follow_the_server(daemon, given, old_keys, mode):
    cloud = make("FAT32", "ubuntu-noble", daemon, instance_config={"default": given})
    cloud.create_vm(spec())
    cfg = next(b for m, p, b in cloud.host.client.sent if p == "/1.0/instances")["config"]
    boot = {k: v for k, v in cfg.items() if k.startswith(("security.", "boot.mode"))}
    assert boot == ({"boot.mode": mode} if "instance_boot_mode" in EXTENSIONS[daemon] else old_keys)


def test_no_matching_line_and_no_default_is_refused_before_anything_is_made():
    cloud = make("FAT32", "ubuntu-noble", instance_config={"jammy": {"security.csm": "true"}})
    with pytest.raises(CpiError, match=r"instance_config.*no entry matches.*no `default`"):
        cloud.create_vm(spec())
    assert not [p for m, p, b in cloud.host.client.sent if m == "POST"]


def test_an_unknown_boot_mode_is_refused():
    cloud = make("FAT32", "ubuntu-noble", instance_config={"default": {"boot.mode": "legacy"}})
    with pytest.raises(CpiError, match=r"boot\.mode 'legacy'"):
        cloud.create_vm(spec())


def test_after_lxd_to_incus_the_daemon_not_the_config_names_the_serials():
    """cpi.json still says `server.type: lxd` after an `lxd-to-incus` migration: the serials the guest
    sees start with incus_, so new disks, the system and ephemeral hints and every persistent hint
    follow the daemon (GET /1.0 environment.server)."""
    from boshcpi.drivers.lxd import disks, naming

    cloud = make("CDROM", "ubuntu-noble", "incus-6.0", type="lxd")
    assert cloud.host.server_type == "incus"
    assert cloud.host.client.header_prefix == "X-Incus-"
    assert naming.new_disk_cid(cloud.host.server_type).startswith("incus_p")
    cloud.create_vm(spec())
    settings = settings_from_import(next(b for p, h, b in imports(cloud) if h["X-Incus-name"].endswith("-b")))
    assert settings["disks"]["system"].endswith("_incus_root")
    assert settings["disks"]["ephemeral"]["path"].endswith("_incus_ephemeral")
    # A disk made before the migration (lxd_p + 15 hex), attached on Incus: its device keeps the name
    # it had, whose incus_ serial would be 22 characters (over QEMU's 20), so the hint is the sd path
    # the guest gives it, not the lxd_ link that no longer exists.
    migrated = naming.new_disk_cid("lxd")
    inst = {
        "type": "virtual-machine",
        "devices": {
            "root": {"type": "disk", "path": "/"},
            "ephemeral": {"type": "disk", "source": "vol-e-x"},
            "metadata": {"type": "disk", "source": "vol-c-x"},
            migrated[len("lxd_") :]: {"type": "disk", "source": migrated},
        },
    }
    out = disks.refresh_hints(cloud.host, inst, {"disks": {"persistent": {migrated: {}}}})["disks"]["persistent"]
    assert "lxd_" not in out[migrated]["path"]
    assert out[migrated] == {"path": "/dev/sdc"}


@pytest.mark.parametrize("daemon", sorted(EXTENSIONS))
@pytest.mark.parametrize("kind", ["FAT32", "CDROM"])
def test_on_a_cluster_every_volume_of_a_vm_goes_to_its_member(daemon, kind):
    """LXD and Incus look a disk device's volume up on the instance's own member only (lxd
    device/disk.go: the volume is loaded with the instance's node): the config drive, its readable copy
    and the ephemeral disk are all made with the instance's `target`. VMs cannot be created on this
    host (no vhost_vsock), so this checks the requests themselves."""
    cloud = make(kind, "ubuntu-noble", daemon)
    cloud.create_vm(spec({"instance_type": "c1-m1", "ephemeral_disk": 512, "target": "m2"}))
    creates = [
        (m, p, q)
        for m, p, q in cloud.host.client.params
        if m == "POST" and (p.endswith("/volumes/custom") or p == "/1.0/instances")
    ]
    assert len(creates) >= 3  # the ephemeral disk, the config drive (and its copy), the instance
    assert all(q.get("target") == "m2" for _, _, q in creates), creates


def test_predeploy_makes_throwaways_of_the_images_type_on_online_members_only():
    from boshcpi.drivers.lxd import images

    cloud = make("FAT32", "ubuntu-noble")
    d = cloud.host.client
    members = [
        {"server_name": "m1", "status": "Online"},
        {"server_name": "m2", "status": "Offline"},
        {"server_name": "m3", "status": "Evacuated"},
    ]
    real_get = d.get
    d.get = lambda path, **kw: (
        {"enabled": True} if path == "/1.0/cluster" else members if path == "/1.0/cluster/members" else real_get(path)
    )
    d.delete = lambda path, **kw: d.sent.append(("DELETE", path, None))
    images.predeploy(cloud.host, "f" * 64)
    made = [(b, q) for (m, p, b), (_, _, q) in zip(d.sent, d.params, strict=False) if m == "POST"]
    assert len(made) == 1
    body, params = made[0]
    assert params == {"target": "m1"}
    assert body["type"] == "virtual-machine" and body["source"] == {"type": "image", "fingerprint": "f" * 64}
    assert body["config"]["user.bosh.kind"] == "predeploy" and body["config"]["user.bosh.created_by"] == "boshcpi"
    assert [p for m, p, b in d.sent if m == "DELETE"] == [f"/1.0/instances/{body['name']}"]


def test_nested_containers_is_for_containers_only():
    # The server default (the container ops file) leaves VMs alone...
    cloud = make("CDROM", "ubuntu-jammy", nested_containers=True)
    cloud.create_vm(spec())
    inst = next(body for method, path, body in cloud.host.client.sent if path == "/1.0/instances")
    assert "raw.lxc" not in inst["config"] and "security.syscalls.deny_default" not in inst["config"]
    # ...and a VM type that asks for it on a VM is told why not, before anything is made.
    cloud = make("CDROM", "ubuntu-jammy")
    with pytest.raises(CpiError, match="only for containers"):
        cloud.create_vm(spec({"nested_containers": True}))
    assert not [p for m, p, b in cloud.host.client.sent if m in ("POST", "PUT")]
