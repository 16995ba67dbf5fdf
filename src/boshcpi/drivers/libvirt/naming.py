"""Every name the libvirt driver gives or accepts: cids, volumes, disk serials and hints. The one place
where a libvirt cid is parsed and checked.

The guest names virtio-blk disks in PCI order, not by the domain XML's `target dev` (hot-plugged and
removed disks leave the vdX letters in an order no CPI can predict). What is stable is the serial:
udev links `/dev/disk/by-id/virtio-<serial>`, the serial being at most 20 bytes (virtio-blk's
VIRTIO_BLK_ID_BYTES). The agent (cloudfoundry/bosh-agent, `virtio` path resolution, see the LXD
driver's naming.py for the whole chain) globs `/dev/disk/by-id/*<disk cid>` first, so a persistent
disk's cid *is* its serial: `virt_p<14 hex>`, 20 characters, and the volume is named by it. Hints
are the by-id links themselves, for the ephemeral disk too (found by path only).

Earlier layouts this driver still reads:
- boshcpi 0.1: disks `vol-p-<uuid>` with serials `p<19 hex>`; boot overlays `<vm cid>-root`,
  `vol-e-<uuid>`, `vol-c-<uuid>-<hex>`;
- the Go libvirt CPI (a2geek/libvirt-bosh-cpi): stemcells `sc-<uuid>` with cid `<uuid>`, boot clones
  `bdisk-<uuid>`, `edisk-<uuid>`, config drives `cdisk-<uuid>`, disks `pdisk-<uuid>` (no serials),
  snapshots that are the constant cid `snap-cid` (it never made any).
"""

from __future__ import annotations

import os

from boshcpi import ids

SERIAL_LIMIT = 20
BY_ID = "/dev/disk/by-id/virtio-"
DISK_PREFIX = "virt_p"
LEGACY_DISK_PREFIX = "vol-p-"
GO_DISK_PREFIX = "pdisk-"
GO_STEMCELL_PREFIX = "sc-"
GO_BOOT_PREFIX = "bdisk-"
GO_EPHEMERAL_PREFIX = "edisk-"
GO_CONFIG_PREFIX = "cdisk-"
GO_SNAPSHOT_CID = "snap-cid"
EPHEMERAL_PREFIX = "vol-e-"
CONFIG_PREFIX = "vol-c-"
ROOT_SUFFIX = "-root"
SNAPSHOT_MARK = "snap-"

ROOT_SERIAL = "root"
EPHEMERAL_SERIAL = "ephemeral"
CONFIG_SERIAL = "config-2"


def new_disk_cid() -> str:
    return DISK_PREFIX + ids.new_hex(SERIAL_LIMIT - len(DISK_PREFIX))


def is_disk_cid(cid: str) -> bool:
    """`virt_p<14 hex>`, or the earlier `vol-p-<uuid>` (boshcpi 0.1) and `pdisk-<uuid>` (Go CPI)."""
    if cid.startswith(DISK_PREFIX) and ids.is_hex(cid[len(DISK_PREFIX) :], SERIAL_LIMIT - len(DISK_PREFIX)):
        return True
    return ids.has_uuid_after(cid, LEGACY_DISK_PREFIX) or ids.has_uuid_after(cid, GO_DISK_PREFIX)


def disk_serial(cid: str) -> str:
    """The serial a persistent disk is attached with: the cid itself where it fits (20 characters),
    else (earlier layouts) `p` + 19 hex of its uuid, which the guest links as virtio-p<19 hex>."""
    if len(cid) <= SERIAL_LIMIT:
        return cid
    return "p" + cid.split("-", 2)[-1].replace("-", "")[:19]


def by_id_path(serial: str) -> str:
    return BY_ID + serial[:SERIAL_LIMIT]


def is_stemcell_cid(cid: str) -> bool:
    """`img-<uuid>` (boshcpi) or a bare `<uuid>` (the Go CPI, whose volume is `sc-<uuid>`)."""
    return ids.has_uuid_after(cid, ids.STEMCELL_PREFIX) or ids.is_uuid(cid)


def stemcell_volume(cid: str) -> str:
    return GO_STEMCELL_PREFIX + cid if ids.is_uuid(cid) else cid


def root_volume(vm_cid: str) -> str:
    return vm_cid + ROOT_SUFFIX


def ephemeral_volume(vm_cid: str) -> str:
    return EPHEMERAL_PREFIX + ids.vm_uuid(vm_cid)


def config_volume(vm_cid: str) -> str:
    return f"{CONFIG_PREFIX}{ids.vm_uuid(vm_cid)}-{os.urandom(3).hex()}"


def owned_by(volume: str, vm_cid: str) -> bool:
    """Whether a boot, ephemeral or config volume belongs to this VM by its exact name (boshcpi's
    forms and the Go CPI's share the VM's uuid)."""
    uid = ids.vm_uuid(vm_cid)
    if volume in (root_volume(vm_cid), ephemeral_volume(vm_cid)):
        return True
    if volume in (GO_BOOT_PREFIX + uid, GO_EPHEMERAL_PREFIX + uid, GO_CONFIG_PREFIX + uid):
        return True
    rest = volume[len(CONFIG_PREFIX) :]
    return volume.startswith(CONFIG_PREFIX) and rest[:36] == uid and len(rest) == 43 and ids.is_hex(rest[37:], 6)


def volume_owner(volume: str) -> str | None:
    """The vm cid a boot/ephemeral/config volume names, in either CPI's layout; None otherwise."""
    if volume.endswith(ROOT_SUFFIX) and ids.is_vm_cid(volume[: -len(ROOT_SUFFIX)]):
        return volume[: -len(ROOT_SUFFIX)]
    for prefix in (EPHEMERAL_PREFIX, GO_BOOT_PREFIX, GO_EPHEMERAL_PREFIX, GO_CONFIG_PREFIX):
        if ids.has_uuid_after(volume, prefix):
            return ids.VM_PREFIX + volume[len(prefix) :]
    rest = volume[len(CONFIG_PREFIX) :]
    if volume.startswith(CONFIG_PREFIX) and len(rest) == 43 and ids.is_uuid(rest[:36]) and ids.is_hex(rest[37:], 6):
        return ids.VM_PREFIX + rest[:36]
    return None


def new_snapshot_cid(disk_cid: str) -> str:
    return f"{disk_cid}@{SNAPSHOT_MARK}{ids.new_hex(12)}"


def split_snapshot_cid(snapshot_cid: str) -> tuple[str, str] | None:
    disk, sep, snap = snapshot_cid.partition("@")
    tail = snap[len(SNAPSHOT_MARK) :]
    if sep and is_disk_cid(disk) and snap.startswith(SNAPSHOT_MARK) and ids.is_hex(tail, 12):
        return disk, snap
    return None


def is_snapshot_cid(cid: str) -> bool:
    return split_snapshot_cid(cid) is not None or cid == GO_SNAPSHOT_CID
