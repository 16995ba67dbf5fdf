"""Whole create_vm plans for LXD and Incus (vmplan.plan), read as values: containers and VMs (which
this host cannot run), on each server's boot keys, with managed and unmanaged networks, a vip, the
Go CPI's dhcp assignment, a cluster target and an instance group. No daemon: the facts are given."""

from __future__ import annotations

import itertools

import pytest

from boshcpi import config
from boshcpi.cloud import VMSpec, parse_vm_size
from boshcpi.dispatch import build_networks
from boshcpi.drivers.lxd import vmplan
from boshcpi.protocol import CpiError
from tests.helpers import manual_network

VM_CID = "vm-11111111-2222-3333-4444-555555555555"
DRIVE = "vol-c-11111111-2222-3333-4444-555555555555-abcdef"
MARK = "1796680650 boot/pidns/42/1000"
MBUS = "nats://u:p@10.0.0.1:4222"


def cfg(**server):
    return config.from_dict(
        {
            "server": {"network_name": "br0", "storage_pool_name": "fast", **server},
            "agent": {"mbus": MBUS, "ntp": ["ntp.example"]},
            "agent_config": {"type": "FAT32"},
        }
    )


def net(ip, gateway=True, **extra):
    return manual_network(ip, "10.245.0.1", gateway, **extra)


def spec(nets, props=None, env=None):
    return VMSpec(
        agent_id="agent-1",
        stemcell_cid="img-1",
        cloud_properties=props if props is not None else {"cpus": 2, "memory": 2048, "ephemeral_disk": 1024},
        networks=build_networks("create_vm", nets),
        disk_cids=(),
        env=env if env is not None else {"bosh": {}},
        raw_networks=nets,
    )


def make(c, s, vm=None, managed=None, target=""):
    macs = (f"02:00:00:00:00:{i:02x}" for i in itertools.count())
    facts = vmplan.Facts(vm=vm, managed=managed or {"br0": True}, target=target, creating=MARK)
    return vmplan.plan(c, s, parse_vm_size(s.cloud_properties), facts, VM_CID, lambda: next(macs), lambda _: DRIVE)


def agent_net(raw, mac, preconfigured):
    return {**raw, "routes": [], "mac": mac, "preconfigured": preconfigured}


ETH0 = {"type": "nic", "name": "eth0", "hwaddr": "02:00:00:00:00:00", "network": "br0", "ipv4.address": "10.245.0.20"}
MARKS = {
    "user.bosh.kind": "vm",
    "user.bosh.agent_id": "agent-1",
    "user.bosh.stemcell": "img-1",
    "user.bosh.created_by": "boshcpi",
    "user.bosh.creating": MARK,
}


def test_a_container_on_a_managed_network():
    nets = {"default": net("10.245.0.20")}
    p = make(cfg(), spec(nets, env={"bosh": {"group": "db"}}), target="m2")
    entry = agent_net(nets["default"], "02:00:00:00:00:00", True)  # the bridge's lease, not the agent's
    assert p == vmplan.Plan(
        vm_cid=VM_CID,
        is_vm=False,
        target="m2",
        ephemeral=vmplan.Volume("vol-e-11111111-2222-3333-4444-555555555555", 1024, "filesystem"),
        config_drive="",
        settings={
            "agent_id": "agent-1",
            "vm": {"name": VM_CID, "id": VM_CID},
            "mbus": MBUS,
            "ntp": ["ntp.example"],
            "networks": {"default": entry},
            "disks": {"system": "", "ephemeral": "/var/vcap/data", "persistent": {}},
            "env": {"bosh": {"group": "db"}},
        },
        instance={
            "name": VM_CID,
            "type": "container",
            "source": {"type": "image", "alias": "img-1"},
            "config": {
                "limits.cpu": "2",
                "limits.memory": "2048MiB",
                "security.privileged": "true",
                "security.nesting": "true",
                **MARKS,
                "user.bosh.group": "db",
            },
            "devices": {
                "root": {"type": "disk", "path": "/", "pool": "fast"},
                "eth0": ETH0,
                "ephemeral": {
                    "type": "disk",
                    "pool": "fast",
                    "source": "vol-e-11111111-2222-3333-4444-555555555555",
                    "path": "/var/vcap/data",
                },
            },
            "profiles": ["default"],
            "description": "bosh agent agent-1",
        },
        addresses=frozenset({("br0", "10.245.0.20")}),
        networks={"default": {**nets["default"], "type": "manual", "mac": "02:00:00:00:00:00"}},
    )


