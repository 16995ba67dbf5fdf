"""Persistent disks on LXD/Incus: custom volumes named by their cid, attach/detach with settings
rewrites, native resize, and volume snapshots whose cids name their disk (`<disk cid>@snap-<hex>`).

Disk cids, device names, serials and hints: see naming.py. Disks of earlier layouts (`vol-p-<uuid>`:
boshcpi 0.1 and the Go CPI, attached as `p<19 hex>` or `persistent-N`) keep working: every settings
rewrite gives each attached disk the hint the guest really resolves.
"""

from __future__ import annotations

from boshcpi import log
from boshcpi.agent import settings as agent_settings
from boshcpi.drivers.lxd import guestmounts, naming, settingsio
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.errors import mapped
from boshcpi.drivers.lxd.host import META, instance_path, now, volume_path, volumes_path
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError, CpiError, DiskNotFound, NotImplementedByCpi, NotSupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.cloud import DiskSpec
    from boshcpi.drivers.lxd.host import LXDHost

MAX_METADATA_VALUE = 1024


def _owned(cid: str, vol: dict[str, Any]) -> bool:
    """A volume this driver may touch as a persistent disk: boshcpi's carry their mark; `vol-p-<uuid>`
    volumes are the Go CPI's (or boshcpi 0.1's) layout and carry none."""
    if vol.get("type") not in (None, "custom") or vol.get("content_type") not in ("block", "filesystem"):
        return False
    if naming.is_legacy_disk_cid(cid):
        return True
    return (vol.get("config") or {}).get(META + "kind") == "persistent"


def find(host: LXDHost, disk_cid: str) -> tuple[str, dict[str, Any]] | None:
    """(pool, volume) of a persistent disk, looking in the configured pool first."""
    if not naming.is_disk_cid(disk_cid):
        return None
    try:
        vol = host.find_volume(naming.disk_volume(disk_cid))
    except LXDError as e:
        if "more than one" not in e.message.lower():
            raise
        # Two volumes of this name on two members: a move between members (see _follow).
        vol = settle_move(host, host.pool, disk_cid)
    else:
        if vol is not None and (vol.get("config") or {}).get(MOVING_FROM):
            vol = settle_move(host, host.pool, disk_cid)
    if vol is not None:
        return _settled(host, host.pool, disk_cid, vol)
    for url in host.client.get("/1.0/storage-pools", project=False) or []:
        pool = url.rsplit("/", 1)[-1]
        if pool == host.pool:
            continue
        vol = host.find_volume(naming.disk_volume(disk_cid), pool)
        if vol is not None:
            return _settled(host, pool, disk_cid, vol)
    return None


