"""Orphans on a libvirt host: config drives no domain uses, ephemeral volumes and boot overlays
whose domain is gone, and domains a killed create_vm left defined but never started."""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from typing import Any

from boshcpi import naming
from boshcpi.cleanup import Orphan


def _used_paths(cloud: Any) -> set[str]:
    used = set()
    for dom in cloud.conn.listAllDomains(0):
        for flags in (0, cloud.lv.VIR_DOMAIN_XML_INACTIVE):
            for src in ET.fromstring(dom.XMLDesc(flags)).iter("source"):
                if src.get("file"):
                    used.add(src.get("file"))
    return used


def find_orphans(cloud: Any, older_than: float) -> list[Orphan]:
    conn, pool = cloud.conn, cloud.pool
    pool.refresh(0)
    domains = {d.name(): d for d in conn.listAllDomains(0)}
    used = _used_paths(cloud)
    found: list[Orphan] = []
    for name, dom in domains.items():
        if not naming.is_cid(name, naming.VM_PREFIX):
            continue
        try:
            meta = cloud.vm_metadata(name)
        except Exception:
            continue
        age = time.time() - float(meta.get("created") or 0) if meta.get("created") else None
        if (
            meta.get("created_by") == "boshcpi"
            and "creating" in meta
            and not dom.isActive()
            and (age is None or age >= older_than)
        ):
            found.append(Orphan("instance", name, age, "defined but never started (interrupted create_vm)"))
    for vol_name in pool.listVolumes():
        vol = pool.storageVolLookupByName(vol_name)
        path = vol.path()
        if path in used:
            continue
        try:
            age = time.time() - os.stat(path).st_mtime
        except OSError:
            age = None
        if age is not None and age < older_than:
            continue
        owner = naming.owner_of_volume(vol_name)
        if vol_name.endswith("-root") and naming.is_cid(vol_name[: -len("-root")], naming.VM_PREFIX):
            owner = vol_name[: -len("-root")]
            kind = "boot-overlay"
        elif vol_name.startswith(naming.CONFIG_PREFIX) and owner:
            kind = "config-volume"
        elif vol_name.startswith(naming.EPHEMERAL_PREFIX) and owner:
            kind = "ephemeral-volume"
        else:
            continue
        if kind != "config-volume" and owner in domains:
            continue
        found.append(Orphan(kind, vol_name, age, f"no domain uses it (VM {owner})"))
    return found


def remove_orphan(cloud: Any, orphan: Orphan) -> None:
    try:
        if orphan.kind == "instance":
            cloud.delete_vm(orphan.name)
        else:
            cloud._delete_volume(orphan.name)
        orphan.removed = True
    except Exception as e:
        orphan.error = str(e)
