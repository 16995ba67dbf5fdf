"""Cids and derived names. Every object boshcpi makes has a name of a fixed form, so `cleanup` and
`doctor` can tell what is ours and which VM an ephemeral or config volume belongs to."""

from __future__ import annotations

import os

VM_PREFIX = "vm-"
STEMCELL_PREFIX = "img-"
PERSISTENT_PREFIX = "vol-p-"
EPHEMERAL_PREFIX = "vol-e-"
CONFIG_PREFIX = "vol-c-"
SNAPSHOT_MARK = "snap-"

_HEX = frozenset("0123456789abcdef")


def is_uuid(text: str) -> bool:
    parts = text.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(c in _HEX for p in parts for c in p)


def is_cid(text: str, prefix: str) -> bool:
    """True for `<prefix><uuid>`, e.g. is_cid('vm-…', VM_PREFIX)."""
    return text.startswith(prefix) and is_uuid(text[len(prefix) :])


def new_id() -> str:
    """A random (version 4) UUID, without the `uuid` module's import cost."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_vm_cid() -> str:
    return VM_PREFIX + new_id()


def new_disk_cid() -> str:
    return PERSISTENT_PREFIX + new_id()


def new_stemcell_cid() -> str:
    return STEMCELL_PREFIX + new_id()


def vm_uuid(vm_cid: str) -> str:
    return vm_cid[len(VM_PREFIX) :] if vm_cid.startswith(VM_PREFIX) else vm_cid


def ephemeral_volume(vm_cid: str) -> str:
    return EPHEMERAL_PREFIX + vm_uuid(vm_cid)


def config_volume(vm_cid: str) -> str:
    """A fresh name each time: a running VM may hold the previous config volume until reboot."""
    return f"{CONFIG_PREFIX}{vm_uuid(vm_cid)}-{os.urandom(3).hex()}"


def owner_of_volume(name: str) -> str | None:
    """vm cid an ephemeral or config volume belongs to, from its name."""
    for prefix in (EPHEMERAL_PREFIX, CONFIG_PREFIX):
        if name.startswith(prefix):
            return VM_PREFIX + name[len(prefix) : len(prefix) + 36]
    return None


def new_snapshot_cid(disk_cid: str) -> str:
    return f"{disk_cid}@{SNAPSHOT_MARK}{os.urandom(6).hex()}"


def split_snapshot_cid(snapshot_cid: str) -> tuple[str, str] | None:
    """(disk_cid, snapshot name) of `vol-p-<uuid>@snap-<12 hex>`, or None."""
    disk, sep, snap = snapshot_cid.partition("@")
    tail = snap[len(SNAPSHOT_MARK) :]
    if (
        sep
        and is_cid(disk, PERSISTENT_PREFIX)
        and snap.startswith(SNAPSHOT_MARK)
        and len(tail) == 12
        and all(c in _HEX for c in tail)
    ):
        return disk, snap
    return None


def persistent_device(disk_cid: str) -> str:
    """Device name of a persistent disk: `p` plus 19 hex digits of its uuid, 20 characters.

    Short (Incus limits device name length) yet exactly 20 characters: LXD/Incus give a VM's disk the
    serial `lxd_<device>`/`incus_<device>`, so the agent's by-id resolver (which globs
    /dev/disk/by-id/*<first 20 characters of the hint's id>) finds it by this name."""
    return _device("p", disk_cid[len(PERSISTENT_PREFIX) :])


def ephemeral_device(vm_cid: str) -> str:
    """Device name of a VM's ephemeral disk, found by the agent the same way."""
    return _device("e", vm_uuid(vm_cid))


def _device(letter: str, uuid_text: str) -> str:
    return letter + uuid_text.replace("-", "")[:19]


def random_mac(prefix: str = "00:16:3e") -> str:
    tail = os.urandom(3)
    return prefix + "".join(f":{b:02x}" for b in tail)


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def metadata_key(key: str) -> str:
    """A BOSH metadata key as an LXD config key suffix: lower-case [a-z0-9_.-]."""
    return "".join(c if c in _KEY_CHARS else "_" for c in key.lower())
