"""`boshcpi cleanup --config PATH [--apply] [--older-than 1h] [--json]`: find and remove orphans.

An orphan carries boshcpi's marks (names of a fixed form and `user.bosh.*` keys) and belongs to
nothing alive:

- config volumes (`vol-c-*`) no instance uses: left when a running VM held its old config drive;
- ephemeral volumes (`vol-e-*`) whose VM is gone;
- instances (`vm-*`, made by boshcpi) that never started: left by a create_vm that was killed;
- images of deleted stemcells: boshcpi images with no alias left and no instance built from them.

Persistent disks, snapshots and anything without our marks are never touched. Without `--apply`
it only lists.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from boshcpi import naming


@dataclass
class Orphan:
    kind: str
    name: str
    age: float | None
    reason: str
    location: str = ""
    removed: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "age_seconds": None if self.age is None else int(self.age),
            "reason": self.reason,
            "location": self.location,
            "removed": self.removed,
            "error": self.error,
        }


def _age_from_epoch(value: Any) -> float | None:
    try:
        return max(0.0, time.time() - float(value))
    except (TypeError, ValueError):
        return None


def _age_from_iso(text: str | None) -> float | None:
    if not text or text.startswith("0001-"):
        return None
    from datetime import datetime

    try:
        return max(0.0, time.time() - datetime.fromisoformat(text.replace("Z", "+00:00")[:26] + "+00:00").timestamp())
    except ValueError:
        try:
            return max(0.0, time.time() - datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None


def find_lxd_orphans(cloud: Any, older_than: float) -> list[Orphan]:
    """Orphans in the configured project and pool of an LXD/Incus host."""
    client = cloud.client
    pool = cloud.pool
    instances = client.get("/1.0/instances", params={"recursion": 1}) or []
    names = {i["name"] for i in instances}
    found: list[Orphan] = []

    def old_enough(age: float | None) -> bool:
        return age is None or age >= older_than

    for inst in instances:
        cfg = inst.get("config") or {}
        if not naming.is_cid(inst["name"], naming.VM_PREFIX) or cfg.get("user.bosh.created_by") != "boshcpi":
            continue
        never_started = inst.get("status") == "Stopped" and "volatile.last_state.power" not in cfg
        age = _age_from_iso(inst.get("created_at"))
        if never_started and old_enough(age):
            found.append(
                Orphan(
                    "instance",
                    inst["name"],
                    age,
                    "created but never started (interrupted create_vm)",
                    inst.get("location", ""),
                )
            )
    for vol in client.get(f"/1.0/storage-pools/{pool}/volumes/custom", params={"recursion": 1}) or []:
        name, cfg = vol["name"], vol.get("config") or {}
        if "/" in name:  # a snapshot, listed as volume/snapshot: never ours to remove
            continue
        kind = cfg.get("user.bosh.kind")
        used = [u for u in vol.get("used_by") or [] if u.startswith("/1.0/instances/")]
        age = _age_from_epoch(cfg.get("user.bosh.created")) or _age_from_iso(vol.get("created_at"))
        owner = naming.owner_of_volume(name)
        if used or not old_enough(age) or owner is None:
            continue
        if name.startswith(naming.CONFIG_PREFIX) and kind == "config":
            found.append(
                Orphan(
                    "config-volume", name, age, f"config drive no instance uses (VM {owner})", vol.get("location", "")
                )
            )
        elif name.startswith(naming.EPHEMERAL_PREFIX) and kind == "ephemeral" and owner not in names:
            found.append(Orphan("ephemeral-volume", name, age, f"its VM {owner} is gone", vol.get("location", "")))
    used_images = {(i.get("config") or {}).get("volatile.base_image") for i in instances}
    for img in client.get("/1.0/images", params={"recursion": 1}) or []:
        props = img.get("properties") or {}
        if props.get("boshcpi") != "true" or img.get("aliases") or img["fingerprint"] in used_images:
            continue
        age = _age_from_iso(img.get("uploaded_at"))
        if old_enough(age):
            found.append(
                Orphan(
                    "image",
                    img["fingerprint"],
                    age,
                    f"stemcell {props.get('bosh.stemcell.name', '?')} deleted; no VM uses it",
                )
            )
    return found


def remove_lxd_orphan(cloud: Any, orphan: Orphan) -> None:
    from boshcpi.drivers.lxd.client import LXDError

    client = cloud.client
    try:
        if orphan.kind == "instance":
            cloud._delete_instance(orphan.name)
            for vol in cloud._volumes_of(orphan.name):
                cloud._delete_volume(vol)
        elif orphan.kind in ("config-volume", "ephemeral-volume"):
            client.delete(f"/1.0/storage-pools/{cloud.pool}/volumes/custom/{orphan.name}")
        elif orphan.kind == "image":
            client.delete(f"/1.0/images/{orphan.name}")
        orphan.removed = True
    except LXDError as e:
        orphan.error = e.message


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit}"
    return f"{age:.0f}s"


def table(orphans: list[Orphan], applied: bool) -> str:
    rows = [("KIND", "NAME", "AGE", "ACTION", "REASON")]
    for o in orphans:
        action = ("removed" if o.removed else f"FAILED: {o.error}") if applied else "would remove"
        rows.append((o.kind, o.name, _fmt_age(o.age), action, o.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse
    import json

    from boshcpi import config as cfgmod
    from boshcpi.protocol import BoshError

    p = argparse.ArgumentParser(
        prog="boshcpi cleanup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    p.add_argument("--apply", action="store_true", help="remove what is listed (default: list only)")
    p.add_argument("--older-than", default="15m", help="only objects at least this old (default 15m)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    try:
        cfg = cfgmod.load(args.config)
        older = cfgmod.parse_duration(args.older_than, "--older-than")
        if cfg.driver == "libvirt":
            from boshcpi.drivers.libvirt.cleanup import find_orphans, remove_orphan
            from boshcpi.drivers.libvirt.cloud import LibvirtCloud

            cloud: Any = LibvirtCloud(cfg)
        else:
            from boshcpi.drivers.lxd.cloud import LXDCloud

            cloud = LXDCloud(cfg)
            find_orphans, remove_orphan = find_lxd_orphans, remove_lxd_orphan
        orphans = find_orphans(cloud, older)
        if args.apply:
            for o in orphans:
                remove_orphan(cloud, o)
    except BoshError as e:
        sys.stderr.write(f"cleanup: {e.message}\n")
        return 2
    if args.json:
        sys.stdout.write(
            json.dumps({"applied": args.apply, "orphans": [o.as_dict() for o in orphans]}, indent=2) + "\n"
        )
    elif orphans:
        sys.stdout.write(table(orphans, args.apply) + "\n")
        if not args.apply:
            sys.stdout.write(f"{len(orphans)} orphan(s); run with --apply to remove them\n")
    else:
        sys.stdout.write("no orphans\n")
    return 1 if args.apply and any(not o.removed for o in orphans) else 0
