"""Deleting a boshcpi instance with what it owns: its ephemeral and config volumes (any layout:
boshcpi's, boshcpi 0.1's, the Go CPI's), never a persistent disk; and waiting for the daemon's own
operations on it first (a killed call's start or stop may still run)."""

from __future__ import annotations

import time

from boshcpi import log
from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.host import META
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.lxd.host import LXDHost


def owned_volumes(host: LXDHost, vm_cid: str, inst: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(pool, volume) of this VM's ephemeral and config drives, from its own device list, plus
    boshcpi's ephemeral volume by its exact name when it carries this VM's mark. Never by name
    prefix; persistent disks are never in it."""
    found: list[tuple[str, str]] = []
    for name, dev in ((inst or {}).get("devices") or {}).items():
        source = str(dev.get("source", ""))
        if dev.get("type") != "disk" or not source or dev.get("path") == "/" or naming.is_disk_cid(source):
            continue
        pool = dev.get("pool") or host.pool
        ours = naming.volume_owner(source) == vm_cid
        go = name in (naming.GO_CONFIG_DEVICE, naming.GO_EPHEMERAL_DEVICE) and (
            naming.is_go_volume(source, naming.CONFIG_PREFIX) or naming.is_go_volume(source, naming.EPHEMERAL_PREFIX)
        )
        if ours or go:
            found.append((pool, source))
    eph = naming.ephemeral_volume(vm_cid)
    if all(v != eph for _, v in found):
        vol = host.find_volume(eph)
        if vol is not None and (vol.get("config") or {}).get(META + "vm") == vm_cid:
            found.append((host.pool, eph))
    return found


def delete_owned(host: LXDHost, vm_cid: str, inst: dict[str, Any] | None) -> None:
    from boshcpi.drivers.lxd import settingsio

    volumes = owned_volumes(host, vm_cid, inst)
    if inst is not None:
        host.delete_instance(vm_cid)
    for pool, vol in volumes:
        if vol.startswith(naming.CONFIG_PREFIX):
            if host.delete_volume(vol, pool):
                host.delete_volume(vol + settingsio.COPY_SUFFIX, pool)
        else:
            host.delete_volume(vol, pool)


def delete_settled(host: LXDHost, vm_cid: str, inst: dict[str, Any]) -> None:
    """Delete an instance once the daemon's operations on it have ended (a killed create_vm's
    start may still run: the daemon refuses a delete meanwhile, "Instance is busy running a
    'start' operation", or on Incus "Instance is running"), within operation_timeout."""
    deadline = time.monotonic() + host.cfg.operation_timeout
    current: dict[str, Any] | None = inst
    while True:
        try:
            delete_owned(host, vm_cid, current)
            return
        except LXDError as e:
            msg = e.message.lower()
            if "busy" not in msg and "is running" not in msg:
                raise
            if time.monotonic() >= deadline:
                raise CloudError(
                    f"{vm_cid}: the daemon is still busy with it ({e.message}); retry", ok_to_retry=True
                ) from None
            log.info(f"{vm_cid}: {e.message}; waiting for the daemon's operations on it")
        wait_operations(host, vm_cid, deadline)
        time.sleep(0.1)
        current = host.find_instance(vm_cid)


def wait_operations(host: LXDHost, vm_cid: str, deadline: float) -> None:
    """Wait for the daemon's running operations on an instance (GET /1.0/operations: by status,
    each naming the instances it works on, `/1.0/instances/<name>[?project=...]`)."""
    ops = host.client.get("/1.0/operations", params={"recursion": 1}) or {}
    groups = ops.values() if isinstance(ops, dict) else [ops]
    path = f"/1.0/instances/{vm_cid}"
    for op in (op for group in groups for op in group or []):
        urls = (op.get("resources") or {}).get("instances") or []
        if op.get("status") not in ("Running", "Pending") or not any(u.split("?")[0] == path for u in urls):
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise CloudError(
                f"{vm_cid}: the daemon is still {op.get('description', 'busy')!r} with it; retry", ok_to_retry=True
            )
        log.info(f"waiting for the daemon's {op.get('description', 'operation')!r} on {vm_cid} to end")
        try:
            host.client.wait(op["id"], timeout=left)
        except LXDError as e:
            if "did not finish" in e.message:
                raise CloudError(
                    f"{vm_cid}: the daemon is still busy with it ({e.message}); retry", ok_to_retry=True
                ) from None
            # It failed or is gone: either way it no longer runs.
