"""Persistent disks on LXD/Incus: custom volumes, attach/detach with settings rewrites, native
resize, and volume snapshots whose cids name their disk (`<disk_cid>@snap-<hex>`)."""

from __future__ import annotations

from boshcpi import log, naming
from boshcpi.agent import settings as agent_settings
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.errors import mapped
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError, CpiError, DiskNotFound, NotImplementedByCpi

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec
    from boshcpi.drivers.lxd.cloud import LXDCloud

META = "user.bosh."
# VM disk slots: sda root, sdb ephemeral, then persistent disks in attach order (path hints are the
# agent's fallback; its by-id lookup of the device name comes first).
VM_PERSISTENT_PATHS = tuple(f"/dev/sd{c}" for c in "cdefghijklmnopqrstuvwxyz")


def _vol_path(pool: str, name: str) -> str:
    return f"/1.0/storage-pools/{quote(pool)}/volumes/custom/{quote(name)}"


def find(cloud: LXDCloud, disk_cid: str) -> tuple[str, dict[str, Any]] | None:
    """(pool, volume) of a persistent disk, looking in the configured pool first."""
    pools = [cloud.pool]
    try:
        vol = cloud.client.get(_vol_path(cloud.pool, disk_cid))
        return cloud.pool, vol
    except LXDError as e:
        if not e.not_found:
            raise
    for url in cloud.client.get("/1.0/storage-pools", project=False) or []:
        pool = url.rsplit("/", 1)[-1]
        if pool in pools:
            continue
        try:
            return pool, cloud.client.get(_vol_path(pool, disk_cid))
        except LXDError as e:
            if not e.not_found:
                raise
    return None


def _require(cloud: LXDCloud, disk_cid: str, action: str) -> tuple[str, dict[str, Any]]:
    found = find(cloud, disk_cid)
    if found is None:
        raise DiskNotFound(f"{action}: disk {disk_cid} not found")
    return found


def create(cloud: LXDCloud, spec: DiskSpec) -> str:
    props = spec.cloud_properties
    pool = str(props.get("pool") or cloud.pool)
    content = props.get("type")
    target = ""
    with mapped("create_disk"):
        if spec.vm_cid:
            try:
                inst = cloud.client.get(f"/1.0/instances/{quote(spec.vm_cid)}")
                if content is None:
                    content = "block" if inst.get("type") == "virtual-machine" else "filesystem"
                target = inst.get("location") or ""
                if target == "none":
                    target = ""
            except LXDError as e:
                if not e.not_found:
                    raise
                log.warn(f"create_disk: locality hint {spec.vm_cid} does not exist; ignoring it")
        content = content or "filesystem"
        if content not in ("filesystem", "block"):
            raise CpiError(f"create_disk: cloud_properties.type must be filesystem or block, got {content!r}")
        cid = naming.new_disk_cid()
        body = {
            "name": cid,
            "type": "custom",
            "content_type": content,
            "config": {"size": f"{spec.size_mb}MiB", META + "kind": "persistent"},
            "description": "boshcpi persistent disk",
        }
        cloud.client.request(
            "POST", f"/1.0/storage-pools/{quote(pool)}/volumes/custom", body, params={"target": target}
        )
    log.info(f"created {content} disk {cid} of {spec.size_mb} MiB in pool {pool}")
    return cid


def exists(cloud: LXDCloud, disk_cid: str) -> bool:
    with mapped("has_disk"):
        return find(cloud, disk_cid) is not None


def _users(vol: dict[str, Any]) -> list[str]:
    """Instance names using a volume (profiles excluded)."""
    out = []
    for url in vol.get("used_by") or []:
        if url.startswith("/1.0/instances/"):
            out.append(url[len("/1.0/instances/") :].split("?")[0])
    return out