def _settled(host: LXDHost, pool: str, disk_cid: str, vol: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    if not _owned(disk_cid, vol):
        return None
    if _move_ends(pool, vol):
        return settle_pool_move(host, pool, disk_cid, vol)
    return pool, vol


def _require(host: LXDHost, disk_cid: str, action: str) -> tuple[str, dict[str, Any]]:
    found = find(host, disk_cid)
    if found is None:
        raise DiskNotFound(f"{action}: disk {disk_cid} not found")
    return found


def check_space(host: LXDHost, pool: str, size_mb: int, what: str) -> None:
    """A disk bigger than its whole pool can never be written: the caller's mistake, said before any
    volume exists. (Thin pools may promise more than is free; that stays the daemon's call.)"""
    path = f"/1.0/storage-pools/{quote(pool, '')}"
    try:
        res = host.client.get(path + "/resources", project=False) or {}
    except LXDError as e:
        # A missing pool's resources are an HTTP 500 "Storage pool not found" (LXD 5.0): ask the pool.
        if e.not_found or not _pool_exists(host, path):
            raise CpiError(f"{what}: storage pool {pool!r} does not exist") from None
        log.debug(f"cannot read pool resources: {e.message}")
        return
    total = ((res.get("space") or {}).get("total") or 0) >> 20
    if total and size_mb > total:
        raise CpiError(f"{what}: {size_mb} MiB does not fit in storage pool {pool} ({total} MiB in all)")


def _pool_exists(host: LXDHost, path: str) -> bool:
    try:
        host.client.get(path, project=False)
    except LXDError as e:
        if e.not_found:
            return False
        raise
    return True


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
        check_space(host, pool, spec.size_mb, "create_disk: size")
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
        return find(host, disk_cid) is not None


def _users(vol: dict[str, Any]) -> list[str]:
    """Instance names using a volume (profiles excluded)."""
    out = []
    for url in vol.get("used_by") or []:
        if url.startswith("/1.0/instances/"):
            out.append(url[len("/1.0/instances/") :].split("?")[0])
    return out


def delete(host: LXDHost, disk_cid: str) -> None:
    with mapped(f"delete_disk {disk_cid}"):
        found = find(host, disk_cid)
        if found is None:
            log.info(f"disk {disk_cid} is already gone")
            return
        pool, vol = found
        users = _users(vol)
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
        pool, vol = _require(host, disk_cid, "attach_disk")
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
    others = [u for u in _users(vol) if u != vm_cid]
    if others:
        raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
    with mapped("attach_disk"):
        vol = _follow(host, pool, vol, disk_cid, inst)
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


def _mark(
    host: LXDHost,
    pool: str,
    disk_cid: str,
    vol: dict[str, Any],
    changes: dict[str, str | None],
    check: Callable[[dict[str, Any]], bool] | None = None,
    description: str | None = None,
) -> bool:
    """Change a disk volume's config: read it with its ETag, apply `changes`, write it back only if it
    is still what was read (If-Match), and start over on HTTP 412. Concurrent resize_disk and
    set_disk_metadata calls then never write an old `size` (or old marks) back. `check(current)` sees
    the volume as read each time: it may raise, or answer False when there is nothing to change."""
    path = volume_path(pool, naming.disk_volume(disk_cid))
    params = {"target": _where(vol)}
    for attempt in range(1, 9):
        status, headers, payload = host.client.raw("GET", path, params=params)
        current = host.client.answer(status, payload, True) or {}
        if check is not None and not check(current):
            return False
        config = dict(current.get("config") or {})
        for k, v in changes.items():
            if v is None:
                config.pop(k, None)
            else:
                config[k] = v
        etag = headers.get("etag", "")
        body = {"config": config, "description": current.get("description", "") if description is None else description}
        try:
            host.client.request("PUT", path, body, params=params, headers={"If-Match": etag} if etag else None)
            return True
        except LXDError as e:
            if e.status != 412 or attempt == 8:
                raise
            log.debug(f"{disk_cid} changed under this call (HTTP 412): reading it again")
    return False


def _where(obj: dict[str, Any]) -> str:
    loc = obj.get("location") or ""
    return "" if loc == "none" else loc


MOVING_FROM = META + "moving-from"  # on a copy being made on another member: the member it comes from
MOVE_COPIED = META + "move-copied"  # set once the copy is complete


def _follow(host: LXDHost, pool: str, vol: dict[str, Any], disk_cid: str, inst: dict[str, Any]) -> dict[str, Any]:
    """On a cluster with a member-local pool, move the disk to the VM's member first.

    A move is a copy then a delete, and a call killed between the two must not leave two disks of one
    name: the copy carries `moving-from` (and `move-copied` once it is whole) until the source is gone,
    and `settle_move` finishes or undoes an interrupted move the next time anything looks for the disk."""
    src, dst = _where(vol), _where(inst)
    if not src or not dst or src == dst:
        return vol
    if not host.client.has_extension("cluster_internal_custom_volume_copy"):
        raise CloudError(
            f"attach_disk: disk {disk_cid} is on cluster member {src} and the VM on {dst}; pool {pool} is local to "
            f"each member and this server cannot move custom volumes between members. Place the VM on {src} "
            f"(cloud property target), or use a remote pool (ceph)"
        )
    # Under the disk's lock: a concurrent call that finds the copy leaves a running move alone
    # (settle_move), and finishes or undoes only a killed one.
    with host.lock(disk_cid, "attach_disk: move the disk"):
        current = settle_move(host, pool, disk_cid, locked=True)
        if current is None:
            raise DiskNotFound(f"attach_disk: disk {disk_cid} not found")
        if _where(current) == dst:
            return current
        return _copy_then_delete(host, pool, current, disk_cid, _where(current), dst)


def _copy_then_delete(
    host: LXDHost, pool: str, vol: dict[str, Any], disk_cid: str, src: str, dst: str
) -> dict[str, Any]:
    name = naming.disk_volume(disk_cid)
    log.info(f"moving disk {disk_cid} from {src} to {dst}")
    config = {k: v for k, v in (vol.get("config") or {}).items() if k not in (MOVING_FROM, MOVE_COPIED)}
    body = {
        "name": name,
        "type": "custom",
        "content_type": vol.get("content_type", "block"),
        # The copy keeps the disk's marks (Incus drops them otherwise), and says it is a move in progress.
        "config": {**config, MOVING_FROM: src},
        "description": vol.get("description", ""),
        "source": {"type": "copy", "name": name, "pool": pool, "location": src},
    }
    path = volume_path(pool, name)
    host.client.request("POST", volumes_path(pool), body, params={"target": dst})
    fail_point("move-copy")
    host.client.request(
        "PUT", path, {"config": {**config, MOVING_FROM: src, MOVE_COPIED: "true"}}, params={"target": dst}
    )
    fail_point("move-copied")
    host.client.request("DELETE", path, params={"target": src})
    fail_point("move-deleted")
    host.client.request(
        "PUT", path, {"config": config, "description": vol.get("description", "")}, params={"target": dst}
    )
    return host.client.get(path, params={"target": dst})


def settle_move(host: LXDHost, pool: str, disk_cid: str, locked: bool = False) -> dict[str, Any] | None:
    """The volume that is the disk now, with a move between members (see `_follow`) settled where
    it was killed: with the copy whole, the source goes and the copy is the disk; with the copy
    unfinished, the copy goes and the source stays the disk. Only under the disk's lock: a move
    still running holds it, and is left alone (its source is the disk until it ends). `locked`: the
    caller holds the lock already."""
    name = naming.disk_volume(disk_cid)

    def volumes() -> list[dict[str, Any]]:
        return [
            v
            for v in host.client.get(volumes_path(pool), params={"recursion": 1}) or []
            if v.get("name") == name and v.get("type") == "custom"
        ]

    def the_disk(vols: list[dict[str, Any]]) -> dict[str, Any] | None:
        moving = [v for v in vols if (v.get("config") or {}).get(MOVING_FROM)]
        if not moving:
            return vols[0] if vols else None
        src = (moving[0].get("config") or {}).get(MOVING_FROM)
        source = [v for v in vols if v is not moving[0] and _where(v) == src]
        return source[0] if source else moving[0]

    copies = volumes()
    if not any((v.get("config") or {}).get(MOVING_FROM) for v in copies):
        return copies[0] if len(copies) == 1 else the_disk(copies)
    if not locked:
        try:
            lock = host.lock(disk_cid, "settle a disk's move between members", timeout=0)
            lock.__enter__()
        except CloudError:
            return the_disk(copies)  # a move in progress
        try:
            return settle_move(host, pool, disk_cid, locked=True)
        finally:
            lock.__exit__(None, None, None)
    moving = [v for v in copies if (v.get("config") or {}).get(MOVING_FROM)]
    copy = moving[0]
    cfg = dict(copy.get("config") or {})
    src, dst = cfg.get(MOVING_FROM, ""), _where(copy)
    source_left = any(_where(v) == src for v in copies if v is not copy)
    path = volume_path(pool, name)
    if cfg.get(MOVE_COPIED) == "true":
        if source_left:
            log.warn(f"disk {disk_cid}: finishing an interrupted move from {src} to {dst} (the copy is whole)")
            host.client.request("DELETE", path, params={"target": src})
        clean = {k: v for k, v in cfg.items() if k not in (MOVING_FROM, MOVE_COPIED)}
        host.client.request(
            "PUT", path, {"config": clean, "description": copy.get("description", "")}, params={"target": dst}
        )
    elif source_left:
        log.warn(f"disk {disk_cid}: undoing an interrupted move from {src} to {dst} (the copy was not finished)")
        host.client.request("DELETE", path, params={"target": dst})
    left = volumes()
    return left[0] if len(left) == 1 else the_disk(left)


def detach(host: LXDHost, vm_cid: str, disk_cid: str) -> None:
    with host.lock(vm_cid, "detach_disk"):
        _detach(host, vm_cid, disk_cid)


def _detach(host: LXDHost, vm_cid: str, disk_cid: str) -> None:
    inst, etag = host.owned_instance(vm_cid, "detach_disk")
    with mapped("detach_disk"):
        found = find(host, disk_cid)
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


def _size_mb(text: str) -> int:
    units = {
        "": 1 / (1 << 20),
        "B": 1 / (1 << 20),
        "KiB": 1 / 1024,
        "MiB": 1,
        "GiB": 1024,
        "TiB": 1 << 20,
        "KB": 1000 / (1 << 20),
        "MB": 1e6 / (1 << 20),
        "GB": 1e9 / (1 << 20),
        "TB": 1e12 / (1 << 20),
    }
    text = str(text).strip()
    num = text.rstrip("KMGTiB")
    unit = text[len(num) :]
    try:
        return int(float(num) * units.get(unit, 1))
    except ValueError:
        return 0


def resize(host: LXDHost, disk_cid: str, new_size_mb: int) -> None:
    with mapped("resize_disk"):
        pool, vol = _require(host, disk_cid, "resize_disk")
        sizes: list[int] = []

        def grows(current_vol: dict[str, Any]) -> bool:
            # Judged on the volume as read right before the write: a resize that raced this one
            # may have grown it past new_size already.
            current = _size_mb((current_vol.get("config") or {}).get("size", "0"))
            sizes.append(current)
            if new_size_mb < current:
                _check_shrink(host, pool, disk_cid, current_vol, current, new_size_mb)
            return new_size_mb != current

        if _size_mb((vol.get("config") or {}).get("size", "0")) < new_size_mb:
            check_space(host, pool, new_size_mb, "resize_disk: new_size")
        with host.lock(disk_cid, "resize_disk"):
            pool, vol = _require(host, disk_cid, "resize_disk")  # where it is now: a move may have ended
            try:
                changed = _mark(host, pool, disk_cid, vol, {"size": f"{new_size_mb}MiB"}, grows)
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
        pool, vol = _require(host, disk_cid, "update_disk")
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
        if new_size_mb < _size_mb((vol.get("config") or {}).get("size", "0")):
            resize(host, disk_cid, new_size_mb)  # in place first: if the data does not fit, nothing moved
        with mapped("update_disk"):
            _move_to_pool(host, disk_cid, vol, wanted_pool, new_size_mb)
    resize(host, disk_cid, new_size_mb)
    return disk_cid


MOVING_TO_POOL = META + "moving-to-pool"  # on a disk being copied into another pool: that pool
MOVING_FROM_POOL = META + "moving-from-pool"  # on that copy until the source is gone: the pool it left
MOVE_MARKS = (MOVING_FROM, MOVE_COPIED, MOVING_TO_POOL, MOVING_FROM_POOL)
MOVE_MIB_PER_S = 10  # the slowest copy a pool move's lock allows for before another call may take it


def _move_to_pool(host: LXDHost, disk_cid: str, vol: dict[str, Any], dst: str, new_size_mb: int) -> None:
    """Move a detached disk to pool `dst`: mark the source with where it goes, copy it (the copy marked
    with where it comes from, then whole), delete the source, clear the marks. A call killed anywhere
    leaves marks that `settle_pool_move` finishes or undoes the next time anything looks for the disk:
    one disk, never two, never none."""
    users = _users(vol)
    if users:
        raise CloudError(f"update_disk: disk {disk_cid} is attached to {', '.join(users)}; detach it first")
    current = _size_mb((vol.get("config") or {}).get("size", "0"))
    check_space(host, dst, max(current, new_size_mb), "update_disk: size")
    ttl = 120 + max(current, new_size_mb) / MOVE_MIB_PER_S
    with host.lock(disk_cid, "update_disk", ttl=ttl):
        found = find(host, disk_cid)  # under the lock: what it is now
        if found is None:
            raise DiskNotFound(f"update_disk: disk {disk_cid} not found")
        src, vol = found
        ends = _move_ends(src, vol)
        if ends:  # a killed move's marks, which find left to the lock's holder (this call): settle them
            src, vol = _resolve_pool_move(host, disk_cid, *ends)
        if src == dst:
            return
        name = naming.disk_volume(disk_cid)
        config = {k: v for k, v in (vol.get("config") or {}).items() if k not in MOVE_MARKS}
        desc = vol.get("description", "")
        target = {"target": _where(vol)}
        log.info(f"moving disk {disk_cid} from pool {src} to pool {dst}")
        _mark(host, src, disk_cid, vol, {MOVING_TO_POOL: dst})
        source: dict[str, Any] = {"type": "copy", "name": name, "pool": src}
        if _where(vol):
            source["location"] = _where(vol)
        body = {
            "name": name,
            "type": "custom",
            "content_type": vol.get("content_type", "block"),
            "config": {**config, MOVING_FROM_POOL: src},
            "description": desc,
            "source": source,
        }
        try:
            fail_point("pool-move-marked")
            host.client.request("POST", volumes_path(dst), body, params=target)
            fail_point("pool-move-copy")
        except BaseException:
            try:
                _resolve_pool_move(host, disk_cid, src, dst)
            except Exception as e:  # the next call that finds the disk settles it
                log.warn(f"update_disk: cannot undo the unfinished copy of {disk_cid} yet: {e}")
            raise
        path = volume_path(dst, name)
        marked = {**config, MOVING_FROM_POOL: src, MOVE_COPIED: "true"}
        host.client.request("PUT", path, {"config": marked, "description": desc}, params=target)
        fail_point("pool-move-copied")
        host.client.request("DELETE", volume_path(src, name), params=target)
        fail_point("pool-move-deleted")
        host.client.request("PUT", path, {"config": config, "description": desc}, params=target)
    log.info(f"moved disk {disk_cid} to pool {dst}")


def settle_pool_move(host: LXDHost, pool: str, disk_cid: str, vol: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(pool, volume) of a disk found with a pool move's marks on it. A move still running (its call
    holds the disk's lock) is left alone: the source is the disk until the copy is whole. A killed
    one is finished (the copy was whole) or undone (it was not), as `_move_to_pool` says."""
    src, dst = _move_ends(pool, vol) or (pool, pool)
    try:
        lock = host.lock(disk_cid, "settle a disk's move to another pool", timeout=0)
        lock.__enter__()
    except CloudError:
        name = naming.disk_volume(disk_cid)
        source = vol if pool == src else host.find_volume(name, src)
        return (src, source) if source is not None else (pool, vol)
    try:
        return _resolve_pool_move(host, disk_cid, src, dst)
    finally:
        lock.__exit__(None, None, None)


def _move_ends(pool: str, vol: dict[str, Any]) -> tuple[str, str] | None:
    """(from, to) of the pool move whose marks a disk volume in `pool` carries; None without marks."""
    cfg = vol.get("config") or {}
    if cfg.get(MOVING_TO_POOL):
        return pool, str(cfg[MOVING_TO_POOL])
    if cfg.get(MOVING_FROM_POOL):
        return str(cfg[MOVING_FROM_POOL]), pool
    return None


def _resolve_pool_move(host: LXDHost, disk_cid: str, src: str, dst: str) -> tuple[str, dict[str, Any]]:
    name = naming.disk_volume(disk_cid)
    source, copy = host.find_volume(name, src), host.find_volume(name, dst)
    copy_cfg = (copy or {}).get("config") or {}
    ours = copy is not None and copy_cfg.get(MOVING_FROM_POOL) == src
    if ours and (copy_cfg.get(MOVE_COPIED) == "true" or source is None):
        assert copy is not None
        if source is not None:
            log.warn(f"disk {disk_cid}: finishing an interrupted move from pool {src} to {dst} (the copy is whole)")
            host.client.request("DELETE", volume_path(src, name), params={"target": _where(source)})
        return dst, _without_marks(host, dst, name, copy)
    if source is None:
        if copy is not None and _owned(disk_cid, copy):  # the move ended while this call looked
            return dst, copy
        raise DiskNotFound(f"disk {disk_cid} not found")
    if ours:
        assert copy is not None
        log.warn(f"disk {disk_cid}: undoing an interrupted move from pool {src} to {dst} (the copy was not finished)")
        host.client.request("DELETE", volume_path(dst, name), params={"target": _where(copy)})
    return src, _without_marks(host, src, name, source)


def _without_marks(host: LXDHost, pool: str, name: str, vol: dict[str, Any]) -> dict[str, Any]:
    """Write a volume back without any move's marks; the volume as it is then."""
    clean = {k: v for k, v in (vol.get("config") or {}).items() if k not in MOVE_MARKS}
    path, params = volume_path(pool, name), {"target": _where(vol)}
    host.client.request("PUT", path, {"config": clean, "description": vol.get("description", "")}, params=params)
    return host.client.get(path, params=params)


def snapshot(host: LXDHost, disk_cid: str, metadata: dict[str, Any]) -> str:
    with mapped("snapshot_disk"):
        pool, _ = _require(host, disk_cid, "snapshot_disk")
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
        found = find(host, disk_cid)
        if found is None:
            log.info(f"snapshot {snapshot_cid}: its disk is gone")
            return
        path = f"{volume_path(found[0], naming.disk_volume(disk_cid))}/snapshots/{quote(name, '')}"
        if not host.client.delete(path):
            log.info(f"snapshot {snapshot_cid} is already gone")


def set_metadata(host: LXDHost, disk_cid: str, metadata: dict[str, Any]) -> None:
    with mapped("set_disk_metadata"):
        pool, vol = _require(host, disk_cid, "set_disk_metadata")
        changes: dict[str, str | None] = {
            naming.metadata_config_key(k): str(v)[:MAX_METADATA_VALUE] for k, v in metadata.items()
        }
        parts = [str(metadata.get(k, "")) for k in ("deployment", "instance_group", "instance_index")]
        description = ("boshcpi persistent disk of " + "/".join(p for p in parts if p))[:255] if any(parts) else None
        with host.lock(disk_cid, "set_disk_metadata"):
            pool, vol = _require(host, disk_cid, "set_disk_metadata")  # where it is now: a move may have ended
            _mark(host, pool, disk_cid, vol, changes, description=description)


__all__ = ["attach", "detach", "find", "instance_path"]
