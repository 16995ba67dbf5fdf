"""Identifiers every driver uses: UUIDs and hex ids without the `uuid` module, the VM and stemcell cid
forms both CPIs share, MAC addresses, and metadata keys. Each driver's `naming.py` builds its own cids
(disks, snapshots, volumes, devices) from these; `dispatch` asks the driver whether a cid is one of
its forms before anything reaches a daemon."""

from __future__ import annotations

import os

VM_PREFIX = "vm-"
STEMCELL_PREFIX = "img-"

_HEX = frozenset("0123456789abcdef")


def is_hex(text: str, length: int | None = None) -> bool:
    return bool(text) and (length is None or len(text) == length) and all(c in _HEX for c in text)


def is_uuid(text: str) -> bool:
    parts = text.split("-")
    return [len(p) for p in parts] == [8, 4, 4, 4, 12] and all(is_hex(p) for p in parts)


def has_uuid_after(text: str, prefix: str) -> bool:
    """True for `<prefix><uuid>`, e.g. has_uuid_after('vm-…', VM_PREFIX)."""
    return text.startswith(prefix) and is_uuid(text[len(prefix) :])


def new_id() -> str:
    """A random (version 4) UUID, without the `uuid` module's import cost."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_hex(length: int) -> str:
    return os.urandom((length + 1) // 2).hex()[:length]


def new_vm_cid() -> str:
    return VM_PREFIX + new_id()


def is_vm_cid(text: str) -> bool:
    """`vm-<uuid>`: boshcpi's VMs and both Go CPIs' VMs."""
    return has_uuid_after(text, VM_PREFIX)


def vm_uuid(vm_cid: str) -> str:
    return vm_cid[len(VM_PREFIX) :]


def new_stemcell_cid() -> str:
    return STEMCELL_PREFIX + new_id()


def random_mac(prefix: str = "00:16:3e") -> str:
    tail = os.urandom(3)
    return prefix + "".join(f":{b:02x}" for b in tail)


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.-")


def metadata_key(key: str) -> str:
    """A BOSH metadata key as a config key suffix: lower-case [a-z0-9_.-]."""
    return "".join(c if c in _KEY_CHARS else "_" for c in key.lower())
