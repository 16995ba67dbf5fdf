"""Persistent disks on libvirt: raw volumes in the pool named by their cid, attached as virtio disks
with their cid's serial (the agent is told the /dev/disk/by-id link), detached with a wait for the
guest to let go, resized in place (live through the running domain), and snapshots that are volume
clones whose cids name their disk. The config drive is rewritten under the domain's lock."""

from __future__ import annotations

import os

from boshcpi import log
from boshcpi.agent import settings as agent_settings
from boshcpi.drivers.libvirt import configdrive, naming
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.drivers.libvirt.host import MiB
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError, CpiError, DiskNotFound, NotImplementedByCpi, NotSupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec
    from boshcpi.drivers.libvirt.host import LibvirtHost


def create(host: LibvirtHost, spec: DiskSpec) -> str:
    capacity = host.capacity_bytes()
    if capacity and spec.size_mb * MiB > capacity:
        raise CpiError(
            f"create_disk: size {spec.size_mb} MiB does not fit in pool {host.lc.storage_pool_name} "
            f"({capacity >> 20} MiB in all)"
        )
    cid = naming.new_disk_cid()
    host.new_volume(cid, spec.size_mb * MiB, "raw")
    log.info(f"created disk {cid} of {spec.size_mb} MiB")
    return cid


def _require(host: LibvirtHost, disk_cid: str, action: str) -> Any:
    vol = host.volume(disk_cid) if naming.is_disk_cid(disk_cid) else None
    if vol is None:
        raise DiskNotFound(f"{action}: disk {disk_cid} not found")
    return vol


def users(host: LibvirtHost, path: str, live: bool = False) -> list[str]:
    """The domains whose definition (or, with `live`, whose running guest) has the disk at `path`."""
    found = []
    for dom in host.all_domains():
        try:
            if live and not dom.isActive():
                continue
            disks = host.disks(dom, live=live)
        except host.lv.libvirtError as e:
            if e.get_error_code() == host.lv.VIR_ERR_NO_DOMAIN:
                continue  # deleted since the list was made
            raise host.err(e, "list the domains' disks") from None
        if any(x["path"] == path for x in disks):
            found.append(dom.name())
    return found


def exists(host: LibvirtHost, disk_cid: str) -> bool:
    return naming.is_disk_cid(disk_cid) and host.volume(disk_cid) is not None


def delete(host: LibvirtHost, disk_cid: str) -> None:
    vol = host.volume(disk_cid) if naming.is_disk_cid(disk_cid) else None
    if vol is None:
        log.info(f"disk {disk_cid} is already gone")
        return
    using = users(host, vol.path())
    if using:
        raise CloudError(f"delete_disk: disk {disk_cid} is attached to {', '.join(using)}; detach it first")
    host.delete_volume(disk_cid)


def persistent(host: LibvirtHost, dom: Any, live: bool = False) -> dict[str, dict[str, str]]:
    """disk_cid -> disk entry of the persistent disks in the domain's definition (or, with `live`,
    in the running domain)."""
    return {d["volume"]: d for d in host.disks(dom, live=live) if naming.is_disk_cid(d["volume"])}


def attach(host: LibvirtHost, vm_cid: str, disk_cid: str) -> Any:
    host.owned_domain(vm_cid, "attach_disk")  # VMNotFound before any lock
    with host.lock(vm_cid, "attach_disk"):
        return _attach(host, vm_cid, disk_cid)


