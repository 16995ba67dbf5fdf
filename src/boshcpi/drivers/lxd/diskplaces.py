"""Where a persistent disk is on LXD/Incus, and its moves. `find` looks in the configured pool, then
in every other; a disk met with an interrupted move's marks is settled there under its lock (finished
where the copy was whole, undone where it was not) and a running move is left alone. Moves: between
cluster members of a member-local pool (attach_disk follows the VM) and between pools (update_disk).
"""

from __future__ import annotations

from boshcpi import log
from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.host import META, volume_path, volumes_path
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError, CpiError, DiskNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.drivers.lxd.host import LXDHost


def owned(cid: str, vol: dict[str, Any]) -> bool:
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
        # Two volumes of this name on two members: a move between members (see follow).
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
    if not owned(disk_cid, vol):
        return None
    if _move_ends(pool, vol):
        return settle_pool_move(host, pool, disk_cid, vol)
    return pool, vol


def require(host: LXDHost, disk_cid: str, action: str) -> tuple[str, dict[str, Any]]:
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


def users(vol: dict[str, Any]) -> list[str]:
    """Instance names using a volume (profiles excluded)."""
    out = []
    for url in vol.get("used_by") or []:
        if url.startswith("/1.0/instances/"):
            out.append(url[len("/1.0/instances/") :].split("?")[0])
    return out


def mark(
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
    params = {"target": where(vol)}
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


def where(obj: dict[str, Any]) -> str:
    loc = obj.get("location") or ""
    return "" if loc == "none" else loc


MOVING_FROM = META + "moving-from"  # on a copy being made on another member: the member it comes from
MOVE_COPIED = META + "move-copied"  # set once the copy is complete


def follow(host: LXDHost, pool: str, vol: dict[str, Any], disk_cid: str, inst: dict[str, Any]) -> dict[str, Any]:
    """On a cluster with a member-local pool, move the disk to the VM's member first.

    A move is a copy then a delete, and a call killed between the two must not leave two disks of one
    name: the copy carries `moving-from` (and `move-copied` once it is whole) until the source is gone,
    and `settle_move` finishes or undoes an interrupted move the next time anything looks for the disk."""
    src, dst = where(vol), where(inst)
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
        if where(current) == dst:
            return current
        return _copy_then_delete(host, pool, current, disk_cid, where(current), dst)


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
    """The volume that is the disk now, with a move between members (see `follow`) settled where
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
        source = [v for v in vols if v is not moving[0] and where(v) == src]
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
    src, dst = cfg.get(MOVING_FROM, ""), where(copy)
    source_left = any(where(v) == src for v in copies if v is not copy)
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


def size_mb(text: str) -> int:
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


MOVING_TO_POOL = META + "moving-to-pool"  # on a disk being copied into another pool: that pool
MOVING_FROM_POOL = META + "moving-from-pool"  # on that copy until the source is gone: the pool it left
MOVE_MARKS = (MOVING_FROM, MOVE_COPIED, MOVING_TO_POOL, MOVING_FROM_POOL)
MOVE_MIB_PER_S = 10  # the slowest copy a pool move's lock allows for before another call may take it


def move_to_pool(host: LXDHost, disk_cid: str, vol: dict[str, Any], dst: str, new_size_mb: int) -> None:
    """Move a detached disk to pool `dst`: mark the source with where it goes, copy it (the copy marked
    with where it comes from, then whole), delete the source, clear the marks. A call killed anywhere
    leaves marks that `settle_pool_move` finishes or undoes the next time anything looks for the disk:
    one disk, never two, never none."""
    using = users(vol)
    if using:
        raise CloudError(f"update_disk: disk {disk_cid} is attached to {', '.join(using)}; detach it first")
    current = size_mb((vol.get("config") or {}).get("size", "0"))
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
        target = {"target": where(vol)}
        log.info(f"moving disk {disk_cid} from pool {src} to pool {dst}")
        mark(host, src, disk_cid, vol, {MOVING_TO_POOL: dst})
        source: dict[str, Any] = {"type": "copy", "name": name, "pool": src}
        if where(vol):
            source["location"] = where(vol)
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
    one is finished (the copy was whole) or undone (it was not), as `move_to_pool` says."""
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
            host.client.request("DELETE", volume_path(src, name), params={"target": where(source)})
        return dst, _without_marks(host, dst, name, copy)
    if source is None:
        if copy is not None and owned(disk_cid, copy):  # the move ended while this call looked
            return dst, copy
        raise DiskNotFound(f"disk {disk_cid} not found")
    if ours:
        assert copy is not None
        log.warn(f"disk {disk_cid}: undoing an interrupted move from pool {src} to {dst} (the copy was not finished)")
        host.client.request("DELETE", volume_path(dst, name), params={"target": where(copy)})
    return src, _without_marks(host, src, name, source)


def _without_marks(host: LXDHost, pool: str, name: str, vol: dict[str, Any]) -> dict[str, Any]:
    """Write a volume back without any move's marks; the volume as it is then."""
    clean = {k: v for k, v in (vol.get("config") or {}).items() if k not in MOVE_MARKS}
    path, params = volume_path(pool, name), {"target": where(vol)}
    host.client.request("PUT", path, {"config": clean, "description": vol.get("description", "")}, params=params)
    return host.client.get(path, params=params)
