"""What create_vm sends for a virtual machine (this host's LXD cannot run VMs, so the request is
checked here): devices, boot config by stemcell line, and the config drive's contents, decoded from
the volume import exactly as sent. The fake stands in for the daemon's answers only."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from boshcpi import config
from boshcpi.agent import configdisk
from boshcpi.cloud import VMSpec
from boshcpi.dispatch import build_networks
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.cloud import LXDCloud


class RecordingDaemon:
    """Answers like an LXD server that knows one VM image; records every request."""

    header_prefix = "X-LXD-"

    def __init__(self, os_line: str) -> None:
        self.os_line = os_line
        self.sent: list[tuple[str, str, object]] = []
        self.server = {"environment": {"server_clustered": False}}

    def get(self, path, **kw):
        if path.startswith("/1.0/images/aliases/"):
            return {"target": "f" * 64, "type": "virtual-machine"}
        if path.startswith("/1.0/images/"):
            return {"type": "virtual-machine", "properties": {"os": self.os_line, "bosh.stemcell.kind": "vm"}}
        if path.startswith("/1.0/networks/"):
            return {"managed": True}
        raise LXDError(404, "not found")

    def request(self, method, path, body=None, params=None, **kw):
        self.sent.append((method, path, body))
        return {}

    def raw(self, method, path, body=None, headers=None, params=None, **kw):
        self.sent.append((method, path, body))
        return 200, {}, b'{"type": "sync", "metadata": {}}'

    def _result(self, status, payload, wait):
        return {}

    def close(self):
        pass


def make(kind: str, os_line: str):
    cfg = config.from_dict(
        {
            "server": {"network_name": "br0", "storage_pool_name": "fast"},
            "agent": {"mbus": "nats://u:p@10.0.0.1:4222", "ntp": ["ntp"]},
            "agent_config": {"type": kind},
        }
    )
    cloud = LXDCloud(cfg)
    cloud._client = RecordingDaemon(os_line)
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


@pytest.mark.parametrize(
    ("kind", "os_line", "boot"),
    [
        ("CDROM", "ubuntu-jammy", {"security.csm": "true", "security.secureboot": "false"}),
        ("FAT32", "ubuntu-noble", {"security.secureboot": "false"}),
    ],
)
def test_vm_request(kind, os_line, boot):
    cloud = make(kind, os_line)
    vm_cid, nets = cloud.create_vm(spec())
    sent = cloud._client.sent
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
    eph_dev = "e" + vm_cid[3:].replace("-", "")[:19]
    assert devices[eph_dev]["source"] == eph["name"] and "path" not in devices[eph_dev]
    assert devices["cfg"]["source"].startswith(f"vol-c-{vm_cid[3:]}")
    assert cfg["limits.cpu"] == "2" and cfg["limits.memory"] == "4096MiB"
    for key, value in boot.items():
        assert cfg[key] == value
    if "security.csm" not in boot:
        assert "security.csm" not in cfg
    # No secret in instance config; the settings live on the config drive.
    assert "nats://u:p@" not in str(cfg)
    imports = [body for method, path, body in sent if method == "POST" and isinstance(body, bytes)]
    assert len(imports) == 1
    settings = settings_from_import(imports[0])
    assert settings["agent_id"] == "agent-vm" and settings["mbus"] == "nats://u:p@10.0.0.1:4222"
    assert settings["disks"]["system"] == "/dev/sda"
    assert settings["disks"]["ephemeral"] == {"id": eph_dev, "path": "/dev/sdb"}
    assert settings["networks"]["default"]["mac"] == nets["default"]["mac"]
    assert settings["networks"]["default"]["preconfigured"] is False
    # Started last.
    assert sent[-1][:2] == ("PUT", f"/1.0/instances/{vm_cid}/state")


def test_raw_devices_and_config_merge_over_ours():
    cloud = make("CDROM", "ubuntu-jammy")
    cloud.create_vm(
        spec(
            {
                "config": {"limits.cpu": "8", "security.secureboot": True},
                "devices": {
                    "gpu": {"type": "gpu"},
                    "root": {"type": "disk", "path": "/", "pool": "ssd", "size": "20GiB"},
                },
            }
        )
    )
    inst = next(body for method, path, body in cloud._client.sent if path == "/1.0/instances")
    assert inst["config"]["limits.cpu"] == "8" and inst["config"]["security.secureboot"] == "true"
    assert inst["devices"]["gpu"] == {"type": "gpu"} and inst["devices"]["root"]["pool"] == "ssd"
