"""What create_vm on LXD and Incus reads before it plans (vmplan): the stemcell's image, whether the
host has room, the pool volumes a cloud-config names, the networks the NICs reach, where in a cluster
the VM goes, and the daemon's clock. Another call's interrupted work met on the way (a disk's pool
move, while finding where the VM's persistent disks are) is settled here, before planning.
"""

from __future__ import annotations

import time

from boshcpi import log
from boshcpi.drivers.lxd import naming, vmplan
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.drivers.lxd.host import META
from boshcpi.protocol import CloudError, CpiError, VMCreationFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import VMSize, VMSpec
    from boshcpi.drivers.lxd.host import LXDHost


def check_input(host: LXDHost, spec: VMSpec) -> None:
    """The caller's mistakes, before anything is made: raw config and devices (vmplan.check_raw), and
    a device's pool volume that is a CPI's (another VM's config drive holds its agent's credentials,
    a persistent disk its data)."""
    refused = " is refused unless cpi.json sets server.allow_raw_devices: true"
    for name, pool, source in vmplan.check_raw(host.cfg, spec.cloud_properties):
        where = f"cloud_properties.devices.{name}"
        try:
            vol = host.client.get(f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom/{quote(source, '')}")
        except LXDError as e:
            if e.not_found:
                continue  # the daemon says so at create time
            raise to_bosh(e, f"{where}: volume {source!r}") from None
        if any(str(k).startswith(META) for k in (vol or {}).get("config") or {}):
            raise CpiError(f"{where}: volume {source!r} carries BOSH marks (a CPI made it);" + refused)


def stemcell(host: LXDHost, spec: VMSpec, size: VMSize) -> vmplan.VMFacts | None:
    """The stemcell's facts (None: a warden-style image, a container), and room on the host."""
    from boshcpi.drivers.lxd import diskplaces, images, settingsio

    with mapped("create_vm: stemcell"):
        alias = images.find_alias_info(host.client, spec.stemcell_cid)
        if alias is None:
            raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
        is_vm = alias.get("type") == "virtual-machine"
        # Image properties pick the VM's boot config by stemcell line; containers need none.
        image = images.image_info(host.client, alias["target"]) if is_vm else {}
        if image is None:
            raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
        _check_capacity(host, size)
        if size.ephemeral_mb:
            diskplaces.check_space(host, host.pool, size.ephemeral_mb, "cloud_properties.ephemeral_disk")
    if not is_vm:
        return None
    return vmplan.VMFacts(
        image_properties=dict(image.get("properties") or {}),
        boot_mode=host.client.has_extension("instance_boot_mode"),
        server_type=host.server_type,
        uses_iso=settingsio.uses_iso(host),
    )


def read(host: LXDHost, spec: VMSpec, vm: vmplan.VMFacts | None) -> vmplan.Facts:
    """The rest: the networks, the daemon's clock (for the attempt's mark), the placement."""
    managed: dict[str, bool] = {}
    for name in vmplan.nic_networks(host.cfg, spec):
        if name not in managed:
            managed[name] = _network_managed(host, name)
    creating = naming.creating_mark(host.client.daemon_time() or time.time())
    return vmplan.Facts(vm=vm, managed=managed, target=placement(host, spec), creating=creating)


def _network_managed(host: LXDHost, name: str) -> bool:
    try:
        return bool(host.client.get(f"/1.0/networks/{quote(name, '')}").get("managed"))
    except LXDError as e:
        if e.not_found:
            raise CloudError(f"network {name!r} does not exist in LXD (server.network_name)") from None
        raise


def _check_capacity(host: LXDHost, size: Any) -> None:
    """CPUs and memory a host cannot give are the caller's mistake, not a VM that never boots. The
    daemon accepts any limits (checked: LXD 5.0 creates a container with limits.cpu 8 on 2 CPUs and
    600 GiB of memory), so the CPI asks the host what it has; small sizes every host has skip the
    round trip (create_vm stays within a few percent of the daemon's own time)."""
    if size.cpus <= 2 and size.memory_mb <= 4096:
        return
    try:
        res = host.client.get("/1.0/resources", project=False) or {}
    except LXDError as e:
        log.debug(f"cannot read host resources: {e.message}")
        return
    cpus = (res.get("cpu") or {}).get("total") or 0
    mem = ((res.get("memory") or {}).get("total") or 0) >> 20
    if cpus and size.cpus > cpus:
        raise CpiError(f"cloud_properties: {size.cpus} CPUs asked, the host has {cpus}")
    if mem and size.memory_mb > mem:
        raise CpiError(f"cloud_properties: {size.memory_mb} MiB of memory asked, the host has {mem} MiB")


def placement(host: LXDHost, spec: VMSpec) -> str:
    """Cluster member or @group for a new VM. Precedence: the VM's cloud properties (the director
    merges AZ, vm_type and vm_extensions there), a network's subnet cloud properties,
    `server.target`; with none, VMs of one instance group are spread over the members."""
    target = spec.cloud_properties.get("target")
    if not target:
        target = next(
            (n.cloud_properties.get("target") for n in spec.networks.values() if n.cloud_properties.get("target")),
            None,
        )
    target = str(target or host.cfg.server.target or "")
    if not target and spec.disk_cids:
        # A recreated VM goes where its persistent disks are: LXD cannot move a custom volume
        # between members of a local pool, and Incus would copy the whole disk on every recreate.
        target = _where_disks_are(host, spec.disk_cids)
    group = vmplan.group(spec)
    if not target and group:
        target = _spread(host, group)
    return target


def _where_disks_are(host: LXDHost, disk_cids: tuple[str, ...] | list[str]) -> str:
    from boshcpi.drivers.lxd import diskplaces

    if not (host.client.server.get("environment") or {}).get("server_clustered"):
        return ""
    members = set()
    for cid in disk_cids:
        found = diskplaces.find(host, cid)
        loc = (found[1].get("location") or "") if found else ""
        if loc and loc != "none":
            members.add(loc)
    if len(members) != 1:
        return ""  # remote pools (no location), or disks on several members: no single answer
    member = members.pop()
    state = member_state(host, member)
    if state != "Online":
        raise CloudError(
            f"create_vm: the VM's persistent disk(s) are on cluster member {member}, which is {state}; "
            "bring it back (or restore it from evacuation) and retry",
            ok_to_retry=True,
        )
    log.info(f"placing the VM on {member}, where its persistent disk(s) are")
    return member


def member_state(host: LXDHost, member: str) -> str:
    try:
        info = host.client.get(f"/1.0/cluster/members/{quote(member, '')}", project=False) or {}
    except LXDError as e:
        return f"unknown ({e.message})"
    return str(info.get("status") or "unknown")


def _spread(host: LXDHost, group: str) -> str:
    """Anti-affinity: the online member with the fewest VMs of this group (then fewest VMs)."""
    env = host.client.server.get("environment") or {}
    if not env.get("server_clustered"):
        return ""
    members = [
        m["server_name"]
        for m in host.client.get("/1.0/cluster/members", params={"recursion": 1}, project=False) or []
        if m.get("status") == "Online"
    ]
    if len(members) < 2:
        return ""
    same = dict.fromkeys(members, 0)
    total = dict.fromkeys(members, 0)
    for inst in host.client.get("/1.0/instances", params={"recursion": 1}) or []:
        loc = inst.get("location")
        if loc in total:
            total[loc] += 1
            if (inst.get("config") or {}).get(META + "group") == group:
                same[loc] += 1
    choice = min(members, key=lambda m: (same[m], total[m], m))
    log.info(f"placing a VM of group {group} on {choice} (group per member: {same})")
    return choice
