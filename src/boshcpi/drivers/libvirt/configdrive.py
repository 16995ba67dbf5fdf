"""A libvirt VM's agent settings: its config drive, read back by downloading the volume and rewritten
as a new volume.

`agent_config.type: CDROM` (the default) makes the drive an ISO9660 CD-ROM on a virtio-scsi
controller: its media changes under a running guest, so the agent's next settings read (it mounts
`/dev/disk/by-label/config-2` each time, cloudfoundry/bosh-agent platform/disk/diskutil.go) sees a
rewrite at once. That matters to `bosh create-env`, which attaches a disk and asks the agent to mount
it without sending the disk hint itself (bosh-cli deployment/vm/vm.go AttachDisk). A FAT32 drive is a
read-only virtio disk, whose source cannot change under a running guest: its rewrites reach the agent
at the next boot (the director sends hints itself with add_persistent_disk, so deploys still work).

Go-CPI domains carry `cdisk-<uuid>`: a FAT32 filesystem inside an MBR partition (its ConfigDrive
type) or an ISO holding one settings file (its CDROM type). They are read as they are, and rewritten
in the same layout.
"""

from __future__ import annotations

from boshcpi import fastjson, log
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.drivers.libvirt import naming
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.libvirt.host import LibvirtHost


def find(host: LibvirtHost, dom: Any) -> dict[str, str] | None:
    """The config drive's disk entry: boshcpi's `vol-c-...` or the Go CPI's `cdisk-<uuid>`."""
    for d in host.disks(dom):
        name = d["volume"]
        if name.startswith(naming.CONFIG_PREFIX) or name.startswith(naming.GO_CONFIG_PREFIX):
            return d
    return None


def read(host: LibvirtHost, dom: Any) -> tuple[dict[str, Any], str]:
    """(settings, the path of the settings file on the drive)."""
    d = find(host, dom)
    if d is None:
        raise CloudError(f"VM {dom.name()} has no config drive")
    vol = host.volume_by_path(d["path"])
    if vol is None:
        raise CloudError(f"VM {dom.name()}: its config drive {d['volume']} is missing")
    image = host.download(vol)
    ac = host.cfg.agent_config
    for path in (ac.userdata_path, "ec2/latest/user-data", "openstack/latest/user_data", "env"):
        try:
            return fastjson.loads(_configdisk().read_file(image, path)), path
        except FileNotFoundError:
            continue
        except ValueError:
            raise CloudError(f"VM {dom.name()}: {path} on its config drive is not valid JSON") from None
    raise CloudError(f"VM {dom.name()}: no agent settings found on its config drive {d['volume']}")


def build_image(host: LibvirtHost, settings: dict[str, Any], userdata_path: str | None = None) -> bytes:
    ac = host.cfg.agent_config
    return _configdisk().build(
        settings,
        kind=ac.type,
        label=ac.label,
        userdata_path=userdata_path or ac.userdata_path,
        metadata_path=ac.metadata_path,
        filename=ac.filename,
        public_key=ac.public_key,
    )


def new_volume(host: LibvirtHost, vm_cid: str, image: bytes, name: str = "") -> Any:
    """A new config volume holding `image`, named `name` or else afresh (naming.config_volume)."""
    name = name or naming.config_volume(vm_cid)
    vol = host.new_volume(name, len(image), "raw")
    try:
        host.upload(vol, [image], len(image))
    except BaseException:
        host.delete_volume(name)
        raise
    return vol


def device_xml(path: str, is_cdrom: bool) -> str:
    if is_cdrom:
        return dom_xml.cdrom_xml(path)
    return dom_xml.disk_xml(path, dom_xml.CONFIG_DEV, "raw", readonly=True, serial=naming.CONFIG_SERIAL)


def write(host: LibvirtHost, dom: Any, settings: dict[str, Any]) -> None:
    """Give a domain new settings: a new config volume swapped in for the old one."""
    old = find(host, dom)
    path = None
    if old is not None and old["volume"].startswith(naming.GO_CONFIG_PREFIX):
        _, path = read(host, dom)  # keep the Go layout's file path (user-data or env)
    image = build_image(host, settings, path if path not in (None, "env") else None)
    if path == "env":
        from boshcpi.agent import iso9660

        image = iso9660.build({"env": _configdisk().settings_bytes(settings)}, label=host.cfg.agent_config.label)
    vol = new_volume(host, dom.name(), image)
    is_cdrom = old["device"] == "cdrom" if old else host.cfg.agent_config.type == "CDROM"
    lv = host.lv
    live = dom.isActive()
    try:
        if old is None:
            dom.attachDeviceFlags(device_xml(vol.path(), is_cdrom), lv.VIR_DOMAIN_AFFECT_CONFIG)
        elif is_cdrom:
            # A CD-ROM's media changes under a running guest: the agent reads the new drive at once.
            # Forced: a guest that keeps the drive open has locked its tray (the agent only mounts it
            # for a moment, but a busy guest must not make attach_disk fail).
            xml = dom_xml.cdrom_xml(vol.path(), dev=old["dev"], bus=old["bus"] or "scsi")
            flags = lv.VIR_DOMAIN_AFFECT_CONFIG
            if live:
                flags |= lv.VIR_DOMAIN_AFFECT_LIVE | lv.VIR_DOMAIN_DEVICE_MODIFY_FORCE
            dom.updateDeviceFlags(xml, flags)
        else:
            # A virtio disk's source cannot change live: the new drive takes effect at the next boot.
            xml = dom_xml.disk_xml(vol.path(), old["dev"], "raw", readonly=True, serial=old["serial"])
            dom.updateDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_CONFIG)
    except lv.libvirtError as e:
        host.delete_volume(vol.name())
        raise host.err(e, "update config drive") from None
    if old is None:
        return
    if is_cdrom or not live:
        old_vol = host.volume_by_path(old["path"])
        if old_vol is not None:
            try:
                old_vol.delete(0)
                return
            except lv.libvirtError as e:
                log.warn(f"cannot delete the old config drive {old['volume']}: {e.get_error_message()}")
    # The running guest holds it until its next boot: recorded, so reboot_vm and delete_vm remove it.
    _set_stale(host, dom, [*stale(host, dom), old["volume"]])


STALE_KEY = "stale_volumes"


def stale(host: LibvirtHost, dom: Any) -> list[str]:
    """Config drives replaced while the guest ran, by name, from the domain's own metadata."""
    return [v for v in ((host.metadata(dom) or {}).get(STALE_KEY) or "").split() if v]


def _set_stale(host: LibvirtHost, dom: Any, names: list[str]) -> None:
    host.set_metadata(dom, {STALE_KEY: " ".join(sorted(set(names)))})


def drop_stale(host: LibvirtHost, dom: Any) -> None:
    """Delete the recorded stale drives once the guest is off (called between stop and start)."""
    names = stale(host, dom)
    if not names:
        return
    vm_cid = dom.name()
    for name in names:
        if naming.owned_by(name, vm_cid) and name.startswith((naming.CONFIG_PREFIX, naming.GO_CONFIG_PREFIX)):
            host.delete_volume(name)
    host.set_metadata(dom, {STALE_KEY: ""}, remove=True)


def _configdisk() -> Any:
    """The config drive writers and readers, imported only by the calls that read or write a drive
    (has_vm and the other lookups do not pay for them)."""
    from boshcpi.agent import configdisk

    return configdisk