def _attach(host: LibvirtHost, vm_cid: str, disk_cid: str) -> Any:
    dom = host.owned_domain(vm_cid, "attach_disk")
    vol = _require(host, disk_cid, "attach_disk")
    attached = persistent(host, dom)
    settings, _ = configdrive.read(host, dom)
    if disk_cid in attached:
        hint = agent_settings.persistent(settings).get(disk_cid)
        if hint:
            return hint
    others = [u for u in users(host, vol.path()) if u != vm_cid]
    if others:
        raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
    # Detached, but a running guest that never let go of it (a detach answers once its wait for the
    # guest runs out) still has it open, and QEMU would refuse it here ("Failed to get write lock").
    holding = [u for u in users(host, vol.path(), live=True) if u != vm_cid]
    if holding:
        raise CloudError(
            f"attach_disk: disk {disk_cid} is still open in {', '.join(holding)}: its guest has not let it go "
            "since it was detached; retry once it has (or once that VM reboots or is deleted)",
            ok_to_retry=True,
        )
    # Targets in use in the definition and in the running domain (a disk the guest has not let go of
    # yet still holds its target there).
    used = {d["dev"] for d in host.disks(dom)} | {d["dev"] for d in host.disks(dom, live=True)}
    dev = next((t for t in dom_xml.TARGETS if t not in used), None)
    if dev is None:
        raise CloudError(f"attach_disk: {vm_cid} has no free disk target")
    serial = naming.disk_serial(disk_cid)
    xml = dom_xml.disk_xml(vol.path(), dev, "raw", serial=serial)
    live = dom.isActive()
    if disk_cid not in attached:
        try:
            dom.attachDeviceFlags(
                xml, host.lv.VIR_DOMAIN_AFFECT_CONFIG | (host.lv.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            )
        except host.lv.libvirtError as e:
            raise host.err(e, "attach_disk") from None
    else:
        serial = attached[disk_cid]["serial"] or serial
    hint = {"path": naming.by_id_path(serial)}
    try:
        configdrive.write(host, dom, agent_settings.attach_persistent(settings, disk_cid, hint))
    except BaseException:
        detach_device(host, dom, xml, vol.path())
        raise
    log.info(f"attached {disk_cid} to {vm_cid} as {hint}")
    return hint


def detach_device(host: LibvirtHost, dom: Any, xml: str, path: str = "", wait: float = 20.0) -> None:
    """Remove a disk from the definition and from the running guest. A live unplug needs the guest's
    cooperation (ACPI hot-unplug) and completes after libvirt returns: wait for the disk to leave
    the running domain, so its image is free (QEMU holds a lock on it) when this call answers."""
    flags = host.lv.VIR_DOMAIN_AFFECT_CONFIG
    live = dom.isActive()
    if live:
        try:
            dom.detachDeviceFlags(xml, host.lv.VIR_DOMAIN_AFFECT_LIVE)
        except host.lv.libvirtError as e:
            log.warn(f"live detach: {e.get_error_message()}")
            live = False
    try:
        dom.detachDeviceFlags(xml, flags)
    except host.lv.libvirtError as e:
        if "no target device" not in (e.get_error_message() or "").lower():
            raise host.err(e, "detach disk") from None
    if live and path:
        import time

        deadline = time.monotonic() + wait
        while any(d["path"] == path for d in host.disks(dom, live=True)):
            if time.monotonic() > deadline:
                log.warn(f"the guest of {dom.name()} still holds {os.path.basename(path)}; it goes at next boot")
                return
            time.sleep(0.25)


def detach(host: LibvirtHost, vm_cid: str, disk_cid: str) -> None:
    host.owned_domain(vm_cid, "detach_disk")
    with host.lock(vm_cid, "detach_disk"):
        _detach(host, vm_cid, disk_cid)


def _detach(host: LibvirtHost, vm_cid: str, disk_cid: str) -> None:
    dom = host.owned_domain(vm_cid, "detach_disk")
    # The running guest's disks too: a detach killed after it took the disk out of the definition
    # leaves it in the running domain until the guest lets go, and its retry waits for that.
    attached = {**(persistent(host, dom, live=True) if dom.isActive() else {}), **persistent(host, dom)}
    settings, _ = configdrive.read(host, dom)
    if disk_cid in attached:
        d = attached[disk_cid]
        detach_device(host, dom, dom_xml.disk_xml(d["path"], d["dev"], "raw", serial=d["serial"]), d["path"])
    if disk_cid in agent_settings.persistent(settings):
        configdrive.write(host, dom, agent_settings.detach_persistent(settings, disk_cid))
    _require(host, disk_cid, "detach_disk")


def attached(host: LibvirtHost, vm_cid: str) -> list[str]:
    return sorted(persistent(host, host.owned_domain(vm_cid, "get_disks")))


def resize(host: LibvirtHost, disk_cid: str, new_size_mb: int) -> None:
    vol = _require(host, disk_cid, "resize_disk")
    current = vol.info()[1]
    new = new_size_mb * MiB
    if new < current:
        raise NotSupported(f"resize_disk: cannot shrink {disk_cid} from {current // MiB} MiB to {new_size_mb} MiB")
    if new == current:
        return
    try:
        for name in users(host, vol.path()):
            d = host.conn.lookupByName(name)
            if d.isActive():
                dev = persistent(host, d)[disk_cid]["dev"]
                d.blockResize(dev, new, host.lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                return
        vol.resize(new, 0)
    except host.lv.libvirtError as e:
        raise host.err(e, "resize_disk") from None


def update(host: LibvirtHost, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
    _require(host, disk_cid, "update_disk")
    if cloud_properties:
        raise NotImplementedByCpi("update_disk: changing disk cloud properties is done by the director")
    resize(host, disk_cid, new_size_mb)
    return disk_cid


def snapshot(host: LibvirtHost, disk_cid: str, metadata: dict[str, Any]) -> str:
    vol = _require(host, disk_cid, "snapshot_disk")
    cid = naming.new_snapshot_cid(disk_cid)
    xml = (
        f"<volume><name>{cid}</name><capacity unit='bytes'>{vol.info()[1]}</capacity>"
        "<target><format type='raw'/></target></volume>"
    )
    try:
        # A storage-volume clone: libvirt has no volume snapshots; on a dir pool this copies
        # (sparsely). The cid names its disk, so delete_snapshot needs no lookup table.
        fail_point("snapshot")
        host.pool.createXMLFrom(xml, vol, 0)
    except host.lv.libvirtError as e:
        raise host.err(e, "snapshot_disk") from None
    return cid


def delete_snapshot(host: LibvirtHost, snapshot_cid: str) -> None:
    if naming.split_snapshot_cid(snapshot_cid) is None:
        # The Go CPI's `snap-cid` never named a snapshot: nothing to delete.
        log.info(f"snapshot {snapshot_cid!r} names nothing this CPI made")
        return
    host.delete_volume(snapshot_cid)


def set_metadata(host: LibvirtHost, disk_cid: str, metadata: dict[str, Any]) -> None:
    vol = _require(host, disk_cid, "set_disk_metadata")
    tags = {f"disk.{disk_cid}.{k}": str(v)[:1024] for k, v in metadata.items()}
    # Volumes carry no metadata in libvirt: record it on the domain the disk is attached to, under
    # the domain's lock (its metadata is one read-modify-write with set_vm_metadata's).
    for name in users(host, vol.path()):
        with host.lock(name, "set_disk_metadata"):
            dom = host.domain(name)
            if dom is None or not host.is_owned(dom):
                continue
            try:
                host.set_metadata(dom, {}, tags=tags)
            except host.lv.libvirtError as e:
                if e.get_error_code() != host.lv.VIR_ERR_NO_DOMAIN:
                    raise host.err(e, "set_disk_metadata") from None
