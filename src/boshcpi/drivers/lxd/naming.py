"""Every name the LXD/Incus driver gives or accepts: cids, volumes, devices, disk serials and the disk
hints the agent gets. The one place where an LXD cid is parsed and checked.

How the agent finds a VM's disks (cloudfoundry/bosh-agent, OpenStack-style stemcells with agent.json
`DevicePathResolutionType: virtio`; bosh-linux-stemcell-builder `stemcell_builder/stages/
bosh_openstack_agent_settings`):
- a persistent disk: `platform/provider.go` chains `IDDevicePathResolver` then
  `MappedDevicePathResolver` (`infrastructure/devicepathresolver/virtio_device_path_resolver.go`).
  The id resolver globs `/dev/disk/by-id/*<ID>` where ID is the **disk cid** (the key of
  `disks.persistent`, `settings/settings.go` populatePersistentDiskSettings; the hint's `id` only
  fills DeviceID, which Linux never reads). Cids under 20 characters are refused there, and older
  agents glob only the first 20 characters, so a cid is exactly 20 characters and equal to the tail
  of its by-id link. When the glob fails (after 0.5 s) the mapped resolver takes the hint's `path`:
  `/dev/sdX` is also tried as `/dev/xvdX` and `/dev/vdX`; a symlink is read one level and resolved
  relative to its folder (`mapped_device_path_resolver.go`), so a `/dev/disk/by-id/...` path works.
- the ephemeral disk: by its hint's `path` only (settings.go EphemeralDiskSettings sets no ID).

What the guest sees (LXD 5.0.2 `lxd/instance/drivers/driver_qemu.go` addDriveConfig, Incus 6.0.4
`internal/server/instance/drivers/driver_qemu.go`, read in Debian's source packages): every disk is
a `scsi-hd` (an `iso` volume a `scsi-cd`) on one virtio-scsi controller, lun 1, targets taken in
device start order: the root disk first, then the other disks by `path`, then by device name
(`lxd/device/config/devices_sort.go`). The serial is `lxd_<device>` / `incus_<device>` (`/` -> `-`,
`-` -> `--`). LXD 5.0 sets no `device_id`, so QEMU takes the serial's first 20 characters for the
SCSI device identification (QEMU 9.1+ refuses a longer serial there); Incus sets `device_id` to the
same `incus_<device>`. udev names the link `scsi-0QEMU_QEMU_HARDDISK_<device_id>`.

So a persistent disk's cid is its serial: `lxd_p<15 hex>` (LXD) or `incus_p<13 hex>` (Incus), 20
characters; its device is `p<hex>` and its volume is named by the cid. Device names sort
root < `ephemeral` < `metadata` (config drive) < `p...`, so even `/dev/sdX` guesses hold.
"""

from __future__ import annotations

import os

from boshcpi import ids

SERIAL_LIMIT = 20  # the SCSI device identification LXD 5.0 gets (QEMU's default device_id)
BY_ID = "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_"

# Devices boshcpi gives a VM or container.
ROOT_DEVICE = "root"
EPHEMERAL_DEVICE = "ephemeral"
CONFIG_DEVICE = "metadata"
CONTAINER_EPHEMERAL_PATH = "/var/vcap/data"

# Volumes: ephemeral and config drives of boshcpi VMs carry the VM's uuid.
EPHEMERAL_PREFIX = "vol-e-"
CONFIG_PREFIX = "vol-c-"
# Persistent disks before the 20-character scheme (boshcpi 0.1 and the Go CPI): `vol-p-<uuid>`.
LEGACY_DISK_PREFIX = "vol-p-"
SNAPSHOT_MARK = "snap-"

# Devices of earlier layouts this driver still reads (takeover and upgrades).
GO_CONFIG_DEVICE = "config"  # the Go CPI: an `iso` volume vol-c-<uuid>
GO_EPHEMERAL_DEVICE = "ephemeral"  # the Go CPI: vol-e-<its own uuid>
GO_PERSISTENT_DEVICE_PREFIX = "persistent-"  # the Go CPI: persistent-1, persistent-2
OLD_CONFIG_DEVICE = "cfg"  # boshcpi 0.1
OLD_CONTAINER_EPHEMERAL_DEVICE = "eph"  # boshcpi 0.1 containers
CONFIG_DEVICES = (CONFIG_DEVICE, GO_CONFIG_DEVICE, OLD_CONFIG_DEVICE)

