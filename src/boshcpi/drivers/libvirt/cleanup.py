"""Orphans on a libvirt host: config drives no domain uses, boot and ephemeral volumes whose domain is
gone (boshcpi's `<vm>-root`, `vol-e-`, `vol-c-`; the Go CPI's `bdisk-`, `edisk-`, `cdisk-`), and domains
a killed create_vm left defined but never started. Persistent disks (`virt_p...`, `vol-p-...`,
`pdisk-...`), their snapshots and stemcells are never listed."""

from __future__ import annotations

import os
import time

from boshcpi import ids
from boshcpi.drivers.libvirt import naming, xmltree
from boshcpi.drivers.libvirt.host import LibvirtHost
from boshcpi.report import Orphan

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.config import Config


class Cleaner:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.host = LibvirtHost(cfg)

    def close(self) -> None:
        self.host.close()

    def _used_paths(self) -> set[str]:

        used = set()
        for dom in self.host.all_domains():
            for flags in (0, self.host.lv.VIR_DOMAIN_XML_INACTIVE):
                for src in xmltree.fromstring(dom.XMLDesc(flags)).iter("source"):
                    if src.get("file"):
                        used.add(src.get("file"))
        return used

    def find(self, older_than: float) -> list[Orphan]:
        host = self.host
        pool = host.pool
        pool.refresh(0)
        domains = {d.name(): d for d in host.all_domains()}
        used = self._used_paths()
        found: list[Orphan] = []
        for name, dom in domains.items():
            if not ids.is_vm_cid(name):
                continue
            meta = host.metadata(dom) or {}
            age = time.time() - float(meta.get("created") or 0) if meta.get("created") else None
            if (
                meta.get("created_by") == "boshcpi"
                and "creating" in meta
                and not dom.isActive()
                and (age is None or age >= older_than)
            ):
                found.append(Orphan("instance", name, age, "defined but never started (interrupted create_vm)"))
        for vol_name in pool.listVolumes():
            owner = naming.volume_owner(vol_name)
            if owner is None or naming.is_disk_cid(vol_name):
                continue
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
            if vol_name.endswith(naming.ROOT_SUFFIX) or vol_name.startswith(naming.GO_BOOT_PREFIX):
                kind = "boot-overlay"
            elif vol_name.startswith((naming.CONFIG_PREFIX, naming.GO_CONFIG_PREFIX)):
                kind = "config-volume"
            else:
                kind = "ephemeral-volume"
            if kind != "config-volume" and owner in domains:
                continue
            found.append(Orphan(kind, vol_name, age, f"no domain uses it (VM {owner})"))
        return found

    def remove(self, orphan: Orphan) -> None:
        try:
            if orphan.kind == "instance":
                from boshcpi.drivers.libvirt.cloud import LibvirtCloud

                cloud = LibvirtCloud(self.cfg)
                cloud.host = self.host
                cloud.delete_vm(orphan.name)
            else:
                self.host.delete_volume(orphan.name)
            orphan.removed = True
        except Exception as e:
            orphan.error = str(e)