def delete(cloud: LXDCloud, disk_cid: str) -> None:
    with mapped(f"delete_disk {disk_cid}"):
        found = find(cloud, disk_cid)
        if found is None:
            log.info(f"disk {disk_cid} is already gone")
            return
        pool, vol = found
        users = _users(vol)
        if users:
            raise CloudError(f"delete_disk: disk {disk_cid} is attached to {', '.join(users)}; detach it first")
        cloud.client.delete(_vol_path(pool, disk_cid))


def _attached_device(inst: dict[str, Any], disk_cid: str) -> str | None:
    for name, dev in (inst.get("devices") or {}).items():
        if dev.get("type") == "disk" and dev.get("source") == disk_cid:
            return name
    return None


def attach(cloud: LXDCloud, vm_cid: str, disk_cid: str) -> Any:
    inst, etag = cloud._instance(vm_cid, "attach_disk")
    with mapped("attach_disk"):
        pool, vol = _require(cloud, disk_cid, "attach_disk")
    is_vm = inst.get("type") == "virtual-machine"
    settings = read_settings(cloud, vm_cid, inst)
    existing = _attached_device(inst, disk_cid)
    if existing:
        hint = (settings.get("disks") or {}).get("persistent", {}).get(disk_cid)
        if hint:
            log.info(f"disk {disk_cid} is already attached to {vm_cid}")
            return hint
    others = [u for u in _users(vol) if u != vm_cid]
    if others:
        raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
    vol = _follow(cloud, pool, vol, disk_cid, inst)
    if is_vm and vol.get("content_type") != "block":
        raise CloudError(f"attach_disk: disk {disk_cid} is a filesystem volume; VMs need block disks")
    if not is_vm and vol.get("content_type") == "block":
        raise CloudError(f"attach_disk: disk {disk_cid} is a block volume; containers need filesystem disks")
    device = naming.persistent_device(disk_cid)
    dev: dict[str, str] = {"type": "disk", "pool": pool, "source": disk_cid}
    if is_vm:
        used = {
            str((h or {}).get("path", "")) if isinstance(h, dict) else str(h)
            for h in (settings.get("disks") or {}).get("persistent", {}).values()
        }
        path = next((p for p in VM_PERSISTENT_PATHS if p not in used), "")
        hint: Any = {"id": device, "path": path}
    else:
        path = f"{agent_settings.CONTAINER_DISK_ROOT}/{disk_cid}"
        dev["path"] = path
        hint = path
    devices = dict(inst.get("devices") or {})
    devices[device] = dev
    inst["devices"] = devices
    cloud._put_instance(vm_cid, inst, etag, "attach_disk")
    fail_point("attach-settings")
    try:
        write_settings(cloud, vm_cid, agent_settings.attach_persistent(settings, disk_cid, hint))
    except BaseException:
        # Keep the VM and its settings consistent: undo the attach.
        inst2, etag2 = cloud._instance(vm_cid, "attach_disk")
        (inst2.get("devices") or {}).pop(device, None)
        cloud._put_instance(vm_cid, inst2, etag2, "attach_disk")
        raise
    with mapped("attach_disk"):
        cloud.client.request(
            "PUT",
            _vol_path(pool, disk_cid),
            {"config": {**vol.get("config", {}), META + "vm": vm_cid}, "description": vol.get("description", "")},
        )
    log.info(f"attached {disk_cid} to {vm_cid} as {hint}")
    return hint


def _where(obj: dict[str, Any]) -> str:
    loc = obj.get("location") or ""
    return "" if loc == "none" else loc


