"""The VM config drive: the agent settings as user-data plus a small meta-data file, on a FAT32 or
ISO9660 ("CDROM") image labelled as `agent_config.label` says (config-2 by default)."""

from __future__ import annotations

from boshcpi import fastjson
from boshcpi.agent import settings as agent_settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def build(settings: dict[str, Any], *, kind: str, label: str, userdata_path: str, metadata_path: str) -> bytes:
    vm = settings.get("vm") or {}
    files = {
        userdata_path: agent_settings.dumps(settings),
        metadata_path: agent_settings.metadata(str(vm.get("id", ""))),
    }
    if kind == "CDROM":
        from boshcpi.agent import iso9660

        return iso9660.build(files, label=label)
    from boshcpi.agent import fat32

    return fat32.build(files, label=label)


def read_settings(image: bytes, *, userdata_path: str) -> dict[str, Any]:
    """The settings back from a config drive image this module built (FAT32 or ISO9660)."""
    if image[16 * 2048 + 1 : 16 * 2048 + 6] == b"CD001":
        from boshcpi.agent import iso9660

        return fastjson.loads(iso9660.read(image, userdata_path))
    from boshcpi.agent import fat32

    return fastjson.loads(fat32.read(image, userdata_path))
