"""create_vm on LXD and Incus as a value. `plan` turns the request, the configuration and the facts
read from the daemon up front (`vmfacts`) into a `Plan`: the instance's whole request body, its
ephemeral volume, its config drive, the agent settings, the addresses it pins and create_vm's answer.
Nothing here talks to a daemon or reads a clock: the plan of any VM or container on any server is
checked whole by unit tests, and `vmapply` carries it out in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.host import META, as_str
from boshcpi.protocol import CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.cloud import VMSize, VMSpec
    from boshcpi.config import Config

# Instance config keys and device types a cloud-config may set without the operator's opt-in
# (`server.allow_raw_config` / `server.allow_raw_devices`): nothing that reaches the host.
SAFE_CONFIG_PREFIXES = ("limits.", "user.", "environment.", "snapshots.", "boot.autostart", "cloud-init.")
SAFE_DEVICE_TYPES = ("nic", "disk", "tpm")

# What `nested_containers` adds to raw.lxc. The device rules in both spellings: LXC applies the
# v1 `lxc.cgroup.*` keys on hosts with the cgroup v1 devices controller (where the daemon writes
# its own rules too) and the `lxc.cgroup2.*` keys on cgroup v2 hosts, and ignores the other.
# `lxc.mount.auto` replaces only the masks it names.
NESTED_RAW_LXC = (
    "".join(
        f"{key}.devices.allow = {rule}\n"
        for key in ("lxc.cgroup", "lxc.cgroup2")
        for rule in ("b 7:* rwm", "c 10:237 rwm")
    )
    + "lxc.mount.auto = proc:rw sys:rw\n"
)


@dataclass(frozen=True)
class VMFacts:
    """What a virtual machine's plan needs from the daemon (a container needs none of it)."""

    image_properties: dict[str, Any]  # the stemcell image's: they pick the boot config
    boot_mode: bool  # the server has `instance_boot_mode` (boot.mode, not security.csm/secureboot)
    server_type: str  # "lxd" or "incus", as the daemon says: the guest's disk serials start with it
    uses_iso: bool  # the config drive is an `iso` volume (with a block copy), else a read-only block


@dataclass(frozen=True)
class Facts:
    """What was read before planning. `target`: the member (or @group) the VM goes to, "" for the
    daemon's choice; `managed`: each LXD network a NIC reaches, managed by the daemon or not;
    `creating`: the attempt's mark (naming.creating_mark, by the daemon's clock)."""

    vm: VMFacts | None
    managed: dict[str, bool]
    target: str
    creating: str


@dataclass(frozen=True)
class Volume:
    name: str
    size_mb: int
    content: str  # "block" (VMs) or "filesystem" (containers)


@dataclass(frozen=True)
class Plan:
    vm_cid: str
    is_vm: bool
    target: str
    ephemeral: Volume | None
    config_drive: str  # the config volume's name (VMs), "" for a container (settings go in as a file)
    settings: dict[str, Any]
    instance: dict[str, Any]  # POST /1.0/instances
    addresses: frozenset[tuple[str, str]]  # (network, IPv4) the NICs pin: an interrupted attempt's go
    networks: dict[str, Any] = field(default_factory=dict)  # create_vm's answer


def group(spec: VMSpec) -> str:
    """The instance group the director names in env.bosh.group ("" if none)."""
    bosh = spec.env.get("bosh")
    value = bosh.get("group") if isinstance(bosh, dict) else None
    return value if isinstance(value, str) else ""


def nic_networks(cfg: Config, spec: VMSpec) -> list[str]:
    """The LXD networks the NICs reach, in NIC order (the default-gateway network first, so eth0)."""
    default_parent = str(spec.cloud_properties.get("network") or cfg.server.network_name)
    return [str(net.cloud_properties.get("name") or default_parent) for net in spec.nic_order() if net.type != "vip"]