def _follow(cloud: LXDCloud, pool: str, vol: dict[str, Any], disk_cid: str, inst: dict[str, Any]) -> dict[str, Any]:
    """On a cluster with a member-local pool, move the disk to the VM's member first."""
    src, dst = _where(vol), _where(inst)
    if not src or not dst or src == dst:
        return vol
    if not cloud.client.has_extension("cluster_internal_custom_volume_copy"):
        raise CloudError(
            f"attach_disk: disk {disk_cid} is on cluster member {src} and the VM on {dst}; pool {pool} is local to "
            f"each member and this server cannot move custom volumes between members. Place the VM on {src} "
            f"(cloud property target), or use a remote pool (ceph)"
        )
    log.info(f"moving disk {disk_cid} from {src} to {dst}")
    with mapped("attach_disk: move disk"):
        body = {
            "name": disk_cid,
            "type": "custom",
            "source": {"type": "copy", "name": disk_cid, "pool": pool, "location": src},
        }
        cloud.client.request("POST", f"/1.0/storage-pools/{quote(pool)}/volumes/custom", body, params={"target": dst})
        cloud.client.request("DELETE", _vol_path(pool, disk_cid), params={"target": src})
        return cloud.client.get(_vol_path(pool, disk_cid), params={"target": dst})


def detach(cloud: LXDCloud, vm_cid: str, disk_cid: str) -> None:
    inst, etag = cloud._instance(vm_cid, "detach_disk")
    with mapped("detach_disk"):
        found = find(cloud, disk_cid)
    if found is None:
        raise DiskNotFound(f"detach_disk: disk {disk_cid} not found")
    device = _attached_device(inst, disk_cid)
    settings = read_settings(cloud, vm_cid, inst)
    if device:
        inst["devices"].pop(device)
        cloud._put_instance(vm_cid, inst, etag, "detach_disk")
    else:
        log.info(f"disk {disk_cid} is not attached to {vm_cid}")
    if disk_cid in (settings.get("disks") or {}).get("persistent", {}):
        write_settings(cloud, vm_cid, agent_settings.detach_persistent(settings, disk_cid))
    pool, vol = found
    config = {k: v for k, v in (vol.get("config") or {}).items() if k != META + "vm"}
    with mapped("detach_disk"):
        cloud.client.request(
            "PUT", _vol_path(pool, disk_cid), {"config": config, "description": vol.get("description", "")}
        )


def attached(cloud: LXDCloud, vm_cid: str) -> list[str]:
    inst, _ = cloud._instance(vm_cid, "get_disks")
    return sorted(
        dev["source"]
        for dev in (inst.get("devices") or {}).values()
        if dev.get("type") == "disk" and str(dev.get("source", "")).startswith(naming.PERSISTENT_PREFIX)
    )


def resize(cloud: LXDCloud, disk_cid: str, new_size_mb: int) -> None:
    with mapped("resize_disk"):
        pool, vol = _require(cloud, disk_cid, "resize_disk")
        current = _size_mb(vol.get("config", {}).get("size", "0"))
        if new_size_mb < current:
            raise CloudError(f"resize_disk: cannot shrink {disk_cid} from {current} MiB to {new_size_mb} MiB")
        if new_size_mb == current:
            log.info(f"disk {disk_cid} is already {current} MiB")
            return
        config = dict(vol.get("config") or {})
        config["size"] = f"{new_size_mb}MiB"
        cloud.client.request(
            "PUT", _vol_path(pool, disk_cid), {"config": config, "description": vol.get("description", "")}
        )
    log.info(f"resized {disk_cid} from {current} to {new_size_mb} MiB")


def update(cloud: LXDCloud, disk_cid: str, new_size_mb: int, props: dict[str, Any]) -> str:
    """A size change in place (same cid); a change of pool or type is a copy the director makes."""
    with mapped("update_disk"):
        pool, vol = _require(cloud, disk_cid, "update_disk")
    wanted_pool = props.get("pool") or pool
    wanted_type = props.get("type") or vol.get("content_type")
    if wanted_pool != pool or wanted_type != vol.get("content_type"):
        raise NotImplementedByCpi("update_disk: moving a disk to another pool or type is done by the director")
    resize(cloud, disk_cid, new_size_mb)
    return disk_cid


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