META = "user.bosh."
# The keys under META the CPI writes and reads back: ownership (`created_by`, which has_vm and
# delete_vm trust), what a volume is (`kind`, `vm`, `created`, which cleanup trusts), the stemcell,
# agent and spread group. Manifest metadata never lands on them: a tag named `created_by` would
# otherwise take a VM away from its CPI (has_vm false, delete_vm a no-op while it runs on).
OWN_KEYS = frozenset(
    {
        "created_by", "kind", "vm", "created", "agent_id", "stemcell", "group", "creating",
        "moving-from", "move-copied", "moving-to-pool", "moving-from-pool",
    }
)  # fmt: skip
CREATING_KEY = "creating"


def creating_mark(written: float) -> str:
    """The `creating` mark of an attempt: when it was made (the daemon's clock, as the call knows it)
    and the process making it (boshcpi.lease.identity: no two processes anywhere share it)."""
    from boshcpi import lease

    return f"{written:.0f} {lease.identity()}"


def mark_time(mark: str) -> float | None:
    try:
        return float(mark.split()[0])
    except (IndexError, ValueError):
        return None


def interrupted(inst: dict, now: float, bound: float) -> bool:
    """An instance an interrupted create_vm left, never a live call's: still marked `creating`
    (create_vm clears the mark just before it answers) by a process that is gone (this machine's,
    known by its identity), or by any process longer ago than `bound` (the longest a create_vm runs);
    a mark without the process (an older boshcpi's) counts as interrupted. An instance that never
    started and has no mark is one made before that mark existed. `now`: the daemon's clock."""
    from boshcpi import lease

    cfg = inst.get("config") or {}
    mark = str(cfg.get(META + CREATING_KEY) or "")
    if not mark:
        return inst.get("status") == "Stopped" and "volatile.last_state.power" not in cfg
    parts = mark.split()
    if len(parts) < 2:
        return True
    if lease.holder_gone(parts[1]):
        return True
    written = mark_time(mark)
    return written is None or now - written > bound


TAG_PREFIX = "tag."


def metadata_config_key(key: str) -> str:
    """Where a BOSH metadata key goes in an instance's or volume's config: `user.bosh.<key>`, or
    `user.bosh.tag.<key>` for a key the CPI owns (and for one already starting with `tag.`, so two
    keys never share a place)."""
    k = ids.metadata_key(key)
    return META + (TAG_PREFIX + k if k in OWN_KEYS or k.startswith(TAG_PREFIX) else k)


def serial_prefix(server_type: str) -> str:
    return "incus_" if server_type == "incus" else "lxd_"


def disk_prefix(server_type: str) -> str:
    return serial_prefix(server_type) + "p"


def _hex_len(server_type: str) -> int:
    return SERIAL_LIMIT - len(disk_prefix(server_type))


# ---- persistent disks -----------------------------------------------------------------------


def new_disk_cid(server_type: str) -> str:
    return disk_prefix(server_type) + ids.new_hex(_hex_len(server_type))


def is_disk_cid(cid: str) -> bool:
    """A persistent disk cid this driver may touch: `lxd_p<15 hex>`, `incus_p<13 hex>` or the
    earlier `vol-p-<uuid>` (boshcpi 0.1 and the Go CPI)."""
    for server_type in ("lxd", "incus"):
        prefix = disk_prefix(server_type)
        if cid.startswith(prefix) and ids.is_hex(cid[len(prefix) :], _hex_len(server_type)):
            return True
    return is_legacy_disk_cid(cid)


def is_legacy_disk_cid(cid: str) -> bool:
    return ids.has_uuid_after(cid, LEGACY_DISK_PREFIX)


def disk_volume(cid: str) -> str:
    """The custom volume of a persistent disk: named by its cid."""
    return cid


def persistent_device(cid: str, server_type: str) -> str:
    """The device name a persistent disk gets when attached: `p<hex>`, so `<serial prefix><device>`
    is 20 characters. For a 20-character cid that is the cid itself."""
    for kind in ("lxd", "incus"):
        prefix = serial_prefix(kind)
        if cid.startswith(prefix + "p") and len(cid) == SERIAL_LIMIT:
            return cid[len(prefix) :][: 1 + _hex_len(server_type)]
    return "p" + ids.vm_uuid("vm-" + cid[len(LEGACY_DISK_PREFIX) :]).replace("-", "")[: _hex_len(server_type)]


# ---- snapshots ------------------------------------------------------------------------------


def new_snapshot_cid(disk_cid: str) -> str:
    return f"{disk_cid}@{SNAPSHOT_MARK}{ids.new_hex(12)}"