def check_raw(cfg: Config, props: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Raw instance config and devices from a cloud-config reach the host only where the operator
    allowed it in cpi.json: a disk from a host path, `raw.*` or `security.*` owns the host. Returns
    the pool volumes a device names (device, pool, volume): safe only if they are nobody's disk,
    which the daemon must be asked (vmfacts)."""
    for key in ("config", "devices"):
        value = props.get(key)
        if value is not None and not isinstance(value, dict):
            raise CpiError(f"cloud_properties.{key}: expected an object")
    for key in props.get("config") or {}:
        k = str(key)
        if k.startswith(META) or k.startswith("volatile."):
            raise CpiError(f"cloud_properties.config.{k}: reserved for the CPI and the daemon")
        if not cfg.server.allow_raw_config and not k.startswith(SAFE_CONFIG_PREFIXES):
            raise CpiError(
                f"cloud_properties.config.{k}: refused; only {', '.join(SAFE_CONFIG_PREFIXES)} keys are "
                "allowed unless cpi.json sets server.allow_raw_config: true"
            )
    volumes = []
    for name, dev in (props.get("devices") or {}).items():
        if not isinstance(dev, dict):
            raise CpiError(f"cloud_properties.devices.{name}: expected an object of device keys")
        if str(name) in (naming.ROOT_DEVICE, *naming.CONFIG_DEVICES, naming.EPHEMERAL_DEVICE):
            raise CpiError(f"cloud_properties.devices.{name}: a device name the CPI manages")
        if cfg.server.allow_raw_devices:
            continue
        dtype = str(dev.get("type", ""))
        source = str(dev.get("source", ""))
        host_path = dtype == "disk" and (source.startswith("/") or (not dev.get("pool") and bool(source)))
        raw_keys = [k for k in dev if str(k).startswith("raw.")]
        if dtype not in SAFE_DEVICE_TYPES or host_path or raw_keys:
            raise CpiError(
                f"cloud_properties.devices.{name}: a {dtype or 'untyped'} device"
                + (" from a host path" if host_path else "")
                + " is refused unless cpi.json sets server.allow_raw_devices: true"
            )
        if dtype == "disk" and dev.get("pool") and source:
            if naming.is_cpi_volume(source):
                raise CpiError(
                    f"cloud_properties.devices.{name}: volume {source!r} is a CPI-managed disk or config drive; "
                    "is refused unless cpi.json sets server.allow_raw_devices: true"
                )
            volumes.append((str(name), str(dev["pool"]), source))
    return volumes


def plan(
    cfg: Config,
    spec: VMSpec,
    size: VMSize,
    facts: Facts,
    vm_cid: str,
    new_mac: Callable[[], str],
    config_volume: Callable[[str], str] = naming.config_volume,
) -> Plan:
    """The whole create_vm. The fresh names come from outside: `new_mac` for a network the director
    gave no MAC, `config_volume` for a VM's config drive (naming.config_volume: a new name each time)."""
    from boshcpi.agent import settings as agent_settings
    from boshcpi.drivers.lxd import settingsio

    vm = facts.vm
    pool = cfg.server.storage_pool_name
    devices: dict[str, dict[str, str]] = {naming.ROOT_DEVICE: {"type": "disk", "path": "/", "pool": pool}}
    # No root size: a size different from the image's makes some drivers copy the whole image.
    nics, agent_networks = _nics(cfg, spec, facts.managed, vm is not None, new_mac)
    devices.update(nics)
    config = _instance_config(cfg, spec, size, vm)
    # Until create_vm answers, the instance is an attempt, not the director's VM: a killed create_vm
    # leaves it marked, and the retry for its address and `cleanup` reclaim it.
    config[META + naming.CREATING_KEY] = facts.creating
    grp = group(spec)
    if grp:
        config[META + "group"] = grp  # the spread of later VMs of the group counts it
    ephemeral: Volume | None = None
    ephemeral_hint: Any = ""
    if size.ephemeral_mb > 0:
        ephemeral = Volume(naming.ephemeral_volume(vm_cid), size.ephemeral_mb, "block" if vm else "filesystem")
        dev = {"type": "disk", "pool": pool, "source": ephemeral.name}
        if vm:
            # Found by the agent by path only: the by-id link of its serial.
            ephemeral_hint = {"path": naming.by_id_path(naming.EPHEMERAL_DEVICE, vm.server_type)}
        else:
            dev["path"] = naming.CONTAINER_EPHEMERAL_PATH
            ephemeral_hint = naming.CONTAINER_EPHEMERAL_PATH
        devices[naming.EPHEMERAL_DEVICE] = dev
    settings = agent_settings.for_new_vm(
        cfg,
        spec,
        vm_cid,
        agent_networks,
        naming.by_id_path(naming.ROOT_DEVICE, vm.server_type) if vm else "",
        ephemeral_hint,
    )
    config_drive = ""
    if vm:
        config_drive = config_volume(vm_cid)
        devices[naming.CONFIG_DEVICE] = settingsio.drive_device(pool, config_drive, vm.uses_iso)
    for name, dev in (spec.cloud_properties.get("devices") or {}).items():
        devices[str(name)] = {str(k): as_str(v) for k, v in (dev or {}).items()}
    body: dict[str, Any] = {
        "name": vm_cid,
        "type": "virtual-machine" if vm else "container",
        "source": {"type": "image", "alias": spec.stemcell_cid},
        "config": config,
        "devices": devices,
        "profiles": [cfg.server.profile_name] if cfg.server.profile_name else [],
        "description": f"bosh agent {spec.agent_id}",
    }
    if size.named_type:
        # A name the daemon knows (e.g. t2.micro), passed on as the Go CPI did: it sizes the VM.
        body["instance_type"] = size.named_type
    networks = {
        name: {
            **(spec.raw_networks.get(name) or {}),
            "type": agent_networks[name].get("type", "manual"),
            "mac": agent_networks[name]["mac"],
        }
        for name in spec.networks
    }
    return Plan(
        vm_cid=vm_cid,
        is_vm=vm is not None,
        target=facts.target,
        ephemeral=ephemeral,
        config_drive=config_drive,
        settings=settings,
        instance=body,
        addresses=addresses(devices),
        networks=networks,
    )


def addresses(devices: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """(network or parent, IPv4) of every NIC that pins an address: one VM may have each."""
    return frozenset(
        (d.get("network") or d.get("parent"), d.get("ipv4.address"))
        for d in devices.values()
        if d.get("type") == "nic" and d.get("ipv4.address")
    )


def _nics(
    cfg: Config, spec: VMSpec, managed: dict[str, bool], is_vm: bool, new_mac: Callable[[], str]
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    from boshcpi.agent import settings as agent_settings

    devices: dict[str, dict[str, str]] = {}
    agent_networks: dict[str, Any] = {}
    assignment = cfg.server.managed_network_assignment
    parents = iter(nic_networks(cfg, spec))
    users: dict[str, str] = {}  # managed network -> the BOSH network whose NIC is on it
    for net in spec.nic_order():
        mac = net.mac or new_mac()
        raw = dict(spec.raw_networks.get(net.name) or {})
        if net.type != "vip":
            parent = next(parents)
            if managed[parent] and parent in users:
                # LXD and Incus give an instance one NIC per managed network (its DNS name there is the
                # instance's): the start would fail after the instance was made.
                raise CpiError(
                    f"networks {users[parent]!r} and {net.name!r} both reach LXD network {parent!r}; an instance "
                    "has one NIC per managed network: give each BOSH network its own LXD network with the "
                    "subnet's cloud_properties.name (or the network cloud property)"
                )
            users[parent] = net.name
            index = len(devices)
            dev: dict[str, str] = {"type": "nic", "name": f"eth{index}", "hwaddr": mac}
            if managed[parent]:
                dev["network"] = parent
                # static and dhcp both pin a manual network's address as the NIC's DHCP lease
                # (a2geek/bosh-lxd-cpi-release src/cpi/create_vm.go); `agent` leaves it to the agent.
                if net.type == "manual" and assignment in ("static", "dhcp"):
                    dev["ipv4.address"] = net.ip
                    if assignment == "dhcp" and is_vm:
                        # The Go CPI's dhcp: the agent is told the network is dynamic and takes the
                        # pinned lease by DHCP (correct routes on Fan networks).
                        raw["type"] = "dynamic"
            else:
                dev.update({"nictype": "bridged", "parent": parent})
            devices[f"eth{index}"] = dev
        # Containers get their address from the bridge (static DHCP lease): the agent must not touch
        # networking there. VMs' agents configure interfaces by MAC.
        agent_networks[net.name] = agent_settings.network_entry(raw, mac, preconfigured=not is_vm)
    return devices, agent_networks


def _instance_config(cfg: Config, spec: VMSpec, size: VMSize, vm: VMFacts | None) -> dict[str, str]:
    config: dict[str, str] = {}
    if not size.named_type or "cpus" in spec.cloud_properties:
        config["limits.cpu"] = str(size.cpus)
    if not size.named_type or "memory" in spec.cloud_properties:
        config["limits.memory"] = f"{size.memory_mb}MiB"
    if vm:
        config.update(boot_config(cfg, vm))
    elif cfg.server.container_privileged:
        # Warden stemcells' agents remount filesystems at bootstrap: privileged and nested.
        config.update({"security.privileged": "true", "security.nesting": "true"})
    extra = spec.cloud_properties.get("config") or {}  # checked by check_raw
    config.update({str(k): as_str(v) for k, v in extra.items()})
    nested = spec.cloud_properties.get("nested_containers")
    if nested is not None and not isinstance(nested, bool):
        raise CpiError(f"cloud_properties.nested_containers: expected true or false, not {nested!r}")
    if nested or (nested is None and not vm and cfg.server.nested_containers):
        _nested_containers(cfg, config, vm is not None)
    config.update(
        {
            META + "kind": "vm",
            META + "agent_id": spec.agent_id,
            META + "stemcell": spec.stemcell_cid,
            META + "created_by": "boshcpi",
        }
    )
    return config


def boot_config(cfg: Config, vm: VMFacts) -> dict[str, str]:
    """Instance config of a VM by stemcell line: the first `instance_config` key found in the image's
    properties (boshcpi's os/name, the Go CPI's description `<name>-<version>`), else `default`
    (the Go CPI's fallback) or `*`; with neither, a clear error (as the Go CPI refuses), never an
    empty config the daemon would boot with its own defaults.

    The boot keys follow the server: LXD 6.6+ (API extension `instance_boot_mode`) has `boot.mode`
    only, older LXD and Incus have `security.csm`/`security.secureboot` only. Either spelling in
    the config is translated to the server's, as LXD's own upgrade patch maps the old keys to
    `boot.mode`; and CSM needs secure boot off, or the VM never starts."""
    props = vm.image_properties
    line = " ".join(str(v) for v in props.values()).lower()
    ic = cfg.server.instance_config
    matched = next((v for k, v in ic.items() if k not in ("*", "default") and k.lower() in line), None)
    if matched is None:
        matched = ic.get("default", ic.get("*"))
    if matched is None:
        name = props.get("bosh.stemcell.name") or props.get("description") or "this stemcell"
        raise CpiError(
            f"server.instance_config: no entry matches {name} and there is no `default` entry "
            f"(keys: {', '.join(sorted(ic)) or 'none'})"
        )
    chosen = dict(matched)
    mode = chosen.pop("boot.mode", "")
    if mode not in ("", "bios", "uefi-secureboot", "uefi-nosecureboot"):
        raise CpiError(f"server.instance_config: boot.mode {mode!r} is not bios, uefi-secureboot or uefi-nosecureboot")
    csm = chosen.pop("security.csm", "false") == "true"
    secure_key = chosen.pop("security.secureboot", None)
    secure = secure_key == "true" and not csm
    if mode:
        csm, secure = mode == "bios", mode == "uefi-secureboot"
    if vm.boot_mode:
        chosen["boot.mode"] = "bios" if csm else "uefi-secureboot" if secure else "uefi-nosecureboot"
    elif mode or csm or secure_key is not None:
        if csm:
            chosen["security.csm"] = "true"
        chosen["security.secureboot"] = "true" if secure else "false"
    if cfg.server.bios_path and not csm and "boot.mode" not in chosen:
        chosen["raw.qemu"] = f"-bios {cfg.server.bios_path}"
    return chosen


def _nested_containers(cfg: Config, config: dict[str, str], is_vm: bool) -> None:
    """cloud_properties `nested_containers: true`: what a container runtime inside the container
    needs (garden-runc on a diego-cell, runc, containerd). On top of privileged + nesting:
    - loop devices (b 7:*, c 10:237) in the container's device cgroup: grootfs keeps its image
      store on an XFS file it loop-mounts (grootfs store/filesystems/overlayxfs/driver.go);
    - no default seccomp deny list: its `reject_force_umount` answers EACCES to `umount -f`,
      which util-linux prints as "block devices are not permitted on filesystem", the error
      diego's rep stops on (diego-release jobs/rep/templates/setup_mounted_data_dirs.erb);
    - a writable /proc/sys and /sys (`proc:rw sys:rw`): garden's start script writes kernel
      sysctls under `set -e` (greenskeeper system-preparation). These are the host's own.
    A privileged container is root on the host already; this adds nothing an operator who runs
    them has not granted, and is refused for VMs and unprivileged containers."""
    if is_vm:
        raise CpiError("cloud_properties.nested_containers: only for containers (warden-style stemcells)")
    if not cfg.server.container_privileged:
        raise CpiError(
            "cloud_properties.nested_containers: needs privileged containers (server.container_privileged: true)"
        )
    config["security.nesting"] = "true"
    config["security.syscalls.deny_default"] = "false"
    raw = config.get("raw.lxc", "")
    config["raw.lxc"] = (raw + "\n" if raw and not raw.endswith("\n") else raw) + NESTED_RAW_LXC