def snapshot(cloud: LXDCloud, disk_cid: str, metadata: dict[str, Any]) -> str:
    with mapped("snapshot_disk"):
        pool, _ = _require(cloud, disk_cid, "snapshot_disk")
        cid = naming.new_snapshot_cid(disk_cid)
        _, name = cid.split("@", 1)
        desc = " ".join(f"{k}={v}" for k, v in sorted(metadata.items()))
        body: dict[str, Any] = {"name": name}
        fail_point("snapshot")
        cloud.client.request("POST", f"{_vol_path(pool, disk_cid)}/snapshots", body)
        if desc:
            try:
                cloud.client.request(
                    "PUT", f"{_vol_path(pool, disk_cid)}/snapshots/{name}", {"description": desc[:1000]}
                )
            except LXDError as e:
                log.warn(f"snapshot {cid}: cannot record metadata: {e.message}")
    log.info(f"snapshot {cid} taken")
    return cid


def delete_snapshot(cloud: LXDCloud, snapshot_cid: str) -> None:
    parts = naming.split_snapshot_cid(snapshot_cid)
    if parts is None:
        raise CpiError(f"delete_snapshot: {snapshot_cid!r} is not a boshcpi snapshot cid")
    disk_cid, name = parts
    with mapped("delete_snapshot"):
        found = find(cloud, disk_cid)
        if found is None:
            log.info(f"snapshot {snapshot_cid}: its disk is gone")
            return
        if not cloud.client.delete(f"{_vol_path(found[0], disk_cid)}/snapshots/{name}"):
            log.info(f"snapshot {snapshot_cid} is already gone")


def set_metadata(cloud: LXDCloud, disk_cid: str, metadata: dict[str, Any]) -> None:
    with mapped("set_disk_metadata"):
        pool, vol = _require(cloud, disk_cid, "set_disk_metadata")
        config = dict(vol.get("config") or {})
        for k, v in metadata.items():
            config[META + naming.metadata_key(k)] = str(v)
        parts = [str(metadata.get(k, "")) for k in ("deployment", "instance_group", "instance_index")]
        desc = vol.get("description", "")
        if any(parts):
            desc = "boshcpi persistent disk of " + "/".join(p for p in parts if p)
        cloud.client.request("PUT", _vol_path(pool, disk_cid), {"config": config, "description": desc})


# ---- agent settings of a VM or container -------------------------------------------------------


def read_settings(cloud: LXDCloud, vm_cid: str, inst: dict[str, Any]) -> dict[str, Any]:
    if inst.get("type") != "virtual-machine":
        return cloud.read_container_settings(vm_cid)
    from boshcpi.agent import configdisk
    from boshcpi.drivers.lxd import volumes
    from boshcpi.drivers.lxd.cloud import CONFIG_DEVICE

    dev = (inst.get("devices") or {}).get(CONFIG_DEVICE)
    if not dev:
        raise CloudError(f"VM {vm_cid} has no config drive device")
    with mapped("read config drive"):
        image = volumes.export_block(cloud.client, dev.get("pool", cloud.pool), dev["source"])
    return configdisk.read_settings(image, userdata_path=cloud.cfg.agent_config.userdata_path)


def write_settings(cloud: LXDCloud, vm_cid: str, settings: dict[str, Any]) -> None:
    inst, etag = cloud._instance(vm_cid, "write settings")
    if inst.get("type") != "virtual-machine":
        with mapped("write agent settings"):
            cloud._write_container_settings(vm_cid, settings)
        return
    from boshcpi.drivers.lxd.cloud import CONFIG_DEVICE

    old = (inst.get("devices") or {}).get(CONFIG_DEVICE, {}).get("source")
    new = cloud._write_config_volume(vm_cid, settings)
    try:
        inst["devices"][CONFIG_DEVICE] = {"type": "disk", "pool": cloud.pool, "source": new}
        cloud._put_instance(vm_cid, inst, etag, "write settings")
    except BaseException:
        cloud._delete_volume(new)
        raise
    if old:
        # A running VM may keep the old volume busy until it reboots: cleanup removes it later.
        cloud._delete_volume(old)