def split_snapshot_cid(snapshot_cid: str) -> tuple[str, str] | None:
    """(disk cid, volume snapshot name) of `<disk cid>@snap-<12 hex>` (boshcpi) or
    `vol-p-<uuid>_snap-<uuid>` (the Go CPI's snapshot_disk); None for anything else."""
    disk, sep, snap = snapshot_cid.partition("@")
    if sep:
        tail = snap[len(SNAPSHOT_MARK) :]
        if is_disk_cid(disk) and snap.startswith(SNAPSHOT_MARK) and ids.is_hex(tail, 12):
            return disk, snap
        return None
    disk, sep, snap = snapshot_cid.partition("_" + SNAPSHOT_MARK)
    if sep and is_legacy_disk_cid(disk) and ids.is_uuid(snap):
        return disk, SNAPSHOT_MARK + snap
    return None


# ---- VM volumes -----------------------------------------------------------------------------


def ephemeral_volume(vm_cid: str) -> str:
    return EPHEMERAL_PREFIX + ids.vm_uuid(vm_cid)


def config_volume(vm_cid: str) -> str:
    """A fresh name each time: a running VM may hold the previous config volume until reboot."""
    return f"{CONFIG_PREFIX}{ids.vm_uuid(vm_cid)}-{os.urandom(3).hex()}"


def volume_owner(name: str) -> str | None:
    """The vm cid in a boshcpi ephemeral or config volume's name (`vol-e-<uuid>`,
    `vol-c-<uuid>-<6 hex>`); None for any other name, the Go CPI's included (their uuids are their own)."""
    if name.startswith(EPHEMERAL_PREFIX) and ids.is_uuid(name[len(EPHEMERAL_PREFIX) :]):
        return ids.VM_PREFIX + name[len(EPHEMERAL_PREFIX) :]
    if name.startswith(CONFIG_PREFIX):
        rest = name[len(CONFIG_PREFIX) :]
        if len(rest) == 43 and rest[36] == "-" and ids.is_uuid(rest[:36]) and ids.is_hex(rest[37:], 6):
            return ids.VM_PREFIX + rest[:36]
    return None


def is_cpi_volume(name: str) -> bool:
    """A custom volume a CPI made (boshcpi's or the Go CPI's): config drives, ephemeral and persistent
    disks, by name (a snapshot `disk/snap` counts as its disk)."""
    base = name.split("/", 1)[0]
    return base.startswith((CONFIG_PREFIX, EPHEMERAL_PREFIX, LEGACY_DISK_PREFIX)) or is_disk_cid(base)


def is_go_volume(name: str, prefix: str) -> bool:
    """`vol-c-<uuid>` / `vol-e-<uuid>`: the Go CPI's config and ephemeral volumes."""
    return ids.has_uuid_after(name, prefix)


# ---- disk hints -----------------------------------------------------------------------------


def escape_device(name: str) -> str:
    """LXD/Incus' PathNameEncode: `-` -> `--`, then `/` -> `-`."""
    return name.replace("-", "--").replace("/", "-")


def serial(device: str, server_type: str) -> str:
    return serial_prefix(server_type) + escape_device(device)


def by_id_path(device: str, server_type: str) -> str | None:
    """The guest's stable link to a VM disk, or None where its name depends on the daemon's and
    QEMU's versions (a serial over 20 characters)."""
    s = serial(device, server_type)
    return BY_ID + s if len(s) <= SERIAL_LIMIT else None


def sd_path(index: int) -> str:
    """/dev/sda, ..., /dev/sdz, /dev/sdaa, ... for the index-th SCSI disk."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "/dev/sd" + letters


def guest_order(devices: dict[str, dict[str, str]], iso_sources: set[str]) -> list[str]:
    """Disk device names in the order a VM's guest names them sda, sdb, ...: the root disk, then the
    other disks by path, then by name (devices_sort.go); `iso` volumes are CD-ROMs, not sd disks;
    disks with a path (host shares) are not SCSI disks at all."""
    disks = [(n, d) for n, d in devices.items() if d.get("type") == "disk"]
    root = [n for n, d in disks if d.get("path") == "/"]
    others = sorted(
        (n for n, d in disks if not d.get("path") and d.get("source") and d.get("source") not in iso_sources),
    )
    return root + others


def vm_hint(device: str, server_type: str, devices: dict[str, dict[str, str]], iso_sources: set[str]) -> dict:
    """The hint for a VM disk device: its by-id link, or (names longer than a stable serial allows)
    the sd path the guest gives it in device order."""
    path = by_id_path(device, server_type)
    if path is None:
        order = guest_order(devices, iso_sources)
        path = sd_path(order.index(device)) if device in order else ""
    return {"path": path}
