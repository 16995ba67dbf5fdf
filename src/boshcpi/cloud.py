"""The Cloud interface every driver implements, and the typed specs the dispatcher hands it.

Drivers never see the JSON envelope; the dispatcher never sees an LXD or libvirt object.
"""

from __future__ import annotations

from boshcpi.protocol import CpiError, NotImplementedByCpi
from boshcpi.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class NetworkSpec(Record):
    """One entry of create_vm's `networks` map, as the director sent it."""

    __slots__ = ("cloud_properties", "default", "dns", "gateway", "ip", "mac", "name", "netmask", "raw", "type")
    _defaults = {
        "ip": "",
        "netmask": "",
        "gateway": "",
        "dns": (),
        "default": (),
        "mac": "",
        "cloud_properties": {},
        "raw": {},
    }
    name: str
    type: str
    ip: str
    netmask: str
    gateway: str
    dns: tuple[str, ...]
    default: tuple[str, ...]
    mac: str
    cloud_properties: dict[str, Any]
    raw: dict[str, Any]

    @property
    def prefix_length(self) -> int | None:
        if not self.netmask:
            return None
        try:
            bits = "".join(f"{int(o):08b}" for o in self.netmask.split("."))
        except ValueError:
            return None
        return bits.count("1")


class StemcellSpec(Record):
    __slots__ = ("cloud_properties", "image_path")
    image_path: str
    cloud_properties: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.cloud_properties.get("name") or "")

    @property
    def version(self) -> str:
        return str(self.cloud_properties.get("version") or "")

    @property
    def disk_format(self) -> str:
        return str(self.cloud_properties.get("disk_format") or "")

    @property
    def infrastructure(self) -> str:
        return str(self.cloud_properties.get("infrastructure") or "")

    @property
    def architecture(self) -> str:
        return str(self.cloud_properties.get("architecture") or "x86_64")

    @property
    def os(self) -> str:
        """The stemcell line, e.g. 'ubuntu-jammy' (from `os_distro`/`name`)."""
        for key in ("os_distro", "name", "os_type"):
            v = self.cloud_properties.get(key)
            if isinstance(v, str) and v:
                return v
        return ""

    @property
    def is_container(self) -> bool:
        """Warden-style stemcells carry a root filesystem tarball, not a disk image."""
        fmt = self.disk_format.lower()
        infra = self.infrastructure.lower()
        return fmt in ("files", "rootfs", "tgz") or infra in ("warden", "lxd-container", "container")


class VMSpec(Record):
    __slots__ = ("agent_id", "cloud_properties", "disk_cids", "env", "networks", "raw_networks", "stemcell_cid")
    _defaults = {"raw_networks": {}}
    agent_id: str
    stemcell_cid: str
    cloud_properties: dict[str, Any]
    networks: dict[str, NetworkSpec]
    disk_cids: tuple[str, ...]
    env: dict[str, Any]
    raw_networks: dict[str, Any]

    def nic_order(self) -> list[NetworkSpec]:
        """The networks in NIC order: the default-gateway network first (eth0), then by name."""
        return sorted(self.networks.values(), key=lambda n: ("gateway" not in n.default, n.name))


class DiskSpec(Record):
    __slots__ = ("cloud_properties", "size_mb", "vm_cid")
    size_mb: int
    cloud_properties: dict[str, Any]
    vm_cid: str | None


class VMResources(Record):
    __slots__ = ("cpu", "ephemeral_disk_mb", "ram_mb")
    cpu: int
    ram_mb: int
    ephemeral_disk_mb: int


class VMSize(Record):
    """Common VM cloud properties: cpus, memory (MiB), ephemeral disk (MiB), and an instance type name
    the IaaS sizes itself (`named_type`, e.g. LXD's `t2.micro`)."""

    __slots__ = ("cpus", "ephemeral_mb", "memory_mb", "named_type")
    _defaults = {"cpus": 1, "memory_mb": 1024, "ephemeral_mb": 0, "named_type": ""}
    cpus: int
    memory_mb: int
    ephemeral_mb: int
    named_type: str


# Bounds no host reaches: a bigger number is a typo (or an attack), answered before any IaaS call.
MAX_CPUS = 1024
MAX_MEMORY_MB = 16 << 20  # 16 TiB
MAX_DISK_MB = 1 << 30  # 1 PiB
_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def _instance_type(text: object) -> tuple[int, int] | None:
    """'c2-m4' -> (2 cpus, 4096 MiB); None if not of that form."""
    if not isinstance(text, str) or not text.startswith("c") or "-m" not in text:
        return None
    cpu, _, mem = text[1:].partition("-m")
    if not cpu.isdigit():
        return None
    try:
        cpus, gib = int(cpu), float(mem)
    except ValueError:
        return None
    if cpus < 1 or not gib > 0 or gib != gib:
        return None
    return cpus, int(gib * 1024)


