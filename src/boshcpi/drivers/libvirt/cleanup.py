"""Orphans on a libvirt host: config drives no domain uses, boot and ephemeral volumes whose domain is
gone (boshcpi's `<vm>-root`, `vol-e-`, `vol-c-`; the Go CPI's `bdisk-`, `edisk-`, `cdisk-`), and domains
a killed create_vm left defined but never started. Persistent disks (`virt_p...`, `vol-p-...`,
`pdisk-...`), their snapshots and stemcells are never listed.

A volume's age is the libvirt host's own: its timestamps in the volume's XML against the libvirt
host's clock (read from a probe volume made and deleted at once), never this machine's `os.stat` of a
path that on a remote libvirtd names nothing here (every volume would look old, an in-flight
create_vm's included). A volume whose age cannot be told is left alone. `remove` checks again, just
before deleting, that no domain uses the volume."""

from __future__ import annotations

import time

from boshcpi import ids, lease, log
from boshcpi.drivers.libvirt import locks, naming, xmltree
from boshcpi.drivers.libvirt.host import PROBE_PREFIX, LibvirtHost, mtime
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

    def _age(self, vol: object, now: float | None) -> float | None:
        then = mtime(vol)
        return None if then is None or now is None else max(0.0, now - then)

    def find(self, older_than: float) -> list[Orphan]:
        host = self.host
        pool = host.pool
        try:
            pool.refresh(0)  # files put in the pool's folder by hand, too
        except host.lv.libvirtError as e:
            log.debug(f"pool not refreshed ({e.get_error_message()}): another call is making a volume")
        domains = {d.name(): d for d in host.all_domains()}
        used = self._used_paths()
        now = host.clock()
        found: list[Orphan] = []
        for name, dom in domains.items():
            if not ids.is_vm_cid(name):
                continue
            meta = host.metadata(dom) or {}
            age = time.time() - float(meta.get("created") or 0) if meta.get("created") else None
            if meta.get("created_by") != "boshcpi" or "creating" not in meta or (age is not None and age < older_than):
                continue
            # An interrupted create_vm's domain: never started, or started by a process that is gone
            # (its `creating` mark names it), or older than any create_vm runs.
            if not dom.isActive():
                found.append(Orphan("instance", name, age, "defined but never started (interrupted create_vm)"))
            elif lease.holder_gone(meta["creating"]) or (age is not None and age > 3 * self.cfg.operation_timeout):
                found.append(Orphan("instance", name, age, "started by a create_vm that never answered (killed)"))
        for vol_name in pool.listVolumes():
            if vol_name.startswith(PROBE_PREFIX):
                age = self._age(pool.storageVolLookupByName(vol_name), now)
                if age is not None and age >= max(older_than, 600):
                    found.append(Orphan("clock-probe", vol_name, age, "a clock probe, left by a killed call"))
                continue
            if locks.is_lock(vol_name):  # an earlier release's lock: a 0-byte volume
                age = self._age(pool.storageVolLookupByName(vol_name), now)
                if age is not None and age > max(older_than, locks.TTL):
                    found.append(Orphan("lock", vol_name, age, "an expired lock volume (an earlier release's)"))
                continue
            owner = naming.volume_owner(vol_name)
            if owner is None or naming.is_disk_cid(vol_name):
                continue
            vol = pool.storageVolLookupByName(vol_name)
            if vol.path() in used:
                continue
            age = self._age(vol, now)
            if age is None or age < older_than:
                continue  # too young, or of an age nobody can tell: left alone
            kind = _kind(vol_name)
            if kind != "config-volume" and owner in domains:
                continue
            found.append(Orphan(kind, vol_name, age, f"no domain uses it (VM {owner})"))
        store = locks.SecretStore(self.host)
        records = {name: got for name in store.names() if (got := store.read(name)) is not None}
        found += [Orphan("lock", name, age, why) for name, why, age in lease.leftovers(records)]
        return found

    def remove(self, orphan: Orphan) -> None:
        try:
            if orphan.kind == "instance":
                from boshcpi.drivers.libvirt.cloud import LibvirtCloud

                cloud = LibvirtCloud(self.cfg)
                cloud.host = self.host
                cloud.delete_vm(orphan.name)
            elif orphan.kind == "lock":
                store = locks.SecretStore(self.host)
                if store.read(orphan.name) is not None:
                    lease.remove_leftover(store, orphan.name)
                else:  # an earlier release's lock volume
                    age = self.host.volume_age(orphan.name)
                    if age is not None and age > locks.TTL:  # still the expired one
                        self.host.delete_volume(orphan.name)
            else:
                # Found a moment ago; a create_vm or attach may have taken it up since.
                vol = self.host.volume(orphan.name)
                if vol is not None:
                    owner = naming.volume_owner(orphan.name)
                    if vol.path() in self._used_paths():
                        raise RuntimeError("a domain uses it now")
                    if orphan.kind in ("boot-overlay", "ephemeral-volume") and owner and self.host.domain(owner):
                        raise RuntimeError(f"its VM {owner} exists now")
                    self.host.delete_volume(orphan.name)
            orphan.removed = True
        except Exception as e:
            orphan.error = str(e)


def _kind(vol_name: str) -> str:
    if vol_name.endswith(naming.ROOT_SUFFIX) or vol_name.startswith(naming.GO_BOOT_PREFIX):
        return "boot-overlay"
    if vol_name.startswith((naming.CONFIG_PREFIX, naming.GO_CONFIG_PREFIX)):
        return "config-volume"
    return "ephemeral-volume"
