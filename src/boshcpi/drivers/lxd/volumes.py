"""Moving bytes in and out of custom volumes.

A custom-volume backup tarball (`backup/index.yaml` plus `backup/volume.img`) imports a block volume
on LXD and Incus alike and exports the same way for reading back. Where the daemon has the
`custom_volume_iso` extension an ISO image can also become an `iso` volume (a CD-ROM in the guest);
those cannot be exported again.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile

from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote
from boshcpi.stemcell import yaml_quote


def _index_yaml(name: str, pool: str, size_mb: int, config: dict[str, str]) -> str:
    lines = [
        f"name: {yaml_quote(name)}",
        f"pool: {yaml_quote(pool)}",
        "optimized: false",
        "optimized_header: false",
        "type: custom",
        "config:",
        "  volume:",
        f"    name: {yaml_quote(name)}",
        "    type: custom",
        "    content_type: block",
        '    description: "boshcpi config drive"',
        "    config:",
        f"      size: {size_mb}MiB",
    ]
    lines += [f"      {k}: {yaml_quote(v)}" for k, v in config.items()]
    return "\n".join(lines) + "\n"


def backup_tarball(name: str, pool: str, image: bytes, config: dict[str, str]) -> bytes:
    size_mb = max(1, -(-len(image) // (1 << 20)))
    padded = image + b"\x00" * (size_mb * (1 << 20) - len(image))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for member, data in (
            ("backup/index.yaml", _index_yaml(name, pool, size_mb, config).encode()),
            ("backup/volume.img", padded),
        ):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o600, 946684800
            tf.addfile(info, io.BytesIO(data))
    # Config drives are mostly zeros: gzip level 1 turns 33 MiB into a few KiB in ~50 ms.
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def import_block(
    client: LXDClient, pool: str, name: str, image: bytes, config: dict[str, str], target: str = ""
) -> None:
    """Import a block volume; on a cluster `target` is the member it goes to (the instance's own:
    LXD and Incus look a disk device's volume up on the instance's member only)."""
    body = backup_tarball(name, pool, image, config)
    headers = {"Content-Type": "application/octet-stream", f"{client.header_prefix}name": name}
    path = f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom"
    status, _, payload = client.raw("POST", path, body, headers, params={"target": target})
    client.answer(status, payload, wait=True)


def import_iso(client: LXDClient, pool: str, name: str, image: bytes, description: str, target: str = "") -> None:
    """Upload an ISO image as an `iso` custom volume (lxc/incus `storage volume import --type=iso`),
    then describe it (the only thing an iso volume lets change, with its config as it is)."""
    headers = {
        "Content-Type": "application/octet-stream",
        f"{client.header_prefix}name": name,
        f"{client.header_prefix}type": "iso",
    }
    path = f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom"
    status, _, payload = client.raw("POST", path, image, headers, params={"target": target})
    client.answer(status, payload, wait=True)
    vol = client.get(f"{path}/{quote(name, '')}")
    client.request("PUT", f"{path}/{quote(name, '')}", {"config": vol.get("config") or {}, "description": description})


def export_block(client: LXDClient, pool: str, name: str) -> bytes:
    """Read a custom block volume's bytes back (through a temporary backup, removed afterwards)."""
    backup = "read-" + os.urandom(4).hex()
    base = f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom/{quote(name, '')}/backups"
    client.request("POST", base, {"name": backup, "compression_algorithm": "gzip"})
    try:
        status, _, payload = client.raw("GET", f"{base}/{backup}/export")
        if status >= 400:
            client.answer(status, payload, True)
    finally:
        client.delete(f"{base}/{backup}")
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tf:
        for member in tf:
            if member.name.endswith("volume.img"):
                fh = tf.extractfile(member)
                assert fh is not None
                return fh.read()
    raise LXDError(500, f"backup of {name} holds no volume.img")