def _looks_cm(text: str) -> bool:
    """`c<digits>-m<number>`: LXD's form, whose values must then be valid."""
    cpu, sep, mem = text[1:].partition("-m")
    return text.startswith("c") and bool(sep) and cpu.isdigit() and mem.replace(".", "", 1).isdigit()


def parse_vm_size(props: dict[str, Any]) -> VMSize:
    """`instance_type` (LXD's cN-mM form, M in GiB; any other name is left to the IaaS), then
    `cpus`/`memory`/`ephemeral_disk` override. Every number is bounded."""
    cpus, memory, named = 1, 1024, ""
    itype = props.get("instance_type")
    if itype is not None:
        parsed = _instance_type(itype)
        if parsed is not None:
            cpus, memory = parsed
        elif isinstance(itype, str) and 0 < len(itype) <= 64 and set(itype) <= _TYPE_CHARS and not _looks_cm(itype):
            named = itype
        else:
            raise CpiError(
                f"cloud_properties.instance_type: expected 'c2-m4' (cpus, GiB) or an instance type name, got {itype!r}"
            )
    cpus = _bounded_int(props, "cpus", cpus, 1, MAX_CPUS)
    memory = _bounded_int(props, "memory", memory, 1, MAX_MEMORY_MB)
    if cpus > MAX_CPUS or memory > MAX_MEMORY_MB:
        raise CpiError(f"cloud_properties.instance_type: {itype!r} asks for more than any host has")
    ephemeral = _bounded_int(props, "ephemeral_disk", 0, 0, MAX_DISK_MB)
    return VMSize(cpus=cpus, memory_mb=memory, ephemeral_mb=ephemeral, named_type=named)


def _bounded_int(props: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = props.get(key)
    if value is None:
        return default
    if isinstance(value, dict) and key == "ephemeral_disk":
        value = value.get("size")
        if value is None:
            return default
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CpiError(f"cloud_properties.{key}: expected an integer from {low} to {high}, got {value!r}")
    return value


def calculate_vm_cloud_properties(res: VMResources) -> dict[str, Any]:
    """The cloud properties create_vm understands, from a director's resource request."""
    return {"cpus": res.cpu, "memory": res.ram_mb, "ephemeral_disk": res.ephemeral_disk_mb}


class Cloud:
    """What every driver implements. Unimplemented methods answer Bosh::Clouds::NotImplemented."""

    stemcell_formats: tuple[str, ...] = ()

    def recognises(self, kind: str, cid: str) -> bool:
        """Whether `cid` has one of the forms this driver gives (or takes over) for `kind` (vm, disk,
        snapshot, stemcell). The dispatcher answers any other cid as a missing object, without the
        driver ever seeing it."""
        return False

    def info(self) -> dict[str, Any]:
        return {"api_version": 2, "stemcell_formats": list(self.stemcell_formats)}

    def _missing(self, name: str) -> NotImplementedByCpi:
        return NotImplementedByCpi(f"{name} is not implemented by the {type(self).__name__} driver")

    def create_stemcell(self, spec: StemcellSpec) -> str:
        raise self._missing("create_stemcell")

    def delete_stemcell(self, stemcell_cid: str) -> None:
        raise self._missing("delete_stemcell")

    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        raise self._missing("create_vm")

    def delete_vm(self, vm_cid: str) -> None:
        raise self._missing("delete_vm")

    def has_vm(self, vm_cid: str) -> bool:
        raise self._missing("has_vm")

    def reboot_vm(self, vm_cid: str) -> None:
        raise self._missing("reboot_vm")

    def set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        raise self._missing("set_vm_metadata")

    def calculate_vm_cloud_properties(self, res: VMResources) -> dict[str, Any]:
        return calculate_vm_cloud_properties(res)

    def create_disk(self, spec: DiskSpec) -> str:
        raise self._missing("create_disk")

    def delete_disk(self, disk_cid: str) -> None:
        raise self._missing("delete_disk")

    def has_disk(self, disk_cid: str) -> bool:
        raise self._missing("has_disk")

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        raise self._missing("attach_disk")

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        raise self._missing("detach_disk")

    def get_disks(self, vm_cid: str) -> list[str]:
        raise self._missing("get_disks")

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        raise self._missing("resize_disk")

    def update_disk(self, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
        raise self._missing("update_disk")

    def snapshot_disk(self, disk_cid: str, metadata: dict[str, Any]) -> str:
        raise self._missing("snapshot_disk")

    def delete_snapshot(self, snapshot_cid: str) -> None:
        raise self._missing("delete_snapshot")

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        raise self._missing("set_disk_metadata")

    def close(self) -> None:
        """Release connections; called once after the method returns."""
