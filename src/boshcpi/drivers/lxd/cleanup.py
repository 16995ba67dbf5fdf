"""Orphans on an LXD/Incus host: what boshcpi (or the Go CPI it replaces) made and nothing alive uses.

- `instance`: a `vm-<uuid>` boshcpi made that never started (create_vm killed midway);
- `config-volume`: a config drive no instance uses (a running VM kept the old one until it rebooted):
  boshcpi's `vol-c-<vm uuid>-<hex>` (and its readable copy `-b`), the Go CPI's `vol-c-<uuid>` iso;
- `ephemeral-volume`: boshcpi's `vol-e-<vm uuid>` whose VM is gone; the Go CPI's unused `vol-e-<uuid>`;
- `image`: a stemcell image (boshcpi's or the Go CPI's) with no alias left and no instance from it.

Persistent disks (`lxd_p...`, `incus_p...`, `vol-p-...`) and their snapshots are never listed.
"""

from __future__ import annotations

import time

from boshcpi import ids, lease
from boshcpi.drivers.lxd import locks, naming, settingsio
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.host import META, LXDHost, instance_path, volume_path, volumes_path
from boshcpi.report import Orphan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.config import Config


def _age_from_epoch(value: Any) -> float | None:
    try:
        return max(0.0, time.time() - float(value))
    except (TypeError, ValueError):
        return None


def _age_from_iso(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    from datetime import datetime

    head = text.replace("Z", "+00:00")
    for candidate in (head[:26] + "+00:00", head):
        try:
            return max(0.0, time.time() - datetime.fromisoformat(candidate).timestamp())
        except ValueError:
            continue
    return None


class Cleaner:
    """Finds and removes orphans in the configured project and pool."""

    def __init__(self, cfg: Config) -> None:
        self.host = LXDHost(cfg)

    def close(self) -> None:
        self.host.close()

    def find(self, older_than: float) -> list[Orphan]:
        client, pool = self.host.client, self.host.pool
        instances = client.get("/1.0/instances", params={"recursion": 1}) or []
        names = {i["name"] for i in instances}
        found: list[Orphan] = []

        def old_enough(age: float | None) -> bool:
            return age is None or age >= older_than

        now = client.daemon_time() or time.time()
        for inst in instances:
            cfg = inst.get("config") or {}
            if not ids.is_vm_cid(inst["name"]) or cfg.get(META + "created_by") != "boshcpi":
                continue
            mark = str(cfg.get(META + naming.CREATING_KEY) or "")
            age = _age_from_epoch(naming.mark_time(mark)) if mark else _age_from_iso(inst.get("created_at"))
            if naming.interrupted(inst, now, 3 * self.host.cfg.operation_timeout) and old_enough(age):
                reason = "an interrupted create_vm's instance (create_vm never answered)"
                found.append(Orphan("instance", inst["name"], age, reason, inst.get("location", "")))
        vols = client.get(volumes_path(pool), params={"recursion": 1}) or []
        by_name = {v["name"]: v for v in vols if "/" not in v["name"]}  # snapshots list as disk/snap

        def unused(vol: dict[str, Any]) -> bool:
            return not [u for u in vol.get("used_by") or [] if u.startswith("/1.0/instances/")]

        for name, vol in by_name.items():
            cfg = vol.get("config") or {}
            kind = cfg.get(META + "kind")
            age = _age_from_epoch(cfg.get(META + "created")) or _age_from_iso(vol.get("created_at"))
            if not unused(vol) or not old_enough(age):
                continue
            loc = vol.get("location", "")
            owner = naming.volume_owner(name)
            if (owner and name.startswith(naming.CONFIG_PREFIX) and kind == "config") or (
                owner and name.startswith(naming.CONFIG_PREFIX) and vol.get("content_type") == "iso"
            ):
                found.append(Orphan("config-volume", name, age, f"config drive no instance uses (VM {owner})", loc))
            elif name.endswith(settingsio.COPY_SUFFIX) and kind == "config-copy":
                drive = name[: -len(settingsio.COPY_SUFFIX)]
                if drive not in by_name:
                    found.append(
                        Orphan("config-volume", name, age, f"copy of config drive {drive}, which is gone", loc)
                    )
            elif owner and name.startswith(naming.EPHEMERAL_PREFIX) and kind == "ephemeral" and owner not in names:
                found.append(Orphan("ephemeral-volume", name, age, f"its VM {owner} is gone", loc))
            elif not kind and naming.is_go_volume(name, naming.CONFIG_PREFIX) and vol.get("content_type") == "iso":
                found.append(Orphan("config-volume", name, age, "the Go CPI's config drive; no instance uses it", loc))
            elif not kind and naming.is_go_volume(name, naming.EPHEMERAL_PREFIX) and vol.get("content_type") == "block":
                found.append(
                    Orphan("ephemeral-volume", name, age, "the Go CPI's ephemeral disk; no instance uses it", loc)
                )
        used_images = {(i.get("config") or {}).get("volatile.base_image") for i in instances}
        for img in client.get("/1.0/images", params={"recursion": 1}) or []:
            props = img.get("properties") or {}
            go = "root_device_name" in props and "root_disk_size" in props
            if (props.get("boshcpi") != "true" and not go) or img.get("aliases") or img["fingerprint"] in used_images:
                continue
            age = _age_from_iso(img.get("uploaded_at"))
            if old_enough(age):
                what = props.get("bosh.stemcell.name") or props.get("description") or "?"
                found.append(Orphan("image", img["fingerprint"], age, f"stemcell {what} deleted; no VM uses it"))
        found += self._locks()
        return found

    def _locks(self) -> list[Orphan]:
        """Stale lock gates (boshcpi.lease: a killed holder's), and claims a killed taker left or
        whose gate is gone. Their age is the daemon's clock against the time their record was written."""
        client = self.host.client
        profiles = client.get("/1.0/profiles", params={"recursion": 1}) or []
        now = client.daemon_time()
        records = {
            str(p.get("name", "")): (str(p.get("description", "")), now)
            for p in profiles
            if locks.is_lock(str(p.get("name", "")))
        }
        return [Orphan("lock", name, age, why) for name, why, age in lease.leftovers(records)]

    def remove(self, orphan: Orphan) -> None:
        host, client = self.host, self.host.client
        try:
            if orphan.kind == "instance":
                inst = host.find_instance(orphan.name)
                if inst is not None and ids.is_vm_cid(orphan.name):
                    volumes = [
                        (d.get("pool") or host.pool, d["source"])
                        for d in (inst.get("devices") or {}).values()
                        if d.get("type") == "disk" and naming.volume_owner(str(d.get("source", ""))) == orphan.name
                    ]
                    host.delete_instance(orphan.name)
                    for pool, vol in volumes:
                        host.delete_volume(vol, pool)
                        host.delete_volume(vol + settingsio.COPY_SUFFIX, pool)
            elif orphan.kind in ("config-volume", "ephemeral-volume"):
                client.delete(volume_path(host.pool, orphan.name))
                if orphan.kind == "config-volume" and not orphan.name.endswith(settingsio.COPY_SUFFIX):
                    host.delete_volume(orphan.name + settingsio.COPY_SUFFIX)
            elif orphan.kind == "image":
                client.delete(f"/1.0/images/{quote(orphan.name, '')}")
            elif orphan.kind == "lock":
                lease.remove_leftover(locks.ProfileStore(client), orphan.name)
            orphan.removed = True
        except LXDError as e:
            orphan.error = e.message


__all__ = ["Cleaner", "instance_path"]
