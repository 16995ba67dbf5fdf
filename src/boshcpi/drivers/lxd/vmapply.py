"""Carries out a create_vm plan (vmplan.Plan) on LXD or Incus, in order, with one undo journal:
the ephemeral volume, the config drive, the instance (after any interrupted attempt holding one of
its addresses is reclaimed), the settings and the start, and last the `creating` mark cleared. What
the plan holds is sent as it is; where a step fails or the call is interrupted, what was made goes.
"""

from __future__ import annotations

import time

from boshcpi import ids, log
from boshcpi.drivers.lxd import instances, naming
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.drivers.lxd.host import META, instance_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.lxd.host import LXDHost
    from boshcpi.drivers.lxd.vmplan import Plan


class Journal:
    """What a plan made so far, undone in reverse where it does not complete. An instance is entered
    before its request is sent: a request that times out may still have made it."""

    def __init__(self, host: LXDHost, vm_cid: str) -> None:
        self.host, self.vm_cid = host, vm_cid
        self.volumes: list[str] = []
        self.instance = False

    def undo(self) -> None:
        from boshcpi.drivers.lxd import settingsio

        log.warn(f"create_vm failed: removing what it made ({self.vm_cid}, {len(self.volumes)} volume(s))")
        if self.instance:
            try:
                self.host.delete_instance(self.vm_cid)
            except LXDError as e:
                log.warn(f"cleanup of {self.vm_cid} failed: {e.message}")
        for vol in self.volumes:
            if vol.startswith(naming.CONFIG_PREFIX):
                settingsio.delete_config_volume(self.host, vol)
            else:
                self.host.delete_volume(vol)


def apply(host: LXDHost, plan: Plan) -> None:
    from boshcpi.drivers.lxd import settingsio
    from boshcpi.faults import fail_point

    vm_cid = plan.vm_cid
    journal = Journal(host, vm_cid)
    try:
        fail_point("volumes")
        if plan.ephemeral is not None:
            eph = plan.ephemeral
            host.create_volume(eph.name, eph.size_mb, eph.content, "ephemeral", vm_cid, target=plan.target)
            journal.volumes.append(eph.name)
        if plan.config_drive:
            settingsio.write_config_volume(host, vm_cid, plan.settings, plan.target, plan.config_drive)
            journal.volumes.append(plan.config_drive)
        fail_point("instance")
        reclaim_addresses(host, vm_cid, plan.addresses)
        journal.instance = True
        with mapped("create_vm: instance"):
            host.client.request("POST", "/1.0/instances", plan.instance, params={"target": plan.target})
        fail_point("settings")
        if plan.is_vm:
            fail_point("start")
            start(host, vm_cid)
        else:
            settingsio.settings_then_start(host, vm_cid, plan.settings, lambda cid: start(host, cid))
        fail_point("started")
        with mapped("create_vm: done"):
            # The VM is the director's from here on (a PATCH changes only this key, live).
            host.client.request("PATCH", instance_path(vm_cid), {"config": {META + naming.CREATING_KEY: ""}})
    except BaseException:
        journal.undo()
        raise


def start(host: LXDHost, vm_cid: str) -> None:
    from boshcpi.drivers.lxd import vmplan

    try:
        host.client.request("PUT", instance_path(vm_cid) + "/state", {"action": "start", "timeout": 60})
    except LXDError as e:
        # The director retries an interrupted create_vm with the same IP; the interrupted
        # attempt's instance may still claim that address. Reclaim and retry once.
        inst = host.client.get(instance_path(vm_cid)) if "already defined on another nic" in e.message.lower() else {}
        if not inst or not reclaim_addresses(host, vm_cid, vmplan.addresses(inst.get("devices") or {})):
            raise to_bosh(e, "start") from None
        with mapped("start"):
            host.client.request("PUT", instance_path(vm_cid) + "/state", {"action": "start", "timeout": 60})


def creating_bound(host: LXDHost) -> float:
    """The longest a create_vm runs: its image copy, volume and start each wait up to
    operation_timeout. A `creating` mark older than this is an interrupted attempt's, wherever its
    process ran."""
    return 3 * host.cfg.operation_timeout


def reclaim_addresses(host: LXDHost, vm_cid: str, wanted: frozenset[tuple[str, str]]) -> bool:
    """Delete interrupted create_vm attempts (naming.interrupted: boshcpi instances still marked
    `creating` by a process that is gone) that hold one of these (network, address) pairs: the
    director's retry of a killed create_vm asks for the same address, and only one VM may have it.
    An attempt the daemon is still starting or stopping is waited for first (its operations end,
    within operation_timeout; past that the answer is retryable). A live concurrent call's
    instance is never taken."""
    if not wanted:
        return False
    reclaimed = False
    now = host.client.daemon_time() or time.time()
    for other in host.client.get("/1.0/instances", params={"recursion": 1}) or []:
        cfg: dict[str, Any] = other.get("config") or {}
        if (
            other["name"] == vm_cid
            or not ids.is_vm_cid(other["name"])
            or cfg.get(META + "created_by") != "boshcpi"
            or not naming.interrupted(other, now, creating_bound(host))
        ):
            continue
        held = {
            (d.get("network") or d.get("parent"), d.get("ipv4.address"))
            for d in (other.get("devices") or {}).values()
            if d.get("type") == "nic"
        }
        if held & wanted:
            log.warn(f"reclaiming the address(es) of {other['name']}: an interrupted create_vm's instance")
            instances.delete_settled(host, other["name"], other)
            reclaimed = True
    return reclaimed
