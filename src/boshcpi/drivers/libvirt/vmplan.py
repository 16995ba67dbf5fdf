"""create_vm on libvirt as a value. `plan` turns the request, the configuration and the facts read
up front (`vmfacts`) into a `Plan`: the volumes to make (the root overlay on the stemcell, the
ephemeral disk), the config drive's name and settings, the whole domain XML, and create_vm's answer.
Nothing here talks to libvirtd or reads a clock: plans are checked whole by unit tests, and
`vmapply` carries them out in order.

A volume's path is its pool's folder and its name (libvirt storage_backend_fs.c and the logical
backend both name a volume `<target path>/<name>`); the pool's folder is the stemcell's, which
lives in the same pool, so the domain XML is written before any volume exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from boshcpi import ids
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.drivers.libvirt import naming
from boshcpi.drivers.libvirt.host import MiB
from boshcpi.drivers.libvirt.xmltree import escape
from boshcpi.protocol import CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.cloud import VMSize, VMSpec
    from boshcpi.config import Config


@dataclass(frozen=True)
class Facts:
    """The stemcell volume (path, format, capacity in bytes); the domain template's text (None: the
    default); the creating process (boshcpi.lease.identity) and the time, for the domain's marks."""

    stemcell_path: str
    stemcell_format: str
    stemcell_bytes: int
    template: str | None
    identity: str
    created: str


@dataclass(frozen=True)
class Volume:
    name: str
    path: str
    size_bytes: int
    backing: tuple[str, str] | None = None  # (path, format) of the image it overlays


@dataclass(frozen=True)
class Plan:
    vm_cid: str
    volumes: tuple[Volume, ...]  # root first, then the ephemeral disk
    config_drive: str  # the config volume's name (in the pool's folder; its size is the image's)
    settings: dict[str, Any]
    domain_xml: str
    networks: dict[str, Any]  # create_vm's answer


def console_log(cfg: Config, vm_cid: str) -> str:
    return os.path.join(cfg.libvirt.console_log_dir, f"{vm_cid}.console.log")


def plan(
    cfg: Config,
    spec: VMSpec,
    size: VMSize,
    facts: Facts,
    vm_cid: str,
    new_mac: Callable[[str], str],
    config_volume: Callable[[str], str] = naming.config_volume,
) -> Plan:
    """The whole create_vm. The fresh names come from outside: `new_mac(prefix)` for a network the
    director gave no MAC, `config_volume` for the config drive (a new name each time)."""
    from boshcpi.agent import settings as agent_settings
    from boshcpi.drivers.libvirt import configdrive

    lc = cfg.libvirt
    folder = os.path.dirname(facts.stemcell_path)
    root_mb = int(spec.cloud_properties.get("root_disk_size") or 0)
    root = Volume(
        naming.root_volume(vm_cid),
        f"{folder}/{naming.root_volume(vm_cid)}",
        max(facts.stemcell_bytes, root_mb * MiB),
        (facts.stemcell_path, facts.stemcell_format),
    )
    volumes = [root]
    disks = [dom_xml.disk_xml(root.path, dom_xml.SLOTS["root"], "qcow2", serial=naming.ROOT_SERIAL)]
    ephemeral_hint: Any = ""
    if size.ephemeral_mb > 0:
        name = naming.ephemeral_volume(vm_cid)
        eph = Volume(name, f"{folder}/{name}", size.ephemeral_mb * MiB)
        volumes.append(eph)
        disks.append(dom_xml.disk_xml(eph.path, dom_xml.SLOTS["ephemeral"], "qcow2", serial=naming.EPHEMERAL_SERIAL))
        # Found by the agent by path only: the by-id link of its serial.
        ephemeral_hint = {"path": naming.by_id_path(naming.EPHEMERAL_SERIAL)}
    interfaces, networks = [], {}
    for net in spec.nic_order():
        mac = net.mac or new_mac("52:54:00")
        if net.type != "vip":
            bridge = str(net.cloud_properties.get("bridge") or lc.bridge_name or "")
            network = str(net.cloud_properties.get("name") or lc.network_name)
            interfaces.append(dom_xml.interface_xml(mac, network=network, bridge=bridge))
        networks[net.name] = agent_settings.network_entry(
            dict(spec.raw_networks.get(net.name) or {}), mac, preconfigured=False
        )
    settings = agent_settings.for_new_vm(
        cfg, spec, vm_cid, networks, naming.by_id_path(naming.ROOT_SERIAL), ephemeral_hint
    )
    drive = config_volume(vm_cid)
    is_cdrom = cfg.agent_config.type == "CDROM"
    if is_cdrom:
        disks.append(dom_xml.SCSI_CONTROLLER)
    disks.append(configdrive.device_xml(f"{folder}/{drive}", is_cdrom))
    return Plan(
        vm_cid=vm_cid,
        volumes=tuple(volumes),
        config_drive=drive,
        settings=settings,
        domain_xml=_domain_xml(cfg, facts, vm_cid, spec, size, disks, interfaces),
        networks={n: {**(spec.raw_networks.get(n) or {}), "mac": networks[n]["mac"]} for n in spec.networks},
    )


def _domain_xml(
    cfg: Config, facts: Facts, vm_cid: str, spec: VMSpec, size: VMSize, disks: list[str], interfaces: list[str]
) -> str:
    lc = cfg.libvirt
    meta = dom_xml.metadata_xml(
        {
            "agent_id": spec.agent_id,
            "stemcell": spec.stemcell_cid,
            "created_by": "boshcpi",
            # Until create_vm answers, the process making it (boshcpi.lease.identity): a killed
            # attempt's domain, started or not, is cleanup's once that process is gone.
            "creating": facts.identity,
            "created": facts.created,
        }
    )
    try:
        return dom_xml.render(
            facts.template,
            domain_type=lc.domain_type,
            name=vm_cid,
            uuid=ids.vm_uuid(vm_cid),
            title=escape(f"bosh agent {spec.agent_id}"),
            description="boshcpi VM",
            metadata=meta,
            memory_mb=str(size.memory_mb),
            cpus=str(size.cpus),
            machine=lc.machine_type,
            cpu="<cpu mode='host-passthrough'/>" if lc.domain_type == "kvm" else "",
            emulator=f"<emulator>{escape(lc.emulator)}</emulator>" if lc.emulator else "",
            disks="\n    ".join(disks),
            interfaces="\n    ".join(interfaces),
            console_log=console_log(cfg, vm_cid),
        )
    except (KeyError, ValueError) as e:
        raise CpiError(f"libvirt.domain_template: unknown or bad placeholder {e}") from None
