"""Persistent disks on LXD/Incus: custom volumes named by their cid, attach/detach with settings
rewrites, native resize, and volume snapshots whose cids name their disk (`<disk cid>@snap-<hex>`).

Disk cids, device names, serials and hints: see naming.py. Disks of earlier layouts (`vol-p-<uuid>`:
boshcpi 0.1 and the Go CPI, attached as `p<19 hex>` or `persistent-N`) keep working: every settings
rewrite gives each attached disk the hint the guest really resolves. Where a disk is, and its moves
between cluster members and pools: diskplaces.py.
"""

from __future__ import annotations

from boshcpi import log
from boshcpi.agent import settings as agent_settings
from boshcpi.drivers.lxd import diskplaces, guestmounts, naming, settingsio
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.errors import mapped
from boshcpi.drivers.lxd.host import META, now, volume_path, volumes_path
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError, CpiError, DiskNotFound, NotImplementedByCpi, NotSupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec
    from boshcpi.drivers.lxd.host import LXDHost

MAX_METADATA_VALUE = 1024


def create(host: LXDHost, spec: DiskSpec) -> str:
    props = spec.cloud_properties
    pool = props.get("pool") or host.pool
    content = props.get("type")
    if not isinstance(pool, str) or not pool or "/" in pool:
        raise CpiError(f"create_disk: cloud_properties.pool must be a storage pool name, got {pool!r}")
    if content is not None and content not in ("filesystem", "block"):
        raise CpiError(f"create_disk: cloud_properties.type must be filesystem or block, got {content!r}")
    target = ""
    with mapped("create_disk"):
        diskplaces.check_space(host, pool, spec.size_mb, "create_disk: size")
        if spec.vm_cid:
            inst = host.find_instance(spec.vm_cid)
            if inst is not None and host.is_owned(inst):
                if content is None:
                    content = "block" if inst.get("type") == "virtual-machine" else "filesystem"
                target = inst.get("location") or ""
                if target == "none":
                    target = ""
            else:
                log.warn(f"create_disk: locality hint {spec.vm_cid} does not exist; ignoring it")
        content = content or "filesystem"
        cid = naming.new_disk_cid(host.server_type)
        body = {
            "name": naming.disk_volume(cid),
            "type": "custom",
            "content_type": content,
            "config": {"size": f"{spec.size_mb}MiB", META + "kind": "persistent", META + "created": now()},
            "description": "boshcpi persistent disk",
        }
        host.client.request("POST", volumes_path(pool), body, params={"target": target})
    log.info(f"created {content} disk {cid} of {spec.size_mb} MiB in pool {pool}")
    return cid


def exists(host: LXDHost, disk_cid: str) -> bool:
    with mapped("has_disk"):
        return diskplaces.find(host, disk_cid) is not None


def delete(host: LXDHost, disk_cid: str) -> None:
    with mapped(f"delete_disk {disk_cid}"):
        found = diskplaces.find(host, disk_cid)
        if found is None:
            log.info(f"disk {disk_cid} is already gone")
            return
        pool, vol = found
        users = diskplaces.users(vol)
        if users:
            raise CloudError(f"delete_disk: disk {disk_cid} is attached to {', '.join(users)}; detach it first")
        host.client.delete(volume_path(pool, naming.disk_volume(disk_cid)))


def _attached_device(inst: dict[str, Any], disk_cid: str) -> str | None:
    for name, dev in (inst.get("devices") or {}).items():
        if dev.get("type") == "disk" and dev.get("source") == naming.disk_volume(disk_cid):
            return name
    return None


def _iso_sources(host: LXDHost, inst: dict[str, Any]) -> set[str]:
    device = settingsio.config_device(inst)
    if device is None:
        return set()
    dev = inst["devices"][device]
    vol = host.find_volume(dev.get("source", ""), dev.get("pool") or host.pool) or {}
    return {dev.get("source", "")} if vol.get("content_type") == "iso" else set()


