"""The VM config drive: the agent settings as user-data plus a small meta-data file, on a FAT32 or
ISO9660 ("CDROM") image labelled as `agent_config.label` says (config-2 by default).

Reading back also takes the layouts the Go CPIs wrote: a FAT32 filesystem inside an MBR partition
(a2geek/libvirt-bosh-cpi and bosh-lxd-cpi-release configdrive managers) and plain or Rock Ridge ISO
names."""

from __future__ import annotations

import struct

from boshcpi import fastjson
from boshcpi.agent import settings as agent_settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def build(
    settings: dict[str, Any],
    *,
    kind: str,
    label: str,
    userdata_path: str,
    metadata_path: str,
    filename: str = "",
    public_key: str = "",
) -> bytes:
    """The drive image. With `filename` (the Go libvirt CPI's CDROM type, read by the agent's vSphere-
    style CDROM source) the ISO holds just that one settings file."""
    if filename:
        from boshcpi.agent import iso9660

        return iso9660.build({filename: agent_settings.dumps(settings)}, label=label)
    vm = settings.get("vm") or {}
    files = {
        userdata_path: agent_settings.dumps(settings),
        metadata_path: agent_settings.metadata(str(vm.get("id", "")), public_key),
    }
    if kind == "CDROM":
        from boshcpi.agent import iso9660

        return iso9660.build(files, label=label)
    from boshcpi.agent import fat32

    return fat32.build(files, label=label)


def settings_bytes(settings: dict[str, Any]) -> bytes:
    return agent_settings.dumps(settings)


def _fat_partition(image: bytes) -> bytes | None:
    """The FAT filesystem inside an MBR-partitioned image, if that is what it is."""
    if len(image) < 512 or image[510:512] != b"\x55\xaa" or image[82:90].startswith(b"FAT32"):
        return None
    for i in range(4):
        entry = image[446 + 16 * i : 462 + 16 * i]
        ptype, start = entry[4], struct.unpack_from("<I", entry, 8)[0]
        if ptype in (0x0B, 0x0C, 0x0E, 0x06) and start:
            part = image[start * 512 :]
            if part[82:87] == b"FAT32" or part[54:57] == b"FAT":
                return part
    return None


def read_file(image: bytes, path: str) -> bytes:
    """One file from a config drive image (ISO9660, FAT32, or FAT32 in an MBR partition)."""
    if image[16 * 2048 + 1 : 16 * 2048 + 6] == b"CD001":
        from boshcpi.agent import iso9660

        return iso9660.read(image, path)
    from boshcpi.agent import fat32

    part = _fat_partition(image)
    return fat32.read(part if part is not None else image, path)


def read_settings(image: bytes, *, userdata_path: str) -> dict[str, Any]:
    """The settings back from a config drive image."""
    return fastjson.loads(read_file(image, userdata_path))
