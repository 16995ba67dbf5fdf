"""Whole create_vm plans for libvirt (vmplan.plan), read as values: the volumes, the settings, the
answer, and the domain XML as libvirt will parse it; FAT32 and CD-ROM config drives, a bridge, a
vip, a bigger root disk, an operator's template. No libvirtd: the facts are given."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

from boshcpi import config
from boshcpi.cloud import VMSpec, parse_vm_size
from boshcpi.dispatch import build_networks
from boshcpi.drivers.libvirt import vmplan
from boshcpi.protocol import CpiError
from tests.helpers import manual_network

VM_CID = "vm-11111111-2222-3333-4444-555555555555"
UID = VM_CID[3:]
DRIVE = f"vol-c-{UID}-abcdef"
POOL = "/var/lib/pools/p"
MBUS = "nats://u:p@10.0.0.1:4222"
FACTS = vmplan.Facts(
    stemcell_path=f"{POOL}/img-1",
    stemcell_format="qcow2",
    stemcell_bytes=5 << 30,
    template=None,
    identity="boot/pidns/42/1000",
    created="1796680650",
)


def cfg(kind="FAT32", **libvirt):
    return config.from_dict(
        {
            "driver": "libvirt",
            "libvirt": {
                "uri": "qemu:///system",
                "domain_type": "kvm",
                "storage_pool_name": "p",
                "network_name": "bosh",
                "console_log_dir": "/var/log/boshcpi",
                **libvirt,
            },
            "agent": {"mbus": MBUS},
            "agent_config": {"type": kind},
        }
    )


NETS = {
    "default": manual_network("10.245.30.10", "10.245.30.1"),
    "lan": {"type": "manual", "ip": "192.168.1.9", "netmask": "255.255.255.0", "cloud_properties": {"bridge": "br9"}},
    "public": {"type": "vip", "ip": "203.0.113.4", "cloud_properties": {}},
}


def make(c, props, facts=FACTS):
    s = VMSpec(
        agent_id="agent-1",
        stemcell_cid="img-1",
        cloud_properties=props,
        networks=build_networks("create_vm", NETS),
        disk_cids=(),
        env={"bosh": {}},
        raw_networks=NETS,
    )
    macs = (f"{prefix}:00:00:{i:02x}" for i, prefix in zip(itertools.count(), itertools.repeat("52:54:00")))
    return vmplan.plan(c, s, parse_vm_size(props), facts, VM_CID, lambda prefix: next(macs), lambda _: DRIVE)


def disks(root):
    return [
        (
            d.get("device"),
            d.find("source").get("file"),
            d.find("target").get("dev"),
            d.find("driver").get("type"),
            d.findtext("serial"),
            d.find("readonly") is not None,
        )
        for d in root.iter("disk")
    ]


def test_a_vm_with_a_fat32_drive_an_ephemeral_disk_a_bridge_and_a_vip():
    p = make(cfg(), {"cpus": 2, "memory": 2048, "ephemeral_disk": 1024, "root_disk_size": 8192})
    assert p.vm_cid == VM_CID and p.config_drive == DRIVE
    # The root overlays the stemcell (the larger of the image and root_disk_size); all in its pool.
    assert p.volumes == (
        vmplan.Volume(f"vm-{UID}-root", f"{POOL}/vm-{UID}-root", 8192 << 20, (f"{POOL}/img-1", "qcow2")),
        vmplan.Volume(f"vol-e-{UID}", f"{POOL}/vol-e-{UID}", 1024 << 20),
    )
    root = ET.fromstring(p.domain_xml)
    assert root.get("type") == "kvm" and root.findtext("name") == VM_CID and root.findtext("uuid") == UID
    assert root.findtext("memory") == "2048" and root.findtext("vcpu") == "2"
    assert root.find("cpu").get("mode") == "host-passthrough"
    meta = root.find("metadata/{https://boshcpi.dev/xmlns/vm/1}vm")
    assert {c.tag.split("}")[-1]: c.text for c in meta} == {
        "agent_id": "agent-1",
        "stemcell": "img-1",
        "created_by": "boshcpi",
        "creating": "boot/pidns/42/1000",
        "created": "1796680650",
    }
    assert disks(root) == [
        ("disk", f"{POOL}/vm-{UID}-root", "vda", "qcow2", "root", False),
        ("disk", f"{POOL}/vol-e-{UID}", "vdb", "qcow2", "ephemeral", False),
        ("disk", f"{POOL}/{DRIVE}", "vdc", "raw", "config-2", True),  # read-only: the guest cannot rewrite it
    ]
    ifaces = [
        (i.get("type"), dict(i.find("source").attrib), i.find("mac").get("address")) for i in root.iter("interface")
    ]
    # The default-gateway network first; a vip has no interface, but the agent is told its MAC.
    assert ifaces == [
        ("network", {"network": "bosh"}, "52:54:00:00:00:00"),
        ("bridge", {"bridge": "br9"}, "52:54:00:00:00:01"),
    ]
    assert root.find("devices/serial/source").get("path") == f"/var/log/boshcpi/{VM_CID}.console.log"
    assert p.settings == {
        "agent_id": "agent-1",
        "vm": {"name": VM_CID, "id": VM_CID},
        "mbus": MBUS,
        "ntp": [],
        "networks": {
            name: {
                **NETS[name],
                "default": NETS[name].get("default", []),
                "dns": NETS[name].get("dns", []),
                "routes": [],
                "mac": f"52:54:00:00:00:0{i}",
                "preconfigured": False,
            }
            for i, name in enumerate(("default", "lan", "public"))
        },
        "disks": {
            "system": "/dev/disk/by-id/virtio-root",
            "ephemeral": {"path": "/dev/disk/by-id/virtio-ephemeral"},
            "persistent": {},
        },
        "env": {"bosh": {}},
    }
    assert p.networks == {
        n: {**NETS[n], "mac": f"52:54:00:00:00:0{i}"} for i, n in enumerate(("default", "lan", "public"))
    }


def test_a_cdrom_drive_on_a_scsi_controller_and_no_ephemeral_disk():
    p = make(cfg("CDROM", domain_type="qemu"), {"cpus": 1, "memory": 512})
    root = ET.fromstring(p.domain_xml)
    assert root.get("type") == "qemu" and root.find("cpu") is None
    assert [v.name for v in p.volumes] == [f"vm-{UID}-root"] and p.volumes[0].size_bytes == 5 << 30
    assert disks(root) == [
        ("disk", f"{POOL}/vm-{UID}-root", "vda", "qcow2", "root", False),
        ("cdrom", f"{POOL}/{DRIVE}", "sda", "raw", None, True),
    ]
    assert root.find("devices/controller").attrib == {"type": "scsi", "index": "0", "model": "virtio-scsi"}
    assert p.settings["disks"]["ephemeral"] == ""


def test_an_operators_template_and_a_bad_one():
    template = "<domain type='${domain_type}'><name>${name}</name><devices>${disks}</devices></domain>"
    facts = vmplan.Facts(**{**FACTS.__dict__, "template": template})
    p = make(cfg(), {"cpus": 1, "memory": 512}, facts)
    root = ET.fromstring(p.domain_xml)
    assert root.findtext("name") == VM_CID and len(disks(root)) == 2
    bad = vmplan.Facts(**{**FACTS.__dict__, "template": "<domain>${nope}</domain>"})
    with pytest.raises(CpiError, match="unknown or bad placeholder 'nope'"):
        make(cfg(), {"cpus": 1, "memory": 512}, bad)