def refresh_hints(host: LXDHost, inst: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Settings whose persistent hints say what the guest resolves now: every attached disk's by-id
    link, or for device names too long for a stable serial (boshcpi 0.1's `p<19 hex>`) the sd path the
    guest gives it in device order."""
    if inst.get("type") != "virtual-machine":
        return settings
    devices = inst.get("devices") or {}
    persistent = agent_settings.persistent(settings)
    iso: set[str] | None = None
    out = dict(persistent)
    for cid in persistent:
        device = _attached_device(inst, cid)
        if device is None:
            continue
        if naming.by_id_path(device, host.server_type) is None and iso is None:
            iso = _iso_sources(host, inst)
        out[cid] = naming.vm_hint(device, host.server_type, devices, iso or set())
    new = dict(settings)
    new["disks"] = {**(settings.get("disks") or {}), "persistent": out}
    return new


def attach(host: LXDHost, vm_cid: str, disk_cid: str) -> Any:
    """Attach under the VM's lock: the device list and the agent's settings are one read-modify-write
    (two concurrent attaches must both end up in the settings)."""
    with host.lock(vm_cid, "attach_disk"):
        return _attach(host, vm_cid, disk_cid)


def _attach(host: LXDHost, vm_cid: str, disk_cid: str) -> Any:
    inst, etag = host.owned_instance(vm_cid, "attach_disk")
    with mapped("attach_disk"):
        pool, vol = diskplaces.require(host, disk_cid, "attach_disk")
    is_vm = inst.get("type") == "virtual-machine"
    existing = _attached_device(inst, disk_cid)
    settings = None
    if existing:
        with mapped("attach_disk"):
            settings = settingsio.read(host, vm_cid, inst)
        hint = agent_settings.persistent(settings).get(disk_cid)
        if hint:
            log.info(f"disk {disk_cid} is already attached to {vm_cid}")
            return hint
    others = [u for u in diskplaces.users(vol) if u != vm_cid]
    if others:
        raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
    with mapped("attach_disk"):
        vol = diskplaces.follow(host, pool, vol, disk_cid, inst)
    if is_vm and vol.get("content_type") != "block":
        raise CloudError(f"attach_disk: disk {disk_cid} is a filesystem volume; VMs need block disks")
    if not is_vm and vol.get("content_type") == "block":
        raise CloudError(f"attach_disk: disk {disk_cid} is a block volume; containers need filesystem disks")
    device = existing or naming.persistent_device(disk_cid, host.server_type)
    devices = dict(inst.get("devices") or {})
    if device in devices and device != existing:
        raise CloudError(f"attach_disk: {vm_cid} already has a device {device} for another disk")
    dev: dict[str, str] = {"type": "disk", "pool": pool, "source": naming.disk_volume(disk_cid)}
    if not is_vm:
        dev["path"] = f"{agent_settings.CONTAINER_DISK_ROOT}/{disk_cid}"
    devices[device] = dev
    inst["devices"] = devices
    # The daemon adds the device while the settings are read: a container's first file access
    # starts LXD's file server in it, tens of milliseconds that need not wait for the hotplug.
    op = host.put_instance(vm_cid, inst, etag, "attach_disk", wait=False)
    try:
        if settings is None:
            with mapped("attach_disk"):
                settings = settingsio.read(host, vm_cid, inst)
        if not is_vm:
            # At its next boot the container mounts this disk on /var/vcap/store before its agent
            # starts (rewritten here for containers made before boshcpi wrote it at create_vm).
            with mapped("attach_disk: write the boot hook"):
                settingsio.write_boot_hook(host, vm_cid)
    except BaseException:
        host.finish(op, vm_cid, "attach_disk")
        _undo_attach(host, vm_cid, device)
        raise
    host.finish(op, vm_cid, "attach_disk")
    if is_vm:
        new_settings = refresh_hints(host, inst, agent_settings.attach_persistent(settings, disk_cid, {}))
        hint: Any = new_settings["disks"]["persistent"][disk_cid]
    else:
        hint = dev["path"]
        new_settings = agent_settings.attach_persistent(settings, disk_cid, hint)
    fail_point("attach-settings")
    try:
        settingsio.write(host, vm_cid, new_settings, kind=inst.get("type", ""))
    except BaseException:
        # Keep the VM and its settings consistent: undo the attach.
        _undo_attach(host, vm_cid, device)
        raise
    # (Which VM uses a disk is the volume's `used_by`: no mark of our own to keep in step.)
    log.info(f"attached {disk_cid} to {vm_cid} as {device}: {hint}")
    return hint


def _undo_attach(host: LXDHost, vm_cid: str, device: str) -> None:
    inst, etag = host.instance(vm_cid, "attach_disk")
    (inst.get("devices") or {}).pop(device, None)
    host.put_instance(vm_cid, inst, etag, "attach_disk")


def detach(host: LXDHost, vm_cid: str, disk_cid: str) -> None:
    with host.lock(vm_cid, "detach_disk"):
        _detach(host, vm_cid, disk_cid)


def _detach(host: LXDHost, vm_cid: str, disk_cid: str) -> None:
    inst, etag = host.owned_instance(vm_cid, "detach_disk")
    with mapped("detach_disk"):
        found = diskplaces.find(host, disk_cid)
    device = _attached_device(inst, disk_cid)
    # A container keeps the agent's bind of the disk on /var/vcap/store after `unmount_disk`: taken
    # down first, or refused while in use (guestmounts.py).
    guestmounts.release(host, vm_cid, inst, disk_cid, "detach_disk")
    op = None
    if device:
        # As in attach: the daemon removes the device while the settings are read.
        inst["devices"].pop(device)
        op = host.put_instance(vm_cid, inst, etag, "detach_disk", wait=False)
    else:
        log.info(f"disk {disk_cid} is not attached to {vm_cid}")
    try:
        with mapped("detach_disk"):
            settings = settingsio.read(host, vm_cid, inst)
    finally:
        host.finish(op, vm_cid, "detach_disk")
    if disk_cid in agent_settings.persistent(settings) or device:
        new = agent_settings.detach_persistent(settings, disk_cid)
        if device:
            new = refresh_hints(host, inst, new)  # `inst` is what the PUT above made the instance
        settingsio.write(host, vm_cid, new, kind=inst.get("type", ""))
    if found is None:
        # The director's missing-disk handling (cloudfoundry/bosh problem_handlers/missing_disk.rb)
        # expects DiskNotFound; the VM no longer refers to the disk either way.
        raise DiskNotFound(f"detach_disk: disk {disk_cid} not found (removed from {vm_cid})")


def attached(host: LXDHost, vm_cid: str) -> list[str]:
    inst, _ = host.owned_instance(vm_cid, "get_disks")
    return attached_to(inst)


def attached_to(inst: dict[str, Any]) -> list[str]:
    return sorted(
        str(dev["source"])
        for dev in (inst.get("devices") or {}).values()
        if dev.get("type") == "disk" and naming.is_disk_cid(str(dev.get("source", "")))
    )


def resize(host: LXDHost, disk_cid: str, new_size_mb: int) -> None:
    with mapped("resize_disk"):
        pool, vol = diskplaces.require(host, disk_cid, "resize_disk")
        sizes: list[int] = []

        def grows(current_vol: dict[str, Any]) -> bool:
            # Judged on the volume as read right before the write: a resize that raced this one
            # may have grown it past new_size already.
            current = diskplaces.size_mb((current_vol.get("config") or {}).get("size", "0"))
            sizes.append(current)
            if new_size_mb < current:
                _check_shrink(host, pool, disk_cid, current_vol, current, new_size_mb)
            return new_size_mb != current

        if diskplaces.size_mb((vol.get("config") or {}).get("size", "0")) < new_size_mb:
            diskplaces.check_space(host, pool, new_size_mb, "resize_disk: new_size")
        with host.lock(disk_cid, "resize_disk"):
            pool, vol = diskplaces.require(host, disk_cid, "resize_disk")  # where it is now: a move may have ended
            try:
                changed = diskplaces.mark(host, pool, disk_cid, vol, {"size": f"{new_size_mb}MiB"}, grows)
            except LXDError as e:
                if not sizes or new_size_mb >= sizes[-1]:
                    raise
                # Data written since the check (see _check_shrink): the daemon refused, and on btrfs
                # it may have left the smaller limit in place. The data is still readable.
                log.warn(f"resize_disk: the daemon refused to shrink {disk_cid}; its quota may now be lower")
                raise NotSupported(
                    f"resize_disk: cannot shrink {disk_cid} from {sizes[-1]} MiB to {new_size_mb} MiB: its data "
                    f"would not fit ({e.message})"
                ) from None
        if not changed:
            log.info(f"disk {disk_cid} is already {new_size_mb} MiB")
            return
    log.info(f"resized {disk_cid} from {sizes[-1]} to {new_size_mb} MiB")


SHRINK_ROOM_MIB = 8  # at least this much room (or 5%) left after a shrink


def _check_shrink(host: LXDHost, pool: str, disk_cid: str, vol: dict[str, Any], current: int, new_size_mb: int) -> None:
    """A container's disk (a filesystem volume: its size is a quota) shrinks in place when its data
    fits. Anything else answers NotSupported, and the director makes a new disk and has the agent copy
    (cloudfoundry/bosh disk_manager.rb rescues NotImplemented and NotSupported): a copy that a
    container's agent cannot finish (README, "Containers: reboots, lxcfs, disk changes, nested containers").

    The daemon must never be asked for a quota the data exceeds: on btrfs LXD 5.0 and Incus 6.0 set
    the smaller limit, then fail on their next step and leave it, and from then on every write to the
    disk fails with EDQUOT, a new size included (seen here). So the data must fit with room to spare
    (btrfs counts recent writes at its next commit), and a disk with snapshots does not shrink (btrfs
    reports as used only what the snapshots do not share, far less than the quota counts)."""
    what = f"resize_disk: cannot shrink {disk_cid} from {current} MiB to {new_size_mb} MiB"
    if vol.get("content_type") != "filesystem":
        raise NotSupported(what + " (a block volume never shrinks)")
    path = volume_path(pool, naming.disk_volume(disk_cid))
    try:
        snapshots = host.client.get(path + "/snapshots") or []
        state = host.client.get(path + "/state") or {}
    except LXDError as e:
        raise NotSupported(f"{what}: the daemon cannot tell how much of it is used ({e.message})") from None
    if snapshots:
        raise NotSupported(f"{what}: it has {len(snapshots)} snapshot(s), so how much of it is used is unknown")
    usage = state.get("usage")
    if not isinstance(usage, dict):
        raise NotSupported(f"{what}: the daemon does not report how much of it is used")
    used = int(usage.get("used") or 0)  # the daemon leaves out a zero (omitempty)
    room = max(SHRINK_ROOM_MIB, new_size_mb // 20)
    if (used >> 20) + room > new_size_mb:
        raise NotSupported(f"{what}: {used >> 20} MiB of data (and {room} MiB to spare) would not fit")


def update(host: LXDHost, disk_cid: str, new_size_mb: int, props: dict[str, Any]) -> str:
    """The director's native disk update (cloudfoundry/bosh `disk_manager.rb` update_disk_cpi and
    update_detached_disks, with `enable_cpi_update_disk`): the disk is detached. A new pool is a copy
    the daemon makes into that pool, the same cid, snapshots and all; then the size changes in place.
    A change of type (filesystem/block) answers NotImplemented, and the director copies."""
    with mapped("update_disk"):
        pool, vol = diskplaces.require(host, disk_cid, "update_disk")
    wanted_pool = props.get("pool") or pool
    if not isinstance(wanted_pool, str) or "/" in wanted_pool:
        raise CpiError(f"update_disk: cloud_properties.pool must be a storage pool name, got {wanted_pool!r}")
    wanted_type = props.get("type") or vol.get("content_type")
    if wanted_type not in ("filesystem", "block"):
        raise CpiError(f"update_disk: cloud_properties.type must be filesystem or block, got {wanted_type!r}")
    if wanted_type != vol.get("content_type"):
        raise NotImplementedByCpi(
            f"update_disk: {disk_cid} is a {vol.get('content_type')} volume and cannot become a {wanted_type} one "
            "in place; the director copies"
        )
    if wanted_pool != pool:
        if new_size_mb < diskplaces.size_mb((vol.get("config") or {}).get("size", "0")):
            resize(host, disk_cid, new_size_mb)  # in place first: if the data does not fit, nothing moved
        with mapped("update_disk"):
            diskplaces.move_to_pool(host, disk_cid, vol, wanted_pool, new_size_mb)
    resize(host, disk_cid, new_size_mb)
    return disk_cid


def snapshot(host: LXDHost, disk_cid: str, metadata: dict[str, Any]) -> str:
    with mapped("snapshot_disk"):
        pool, _ = diskplaces.require(host, disk_cid, "snapshot_disk")
        cid = naming.new_snapshot_cid(disk_cid)
        _, name = cid.split("@", 1)
        desc = " ".join(f"{k}={v}" for k, v in sorted(metadata.items()))
        body: dict[str, Any] = {"name": name}
        fail_point("snapshot")
        base = volume_path(pool, naming.disk_volume(disk_cid))
        host.client.request("POST", f"{base}/snapshots", body)
        if desc:
            try:
                host.client.request("PUT", f"{base}/snapshots/{quote(name, '')}", {"description": desc[:1000]})
            except LXDError as e:
                log.warn(f"snapshot {cid}: cannot record metadata: {e.message}")
    log.info(f"snapshot {cid} taken")
    return cid


def delete_snapshot(host: LXDHost, snapshot_cid: str) -> None:
    parts = naming.split_snapshot_cid(snapshot_cid)
    if parts is None:
        log.info(f"snapshot {snapshot_cid!r} is not a snapshot cid of this CPI: nothing to delete")
        return
    disk_cid, name = parts
    with mapped("delete_snapshot"):
        found = diskplaces.find(host, disk_cid)
        if found is None:
            log.info(f"snapshot {snapshot_cid}: its disk is gone")
            return
        path = f"{volume_path(found[0], naming.disk_volume(disk_cid))}/snapshots/{quote(name, '')}"
        if not host.client.delete(path):
            log.info(f"snapshot {snapshot_cid} is already gone")


def set_metadata(host: LXDHost, disk_cid: str, metadata: dict[str, Any]) -> None:
    with mapped("set_disk_metadata"):
        pool, vol = diskplaces.require(host, disk_cid, "set_disk_metadata")
        changes: dict[str, str | None] = {
            naming.metadata_config_key(k): str(v)[:MAX_METADATA_VALUE] for k, v in metadata.items()
        }
        parts = [str(metadata.get(k, "")) for k in ("deployment", "instance_group", "instance_index")]
        description = ("boshcpi persistent disk of " + "/".join(p for p in parts if p))[:255] if any(parts) else None
        with host.lock(disk_cid, "set_disk_metadata"):
            pool, vol = diskplaces.require(
                host, disk_cid, "set_disk_metadata"
            )  # where it is now: a move may have ended
            diskplaces.mark(host, pool, disk_cid, vol, changes, description=description)
