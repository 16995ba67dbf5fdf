"""Stemcells on libvirt: a volume per stemcell in the pool, holding its root image as it came (raw
or qcow2); VMs' root disks are qcow2 overlays backed by it, so one in use is never deleted."""

from __future__ import annotations

from boshcpi import ids, log
from boshcpi.drivers.libvirt import naming, xmltree
from boshcpi.drivers.libvirt.host import MiB
from boshcpi.protocol import CloudError, CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import StemcellSpec
    from boshcpi.drivers.libvirt.host import LibvirtHost


def create(host: LibvirtHost, spec: StemcellSpec) -> str:
    """A stemcell: its root image uploaded into a new volume (raw or qcow2, as it came)."""
    from boshcpi import stemcell

    stemcell.check_image_path(spec.image_path)
    stemcell.architecture(spec.cloud_properties.get("architecture"))
    cid = ids.new_stemcell_cid()
    vol = None
    with stemcell.DiskImage(spec.image_path) as disk:
        if disk.format == "raw" and disk.size > host.cfg.max_stemcell_image:
            raise CpiError(
                f"create_stemcell: root.img is {disk.size >> 20} MiB, above the limit of "
                f"{host.cfg.max_stemcell_image >> 20} MiB (server.max_stemcell_image)"
            )
        free = host.free_bytes()
        if free and disk.size > free:
            raise CpiError(
                f"create_stemcell: root.img is {disk.size >> 20} MiB; pool {host.lc.storage_pool_name} has "
                f"{free >> 20} MiB free"
            )
        try:
            vol = host.new_volume(cid, disk.virtual_size, disk.format)
            log.info(f"uploading {disk.format} stemcell image ({disk.size // MiB} MiB) to {cid}")
            host.upload(vol, stemcell.prefetched(disk.chunks()), disk.size)
        except BaseException as e:
            if vol is not None:
                host.delete_volume(cid)
            if isinstance(e, host.lv.libvirtError):
                raise host.err(e, "create_stemcell") from None
            raise
    return cid


def delete(host: LibvirtHost, stemcell_cid: str) -> None:
    name = naming.stemcell_volume(stemcell_cid)
    vol = host.volume(name)
    if vol is None:
        log.info(f"stemcell {stemcell_cid} is already gone")
        return
    path = vol.path()
    users = [d.name() for d in host.all_domains() if path in backing_paths(host, d)]
    if users:
        raise CloudError(f"delete_stemcell: stemcell {stemcell_cid} is still used by {', '.join(sorted(users))}")
    host.delete_volume(name)
    if name.startswith(naming.GO_STEMCELL_PREFIX):
        host.delete_volume(name + ".json")  # the Go CPI's copy of the stemcell's properties


def backing_paths(host: LibvirtHost, dom: Any) -> set[str]:
    """The images a domain's root overlays are backed by."""
    out = set()
    for d in host.disks(dom):
        if not d["volume"].endswith(naming.ROOT_SUFFIX):
            continue
        vol = host.volume_by_path(d["path"])
        if vol is None:
            continue
        bs = xmltree.fromstring(vol.XMLDesc(0)).find("backingStore/path")
        if bs is not None and bs.text:
            out.add(bs.text)
    return out