@pytest.mark.parametrize(
    ("server", "boot_mode", "iso", "boot"),
    [
        ("lxd", True, False, {"boot.mode": "bios"}),  # LXD 6.6+: instance_boot_mode
        ("lxd", False, False, {"security.csm": "true", "security.secureboot": "false"}),  # LXD 5.0
        ("incus", False, True, {"security.csm": "true", "security.secureboot": "false"}),
    ],
)
def test_a_vm_with_its_config_drive_and_boot_keys(server, boot_mode, iso, boot):
    nets = {"default": net("10.245.0.20"), "db": net("10.246.0.5", gateway=False, cloud_properties={"name": "br1"})}
    c = cfg(instance_config={"jammy": {"security.csm": "true"}, "default": {}})
    vm = vmplan.VMFacts(image_properties={"os": "ubuntu-jammy"}, boot_mode=boot_mode, server_type=server, uses_iso=iso)
    p = make(c, spec(nets), vm=vm, managed={"br0": True, "br1": True})
    serial = f"/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_{server}_"
    drive = {"type": "disk", "pool": "fast", "source": DRIVE}
    if not iso:
        drive["readonly"] = "true"  # a block drive: the guest cannot rewrite what the CPI reads back
    assert p.is_vm and p.config_drive == DRIVE and p.target == ""
    assert p.ephemeral == vmplan.Volume("vol-e-11111111-2222-3333-4444-555555555555", 1024, "block")
    assert p.instance["type"] == "virtual-machine"
    assert p.instance["config"] == {"limits.cpu": "2", "limits.memory": "2048MiB", **boot, **MARKS}
    # The default-gateway network is eth0; each BOSH network its own LXD network.
    assert p.instance["devices"] == {
        "root": {"type": "disk", "path": "/", "pool": "fast"},
        "eth0": ETH0,
        "eth1": {
            "type": "nic",
            "name": "eth1",
            "hwaddr": "02:00:00:00:00:01",
            "network": "br1",
            "ipv4.address": "10.246.0.5",
        },
        "ephemeral": {"type": "disk", "pool": "fast", "source": "vol-e-11111111-2222-3333-4444-555555555555"},
        "metadata": drive,
    }
    assert p.settings["disks"] == {
        "system": serial + "root",
        "ephemeral": {"path": serial + "ephemeral"},
        "persistent": {},
    }
    # A VM's agent configures its interfaces by MAC.
    assert p.settings["networks"] == {
        "default": agent_net(nets["default"], "02:00:00:00:00:00", False),
        "db": agent_net(nets["db"], "02:00:00:00:00:01", False),
    }
    assert p.addresses == {("br0", "10.245.0.20"), ("br1", "10.246.0.5")}


def test_an_unmanaged_bridge_a_vip_and_the_go_dhcp_assignment():
    nets = {
        "default": net("10.245.0.20"),
        "lan": net("192.168.1.9", gateway=False, cloud_properties={"name": "hostbr"}),
        "public": {"type": "vip", "ip": "203.0.113.4", "cloud_properties": {}},
    }
    vm = vmplan.VMFacts(image_properties={}, boot_mode=True, server_type="lxd", uses_iso=False)
    c = cfg(managed_network_assignment="dhcp", instance_config={"default": {}})
    p = make(c, spec(nets, {"instance_type": "t2.micro"}), vm=vm, managed={"br0": True, "hostbr": False})
    devices = p.instance["devices"]
    # An unmanaged bridge is joined by name and pins nothing; a vip has no NIC.
    assert devices["eth1"] == {
        "type": "nic",
        "name": "eth1",
        "hwaddr": "02:00:00:00:00:01",
        "nictype": "bridged",
        "parent": "hostbr",
    }
    assert [n for n in devices if n.startswith("eth")] == ["eth0", "eth1"]
    assert p.addresses == {("br0", "10.245.0.20")}
    # dhcp (the Go CPI's): the address is the NIC's lease, the agent is told the network is dynamic.
    assert devices["eth0"]["ipv4.address"] == "10.245.0.20"
    assert p.settings["networks"]["default"]["type"] == "dynamic" and p.networks["default"]["type"] == "dynamic"
    assert p.networks["public"]["mac"] == "02:00:00:00:00:02"
    # A name the daemon knows sizes the VM there; no limits of the CPI's own; no ephemeral disk asked.
    assert p.instance["instance_type"] == "t2.micro" and "limits.cpu" not in p.instance["config"]
    assert p.ephemeral is None and "ephemeral" not in devices


def test_what_a_plan_refuses():
    nets = {"a": net("10.245.0.20"), "b": net("10.245.0.21", gateway=False)}
    with pytest.raises(CpiError, match="both reach LXD network 'br0'"):
        make(cfg(), spec(nets))
    vm = vmplan.VMFacts(image_properties={"os": "ubuntu-noble"}, boot_mode=False, server_type="lxd", uses_iso=False)
    with pytest.raises(CpiError, match="no entry matches"):
        make(cfg(instance_config={"jammy": {}}), spec({"a": net("10.245.0.20")}), vm=vm)
    with pytest.raises(CpiError, match="only for containers"):
        make(cfg(instance_config={"default": {}}), spec({"a": net("10.245.0.20")}, {"nested_containers": True}), vm=vm)


def test_nested_containers_and_the_raw_config_a_container_gets():
    nets = {"default": net("10.245.0.20")}
    props = {"nested_containers": True, "config": {"raw.lxc": "lxc.apparmor.profile = unconfined"}}
    p = make(cfg(allow_raw_config=True), spec(nets, props))
    c = p.instance["config"]
    assert c["raw.lxc"] == "lxc.apparmor.profile = unconfined\n" + vmplan.NESTED_RAW_LXC
    assert c["security.syscalls.deny_default"] == "false" and c["security.nesting"] == "true"


def test_check_raw_names_the_pool_volumes_to_ask_about():
    props = {"devices": {"data": {"type": "disk", "pool": "p", "source": "v", "path": "/d"}, "t": {"type": "tpm"}}}
    assert vmplan.check_raw(cfg(), props) == [("data", "p", "v")]
    with pytest.raises(CpiError, match="CPI-managed disk"):
        vmplan.check_raw(cfg(), {"devices": {"x": {"type": "disk", "pool": "p", "source": DRIVE}}})
    with pytest.raises(CpiError, match="allow_raw_config"):
        vmplan.check_raw(cfg(), {"config": {"security.privileged": "true"}})
