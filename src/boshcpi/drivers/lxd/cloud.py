"""The LXD/Incus Cloud: stemcells, VMs and system containers, networks, agent settings, disks.

Instance kind follows the stemcell: a VM image makes a virtual machine (agent settings on a config
drive), a warden-style image makes a privileged system container (settings pushed as a file).
VMs made by the Go CPI (`config`/`ephemeral`/`persistent-N` devices) are read and changed in their own
layout.
"""

from __future__ import annotations

import time

from boshcpi import ids, log
from boshcpi.cloud import Cloud, parse_vm_size
from boshcpi.drivers.lxd import STEMCELL_FORMATS, naming
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.drivers.lxd.host import META, LXDHost, as_str, instance_path
from boshcpi.protocol import BoshError, CloudError, CpiError, VMCreationFailed, VMNotFound

# Modules only some methods need are imported there: has_vm and info load as little as possible.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec, StemcellSpec, VMSpec
    from boshcpi.config import Config
    from boshcpi.protocol import Request

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


class LXDCloud(Cloud):
    stemcell_formats = STEMCELL_FORMATS

    def __init__(self, cfg: Config, request: Request | None = None) -> None:
        self.cfg = cfg
        self.request = request
        self.host = LXDHost(cfg)

    @property
    def client(self) -> Any:
        return self.host.client

    @property
    def pool(self) -> str:
        return self.host.pool

    def close(self) -> None:
        self.host.close()

    def recognises(self, kind: str, cid: str) -> bool:
        if kind == "vm":
            return ids.is_vm_cid(cid)
        if kind == "stemcell":
            return ids.has_uuid_after(cid, ids.STEMCELL_PREFIX)
        if kind == "disk":
            return naming.is_disk_cid(cid)
        if kind == "snapshot":
            return naming.split_snapshot_cid(cid) is not None
        return False

    # ---- stemcells -------------------------------------------------------------------------
    def create_stemcell(self, spec: StemcellSpec) -> str:
        from boshcpi.drivers.lxd import images, imageupload
        from boshcpi.faults import fail_point

        with mapped("create_stemcell"):
            fingerprint = imageupload.upload(self.client, spec, self.cfg.operation_timeout, self.cfg.max_stemcell_image)
            if self.cfg.server.predeploy_stemcell:
                images.predeploy(self.host, fingerprint)  # before the alias: a failure leaves no stemcell
            fail_point("alias")
            cid = images.create_alias(self.client, fingerprint, spec)
        log.info(f"stemcell {cid} -> image {fingerprint[:12]}")
        return cid

    def delete_stemcell(self, stemcell_cid: str) -> None:
        from boshcpi.drivers.lxd import images

        images.delete(self.client, stemcell_cid)

    # ---- instances -------------------------------------------------------------------------
    def instance(self, vm_cid: str, action: str) -> tuple[dict[str, Any], str]:
        return self.host.owned_instance(vm_cid, action)

    def has_vm(self, vm_cid: str) -> bool:
        with mapped("has_vm"):
            return self.host.is_owned(self.host.find_instance(vm_cid, "has_vm"))

    def _root_device(self) -> dict[str, dict[str, str]]:
        # No size: a size different from the image's makes some drivers copy the whole image.
        return {naming.ROOT_DEVICE: {"type": "disk", "path": "/", "pool": self.pool}}

    def _nic_devices(self, spec: VMSpec, is_vm: bool) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
        from boshcpi.agent import settings as agent_settings

        devices: dict[str, dict[str, str]] = {}
        agent_networks: dict[str, Any] = {}
        index = 0
        assignment = self.cfg.server.managed_network_assignment
        default_parent = str(spec.cloud_properties.get("network") or self.cfg.server.network_name)
        # Default-gateway network first, so it is eth0.
        ordered = sorted(spec.networks.values(), key=lambda n: ("gateway" not in n.default, n.name))
        managed: dict[str, bool] = {}
        users: dict[str, str] = {}  # managed network -> the BOSH network whose NIC is on it
        for net in ordered:
            mac = net.mac or ids.random_mac()
            raw = dict(spec.raw_networks.get(net.name) or {})
            if net.type != "vip":
                parent = str(net.cloud_properties.get("name") or default_parent)
                if parent not in managed:
                    managed[parent] = self._network_managed(parent)
                if managed[parent] and parent in users:
                    # LXD and Incus give an instance one NIC per managed network (its DNS name there
                    # is the instance's): the start would fail after the instance was made.
                    raise CpiError(
                        f"networks {users[parent]!r} and {net.name!r} both reach LXD network {parent!r}; an instance "
                        "has one NIC per managed network: give each BOSH network its own LXD network with the "
                        "subnet's cloud_properties.name (or the network cloud property)"
                    )
                users[parent] = net.name
                dev: dict[str, str] = {"type": "nic", "name": f"eth{index}", "hwaddr": mac}
                if managed[parent]:
                    dev["network"] = parent
                    # static and dhcp both pin a manual network's address as the NIC's DHCP lease
                    # (a2geek/bosh-lxd-cpi-release src/cpi/create_vm.go); `agent` leaves it to the agent.
                    if net.type == "manual" and assignment in ("static", "dhcp"):
                        dev["ipv4.address"] = net.ip
                        if assignment == "dhcp" and is_vm:
                            # The Go CPI's dhcp: the agent is told the network is dynamic and takes
                            # the pinned lease by DHCP (correct routes on Fan networks).
                            raw["type"] = "dynamic"
                else:
                    dev.update({"nictype": "bridged", "parent": parent})
                devices[f"eth{index}"] = dev
                index += 1
            # Containers get their address from the bridge (static DHCP lease): the agent must not
            # touch networking there. VMs' agents configure interfaces by MAC.
            agent_networks[net.name] = agent_settings.network_entry(raw, mac, preconfigured=not is_vm)
        return devices, agent_networks

    def _network_managed(self, name: str) -> bool:
        from boshcpi.drivers.lxd.client import quote

        try:
            return bool(self.client.get(f"/1.0/networks/{quote(name, '')}").get("managed"))
        except LXDError as e:
            if e.not_found:
                raise CloudError(f"network {name!r} does not exist in LXD (server.network_name)") from None
            raise

    def _boot_config(self, image: dict[str, Any]) -> dict[str, str]:
        """Instance config of a VM by stemcell line: the first `instance_config` key found in the image's
        properties (boshcpi's os/name, the Go CPI's description `<name>-<version>`), else `default`
        (the Go CPI's fallback) or `*`; with neither, a clear error (as the Go CPI refuses), never an
        empty config the daemon would boot with its own defaults.

        The boot keys follow the server: LXD 6.6+ (API extension `instance_boot_mode`) has `boot.mode`
        only, older LXD and Incus have `security.csm`/`security.secureboot` only. Either spelling in
        the config is translated to the server's, as LXD's own upgrade patch maps the old keys to
        `boot.mode`; and CSM needs secure boot off, or the VM never starts."""
        props = image.get("properties") or {}
        line = " ".join(str(v) for v in props.values()).lower()
        ic = self.cfg.server.instance_config
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
            raise CpiError(
                f"server.instance_config: boot.mode {mode!r} is not bios, uefi-secureboot or uefi-nosecureboot"
            )
        csm = chosen.pop("security.csm", "false") == "true"
        secure_key = chosen.pop("security.secureboot", None)
        secure = secure_key == "true" and not csm
        if mode:
            csm, secure = mode == "bios", mode == "uefi-secureboot"
        if self.client.has_extension("instance_boot_mode"):
            chosen["boot.mode"] = "bios" if csm else "uefi-secureboot" if secure else "uefi-nosecureboot"
        elif mode or csm or secure_key is not None:
            if csm:
                chosen["security.csm"] = "true"
            chosen["security.secureboot"] = "true" if secure else "false"
        if self.cfg.server.bios_path and not csm and "boot.mode" not in chosen:
            chosen["raw.qemu"] = f"-bios {self.cfg.server.bios_path}"
        return chosen

    def _instance_config(self, spec: VMSpec, size: Any, image: dict[str, Any], is_vm: bool) -> dict[str, str]:
        config: dict[str, str] = {}
        if not size.named_type or "cpus" in spec.cloud_properties:
            config["limits.cpu"] = str(size.cpus)
        if not size.named_type or "memory" in spec.cloud_properties:
            config["limits.memory"] = f"{size.memory_mb}MiB"
        if is_vm:
            config.update(self._boot_config(image))
        elif self.cfg.server.container_privileged:
            # Warden stemcells' agents remount filesystems at bootstrap: privileged and nested.
            config.update({"security.privileged": "true", "security.nesting": "true"})
        extra = spec.cloud_properties.get("config") or {}  # checked by _check_raw
        config.update({str(k): as_str(v) for k, v in extra.items()})
        nested = spec.cloud_properties.get("nested_containers")
        if nested is not None and not isinstance(nested, bool):
            raise CpiError(f"cloud_properties.nested_containers: expected true or false, not {nested!r}")
        if nested or (nested is None and not is_vm and self.cfg.server.nested_containers):
            self._nested_containers(config, is_vm)
        config.update(
            {
                META + "kind": "vm",
                META + "agent_id": spec.agent_id,
                META + "stemcell": spec.stemcell_cid,
                META + "created_by": "boshcpi",
                # Until create_vm answers, the instance is an attempt, not the director's VM: a killed
                # create_vm leaves it marked, and the retry for its address and `cleanup` reclaim it.
                META + naming.CREATING_KEY: naming.creating_mark(self.client.daemon_time() or time.time()),
            }
        )
        return config

    def _nested_containers(self, config: dict[str, str], is_vm: bool) -> None:
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
        if not self.cfg.server.container_privileged:
            raise CpiError(
                "cloud_properties.nested_containers: needs privileged containers (server.container_privileged: true)"
            )
        config["security.nesting"] = "true"
        config["security.syscalls.deny_default"] = "false"
        raw = config.get("raw.lxc", "")
        config["raw.lxc"] = (raw + "\n" if raw and not raw.endswith("\n") else raw) + NESTED_RAW_LXC

    def _check_raw(self, props: dict[str, Any]) -> None:
        """Raw instance config and devices from a cloud-config reach the host only where the operator
        allowed it in cpi.json: a disk from a host path, `raw.*` or `security.*` owns the host."""
        for key in ("config", "devices"):
            value = props.get(key)
            if value is not None and not isinstance(value, dict):
                raise CpiError(f"cloud_properties.{key}: expected an object")
        for key in props.get("config") or {}:
            k = str(key)
            if k.startswith(META) or k.startswith("volatile."):
                raise CpiError(f"cloud_properties.config.{k}: reserved for the CPI and the daemon")
            if not self.cfg.server.allow_raw_config and not k.startswith(SAFE_CONFIG_PREFIXES):
                raise CpiError(
                    f"cloud_properties.config.{k}: refused; only {', '.join(SAFE_CONFIG_PREFIXES)} keys are "
                    "allowed unless cpi.json sets server.allow_raw_config: true"
                )
        for name, dev in (props.get("devices") or {}).items():
            if not isinstance(dev, dict):
                raise CpiError(f"cloud_properties.devices.{name}: expected an object of device keys")
            if str(name) in (naming.ROOT_DEVICE, *naming.CONFIG_DEVICES, naming.EPHEMERAL_DEVICE):
                raise CpiError(f"cloud_properties.devices.{name}: a device name the CPI manages")
            if self.cfg.server.allow_raw_devices:
                continue
            dtype = str(dev.get("type", ""))
            source = str(dev.get("source", ""))
            host_path = dtype == "disk" and (source.startswith("/") or (not dev.get("pool") and bool(source)))
            raw_keys = [k for k in dev if str(k).startswith("raw.")]
            if dtype == "disk" and dev.get("pool") and source:
                # A pool volume is safe only if it is nobody's disk: another VM's config drive holds its
                # agent's credentials, a persistent disk its data.
                self._check_foreign_volume(str(name), str(dev["pool"]), source)
            if dtype not in SAFE_DEVICE_TYPES or host_path or raw_keys:
                raise CpiError(
                    f"cloud_properties.devices.{name}: a {dtype or 'untyped'} device"
                    + (" from a host path" if host_path else "")
                    + " is refused unless cpi.json sets server.allow_raw_devices: true"
                )

    def _check_foreign_volume(self, name: str, pool: str, source: str) -> None:
        where = f"cloud_properties.devices.{name}"
        refused = " is refused unless cpi.json sets server.allow_raw_devices: true"
        if naming.is_cpi_volume(source):
            raise CpiError(f"{where}: volume {source!r} is a CPI-managed disk or config drive;" + refused)
        try:
            vol = self.client.get(f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom/{quote(source, '')}")
        except LXDError as e:
            if e.not_found:
                return  # the daemon says so at create time
            raise to_bosh(e, f"{where}: volume {source!r}") from None
        if any(str(k).startswith(META) for k in (vol or {}).get("config") or {}):
            raise CpiError(f"{where}: volume {source!r} carries BOSH marks (a CPI made it);" + refused)

    def _check_capacity(self, size: Any) -> None:
        """CPUs and memory a host cannot give are the caller's mistake, not a VM that never boots. The
        daemon accepts any limits (checked: LXD 5.0 creates a container with limits.cpu 8 on 2 CPUs and
        600 GiB of memory), so the CPI asks the host what it has; small sizes every host has skip the
        round trip (create_vm stays within a few percent of the daemon's own time)."""
        if size.cpus <= 2 and size.memory_mb <= 4096:
            return
        try:
            res = self.client.get("/1.0/resources", project=False) or {}
        except LXDError as e:
            log.debug(f"cannot read host resources: {e.message}")
            return
        cpus = (res.get("cpu") or {}).get("total") or 0
        mem = ((res.get("memory") or {}).get("total") or 0) >> 20
        if cpus and size.cpus > cpus:
            raise CpiError(f"cloud_properties: {size.cpus} CPUs asked, the host has {cpus}")
        if mem and size.memory_mb > mem:
            raise CpiError(f"cloud_properties: {size.memory_mb} MiB of memory asked, the host has {mem} MiB")

    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        lock = self.cfg.server.create_vm_lock
        if lock.enabled:
            from boshcpi.config import parse_duration
            from boshcpi.throttle.filelock import FileLock

            with FileLock(lock.path, parse_duration(lock.timeout, "server.create_vm_lock.timeout")):
                return self._create_vm(spec)
        return self._create_vm(spec)

    def _create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        from boshcpi.agent import settings as agent_settings
        from boshcpi.drivers.lxd import disks, images, settingsio
        from boshcpi.faults import fail_point

        # Validate cloud properties before touching the daemon: bad input is the caller's fault.
        size = parse_vm_size(spec.cloud_properties)
        self._check_raw(spec.cloud_properties)
        with mapped("create_vm: stemcell"):
            alias = images.find_alias_info(self.client, spec.stemcell_cid)
            if alias is None:
                raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
            is_vm = alias.get("type") == "virtual-machine"
            # Image properties pick the VM's boot config by stemcell line; containers need none.
            image = images.image_info(self.client, alias["target"]) if is_vm else {}
            if image is None:
                raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
            self._check_capacity(size)
            if size.ephemeral_mb:
                disks.check_space(self.host, self.pool, size.ephemeral_mb, "cloud_properties.ephemeral_disk")
        vm_cid = ids.new_vm_cid()
        made_volumes: list[str] = []
        made_instance = False
        try:
            devices = self._root_device()
            nics, agent_networks = self._nic_devices(spec, is_vm)
            devices.update(nics)
            ephemeral_hint: Any = ""
            config = self._instance_config(spec, size, image, is_vm)
            target = self._placement(spec, config)
            fail_point("volumes")
            if size.ephemeral_mb > 0:
                vol = naming.ephemeral_volume(vm_cid)
                content = "block" if is_vm else "filesystem"
                self.host.create_volume(vol, size.ephemeral_mb, content, "ephemeral", vm_cid, target=target)
                made_volumes.append(vol)
                dev = {"type": "disk", "pool": self.pool, "source": vol}
                if is_vm:
                    # Found by the agent by path only: the by-id link of its serial.
                    ephemeral_hint = {"path": naming.by_id_path(naming.EPHEMERAL_DEVICE, self.host.server_type)}
                else:
                    dev["path"] = naming.CONTAINER_EPHEMERAL_PATH
                    ephemeral_hint = naming.CONTAINER_EPHEMERAL_PATH
                devices[naming.EPHEMERAL_DEVICE] = dev
            settings = agent_settings.build(
                agent_id=spec.agent_id,
                vm_cid=vm_cid,
                networks=agent_networks,
                env=spec.env,
                mbus=self.cfg.agent.mbus,
                ntp=self.cfg.agent.ntp,
                blobstore=self.cfg.agent.blobstore,
                system_disk=naming.by_id_path(naming.ROOT_DEVICE, self.host.server_type) if is_vm else "",
                ephemeral_disk=ephemeral_hint,
            )
            if is_vm:
                vol = settingsio.write_config_volume(self.host, vm_cid, settings, target=target)
                made_volumes.append(vol)
                devices[naming.CONFIG_DEVICE] = settingsio.config_drive_device(self.host, vol)
            for name, dev in (spec.cloud_properties.get("devices") or {}).items():
                devices[str(name)] = {str(k): as_str(v) for k, v in (dev or {}).items()}
            body: dict[str, Any] = {
                "name": vm_cid,
                "type": "virtual-machine" if is_vm else "container",
                "source": {"type": "image", "alias": spec.stemcell_cid},
                "config": config,
                "devices": devices,
                "profiles": [self.cfg.server.profile_name] if self.cfg.server.profile_name else [],
                "description": f"bosh agent {spec.agent_id}",
            }
            if size.named_type:
                # A name the daemon knows (e.g. t2.micro), passed on as the Go CPI did: it sizes the VM.
                body["instance_type"] = size.named_type
            fail_point("instance")
            self._reclaim_addresses(vm_cid, devices)
            made_instance = True  # set before the call: a timeout may still leave it behind
            with mapped("create_vm: instance"):
                self.client.request("POST", "/1.0/instances", body, params={"target": target})
            fail_point("settings")
            if is_vm:
                fail_point("start")
                self._start(vm_cid)
            else:
                settingsio.settings_then_start(self.host, vm_cid, settings, self._start)
            fail_point("started")
            with mapped("create_vm: done"):
                # The VM is the director's from here on (a PATCH changes only this key, live).
                self.client.request("PATCH", instance_path(vm_cid), {"config": {META + naming.CREATING_KEY: ""}})
        except BaseException as e:
            self._undo_create(vm_cid, made_instance, made_volumes)
            if isinstance(e, (VMCreationFailed, CpiError)):
                raise
            if isinstance(e, LXDError):
                e = to_bosh(e, "create_vm")
            if isinstance(e, BoshError):
                msg = e.message if e.message.startswith("create_vm") else f"create_vm: {e.message}"
                raise VMCreationFailed(msg, ok_to_retry=e.ok_to_retry) from None
            if isinstance(e, Exception):
                raise VMCreationFailed(f"create_vm: {type(e).__name__}: {e}", ok_to_retry=False) from None
            raise
        networks_out = {
            name: {
                **(spec.raw_networks.get(name) or {}),
                "type": agent_networks[name].get("type", "manual"),
                "mac": agent_networks[name]["mac"],
            }
            for name in spec.networks
        }
        log.info(f"created {'VM' if is_vm else 'container'} {vm_cid} from {spec.stemcell_cid}")
        return vm_cid, networks_out

    def _start(self, vm_cid: str) -> None:
        try:
            self.client.request("PUT", instance_path(vm_cid) + "/state", {"action": "start", "timeout": 60})
        except LXDError as e:
            # The director retries an interrupted create_vm with the same IP; the interrupted
            # attempt's instance may still claim that address. Reclaim and retry once.
            inst = (
                self.client.get(instance_path(vm_cid)) if "already defined on another nic" in e.message.lower() else {}
            )
            if not inst or not self._reclaim_addresses(vm_cid, inst.get("devices") or {}):
                raise to_bosh(e, "start") from None
            with mapped("start"):
                self.client.request("PUT", instance_path(vm_cid) + "/state", {"action": "start", "timeout": 60})

    def _reclaim_addresses(self, vm_cid: str, devices: dict[str, Any]) -> bool:
        """Delete interrupted create_vm attempts (naming.interrupted: boshcpi instances still marked
        `creating` by a process that is gone) that hold one of this VM's NIC addresses: the director's
        retry of a killed create_vm asks for the same address, and only one VM may have it. An
        attempt the daemon is still starting or stopping is waited for first (its operations end,
        within operation_timeout; past that the answer is retryable). A live concurrent call's
        instance is never taken."""
        wanted = {
            (d.get("network") or d.get("parent"), d.get("ipv4.address"))
            for d in devices.values()
            if d.get("type") == "nic" and d.get("ipv4.address")
        }
        if not wanted:
            return False
        reclaimed = False
        now = self.client.daemon_time() or time.time()
        for other in self.client.get("/1.0/instances", params={"recursion": 1}) or []:
            cfg = other.get("config") or {}
            if (
                other["name"] == vm_cid
                or not ids.is_vm_cid(other["name"])
                or cfg.get(META + "created_by") != "boshcpi"
                or not naming.interrupted(other, now, self.creating_bound)
            ):
                continue
            held = {
                (d.get("network") or d.get("parent"), d.get("ipv4.address"))
                for d in (other.get("devices") or {}).values()
                if d.get("type") == "nic"
            }
            if held & wanted:
                log.warn(f"reclaiming the address(es) of {other['name']}: an interrupted create_vm's instance")
                self.delete_settled(other["name"], other)
                reclaimed = True
        return reclaimed

    @property
    def creating_bound(self) -> float:
        """The longest a create_vm runs: its image copy, volume and start each wait up to
        operation_timeout. A `creating` mark older than this is an interrupted attempt's, wherever
        its process ran."""
        return 3 * self.cfg.operation_timeout

    def delete_settled(self, vm_cid: str, inst: dict[str, Any]) -> None:
        """Delete an instance once the daemon's operations on it have ended (a killed create_vm's
        start may still run: the daemon refuses a delete meanwhile, "Instance is busy running a
        'start' operation", or on Incus "Instance is running"), within operation_timeout."""
        deadline = time.monotonic() + self.cfg.operation_timeout
        current: dict[str, Any] | None = inst
        while True:
            try:
                self.delete_owned(vm_cid, current)
                return
            except LXDError as e:
                msg = e.message.lower()
                if "busy" not in msg and "is running" not in msg:
                    raise
                if time.monotonic() >= deadline:
                    raise CloudError(
                        f"{vm_cid}: the daemon is still busy with it ({e.message}); retry", ok_to_retry=True
                    ) from None
                log.info(f"{vm_cid}: {e.message}; waiting for the daemon's operations on it")
            self._wait_operations(vm_cid, deadline)
            time.sleep(0.1)
            current = self.host.find_instance(vm_cid)

    def _wait_operations(self, vm_cid: str, deadline: float) -> None:
        """Wait for the daemon's running operations on an instance (GET /1.0/operations: by status,
        each naming the instances it works on, `/1.0/instances/<name>[?project=...]`)."""
        ops = self.client.get("/1.0/operations", params={"recursion": 1}) or {}
        groups = ops.values() if isinstance(ops, dict) else [ops]
        path = f"/1.0/instances/{vm_cid}"
        for op in (op for group in groups for op in group or []):
            urls = (op.get("resources") or {}).get("instances") or []
            if op.get("status") not in ("Running", "Pending") or not any(u.split("?")[0] == path for u in urls):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise CloudError(
                    f"{vm_cid}: the daemon is still {op.get('description', 'busy')!r} with it; retry", ok_to_retry=True
                )
            log.info(f"waiting for the daemon's {op.get('description', 'operation')!r} on {vm_cid} to end")
            try:
                self.client.wait(op["id"], timeout=left)
            except LXDError as e:
                if "did not finish" in e.message:
                    raise CloudError(
                        f"{vm_cid}: the daemon is still busy with it ({e.message}); retry", ok_to_retry=True
                    ) from None
                # It failed or is gone: either way it no longer runs.

    def _placement(self, spec: VMSpec, config: dict[str, str]) -> str:
        """Cluster member or @group for a new VM. Precedence: the VM's cloud properties (the
        director merges AZ, vm_type and vm_extensions there), a network's subnet cloud properties,
        `server.target`; with none, VMs of one instance group are spread over the members."""
        target = spec.cloud_properties.get("target")
        if not target:
            target = next(
                (n.cloud_properties.get("target") for n in spec.networks.values() if n.cloud_properties.get("target")),
                None,
            )
        target = str(target or self.cfg.server.target or "")
        group = ((spec.env.get("bosh") or {}) if isinstance(spec.env.get("bosh"), dict) else {}).get("group")
        if isinstance(group, str) and group:
            config[META + "group"] = group
        if not target and spec.disk_cids:
            # A recreated VM goes where its persistent disks are: LXD cannot move a custom volume
            # between members of a local pool, and Incus would copy the whole disk on every recreate.
            target = self._where_disks_are(spec.disk_cids)
        if not target and isinstance(group, str) and group:
            target = self._spread(group)
        return target

    def _where_disks_are(self, disk_cids: tuple[str, ...] | list[str]) -> str:
        from boshcpi.drivers.lxd import disks

        if not (self.client.server.get("environment") or {}).get("server_clustered"):
            return ""
        members = set()
        for cid in disk_cids:
            found = disks.find(self.host, cid)
            loc = (found[1].get("location") or "") if found else ""
            if loc and loc != "none":
                members.add(loc)
        if len(members) != 1:
            return ""  # remote pools (no location), or disks on several members: no single answer
        member = members.pop()
        state = self._member_state(member)
        if state != "Online":
            raise CloudError(
                f"create_vm: the VM's persistent disk(s) are on cluster member {member}, which is {state}; "
                "bring it back (or restore it from evacuation) and retry",
                ok_to_retry=True,
            )
        log.info(f"placing the VM on {member}, where its persistent disk(s) are")
        return member

    def _member_state(self, member: str) -> str:
        try:
            info = self.client.get(f"/1.0/cluster/members/{quote(member, '')}", project=False) or {}
        except LXDError as e:
            return f"unknown ({e.message})"
        return str(info.get("status") or "unknown")

    def _spread(self, group: str) -> str:
        """Anti-affinity: the online member with the fewest VMs of this group (then fewest VMs)."""
        env = self.client.server.get("environment") or {}
        if not env.get("server_clustered"):
            return ""
        members = [
            m["server_name"]
            for m in self.client.get("/1.0/cluster/members", params={"recursion": 1}, project=False) or []
            if m.get("status") == "Online"
        ]
        if len(members) < 2:
            return ""
        same = dict.fromkeys(members, 0)
        total = dict.fromkeys(members, 0)
        for inst in self.client.get("/1.0/instances", params={"recursion": 1}) or []:
            loc = inst.get("location")
            if loc in total:
                total[loc] += 1
                if (inst.get("config") or {}).get(META + "group") == group:
                    same[loc] += 1
        choice = min(members, key=lambda m: (same[m], total[m], m))
        log.info(f"placing a VM of group {group} on {choice} (group per member: {same})")
        return choice

    def _undo_create(self, vm_cid: str, made_instance: bool, volumes: list[str]) -> None:
        from boshcpi.drivers.lxd import settingsio

        log.warn(f"create_vm failed: removing what it made ({vm_cid}, {len(volumes)} volume(s))")
        if made_instance:
            try:
                self.host.delete_instance(vm_cid)
            except LXDError as e:
                log.warn(f"cleanup of {vm_cid} failed: {e.message}")
        for vol in volumes:
            if vol.startswith(naming.CONFIG_PREFIX):
                settingsio.delete_config_volume(self.host, vol)
            else:
                self.host.delete_volume(vol)

    def owned_volumes(self, vm_cid: str, inst: dict[str, Any] | None) -> list[tuple[str, str]]:
        """(pool, volume) of this VM's ephemeral and config drives, from its own device list (any
        layout: boshcpi's, boshcpi 0.1's, the Go CPI's), plus boshcpi's ephemeral volume by its exact
        name when it carries this VM's mark. Never by name prefix; persistent disks are never in it."""
        found: list[tuple[str, str]] = []
        for name, dev in ((inst or {}).get("devices") or {}).items():
            source = str(dev.get("source", ""))
            if dev.get("type") != "disk" or not source or dev.get("path") == "/" or naming.is_disk_cid(source):
                continue
            pool = dev.get("pool") or self.pool
            ours = naming.volume_owner(source) == vm_cid
            go = name in (naming.GO_CONFIG_DEVICE, naming.GO_EPHEMERAL_DEVICE) and (
                naming.is_go_volume(source, naming.CONFIG_PREFIX)
                or naming.is_go_volume(source, naming.EPHEMERAL_PREFIX)
            )
            if ours or go:
                found.append((pool, source))
        eph = naming.ephemeral_volume(vm_cid)
        if all(v != eph for _, v in found):
            vol = self.host.find_volume(eph)
            if vol is not None and (vol.get("config") or {}).get(META + "vm") == vm_cid:
                found.append((self.pool, eph))
        return found

    def delete_owned(self, vm_cid: str, inst: dict[str, Any] | None) -> None:
        from boshcpi.drivers.lxd import settingsio

        volumes = self.owned_volumes(vm_cid, inst)
        if inst is not None:
            self.host.delete_instance(vm_cid)
        for pool, vol in volumes:
            if vol.startswith(naming.CONFIG_PREFIX):
                if self.host.delete_volume(vol, pool):
                    self.host.delete_volume(vol + settingsio.COPY_SUFFIX, pool)
            else:
                self.host.delete_volume(vol, pool)

    def delete_vm(self, vm_cid: str) -> None:
        with mapped(f"delete_vm {vm_cid}"):
            inst = self.host.find_instance(vm_cid)
            if inst is not None and not self.host.is_owned(inst):
                log.warn(f"delete_vm: {vm_cid} is not a VM made by boshcpi or the Go LXD CPI; leaving it alone")
                return
            if inst is None:
                log.info(f"VM {vm_cid} is already gone")
                self.delete_owned(vm_cid, inst)
            else:
                # Ephemeral and config volumes go with the VM; persistent disks stay (only detached).
                # A killed delete_vm's stop may still run: its retry waits for it (delete_settled).
                self.delete_settled(vm_cid, inst)
            if inst is not None and inst.get("type") == "virtual-machine":
                from boshcpi.drivers.lxd import settingsio

                settingsio.forget_go_filestore(self.host, vm_cid)

    def reboot_vm(self, vm_cid: str) -> None:
        inst, _ = self.instance(vm_cid, "reboot_vm")
        if inst.get("type") == "container" and inst.get("status") == "Running":
            from boshcpi.drivers.lxd import settingsio

            # A container made by an older boshcpi gets its boot hook now; the reboot goes on without.
            try:
                settingsio.write_boot_hook(self.host, vm_cid)
            except LXDError as e:
                log.warn(f"reboot_vm: cannot write the boot hook into {vm_cid}: {e.message}")
        with mapped("reboot_vm", not_found=VMNotFound(f"reboot_vm: VM {vm_cid} not found")):
            self.host.change_state(vm_cid, "restart")

    def set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        self.instance(vm_cid, "set_vm_metadata")  # VMNotFound before any lock
        with self.host.lock(vm_cid, "set_vm_metadata"):
            self._set_vm_metadata(vm_cid, metadata)

    def _set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        inst, etag = self.instance(vm_cid, "set_vm_metadata")
        config = dict(inst.get("config") or {})
        for key, value in metadata.items():
            config[naming.metadata_config_key(key)] = value
        inst["config"] = config
        parts = [metadata.get(k, "") for k in ("deployment", "job", "index")]
        if metadata.get("name"):
            inst["description"] = f"{metadata.get('deployment', '')}/{metadata['name']}".strip("/")[:255]
        elif any(parts):
            inst["description"] = "/".join(p for p in parts if p)[:255]
        self.host.put_instance(vm_cid, inst, etag, "set_vm_metadata")

    # ---- disks -----------------------------------------------------------------------------
    def create_disk(self, spec: DiskSpec) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.create(self.host, spec)

    def delete_disk(self, disk_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.delete(self.host, disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        from boshcpi.drivers.lxd import disks

        return disks.exists(self.host, disk_cid)

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        from boshcpi.drivers.lxd import disks

        return disks.attach(self.host, vm_cid, disk_cid)

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.detach(self.host, vm_cid, disk_cid)

    def get_disks(self, vm_cid: str) -> list[str]:
        from boshcpi.drivers.lxd import disks

        return disks.attached(self.host, vm_cid)

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        from boshcpi.drivers.lxd import disks

        disks.resize(self.host, disk_cid, new_size_mb)

    def update_disk(self, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.update(self.host, disk_cid, new_size_mb, cloud_properties)

    def snapshot_disk(self, disk_cid: str, metadata: dict[str, Any]) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.snapshot(self.host, disk_cid, metadata)

    def delete_snapshot(self, snapshot_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.delete_snapshot(self.host, snapshot_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        from boshcpi.drivers.lxd import disks

        disks.set_metadata(self.host, disk_cid, metadata)
