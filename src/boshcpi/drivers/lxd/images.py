"""Stemcells as LXD/Incus images: lookups, reuse by fingerprint, aliases as cids, predeploy, delete
(the upload itself is imageupload.py).

Each stemcell cid is an image alias (`img-<uuid>`); two stemcells with the same bytes share one
image, and an image goes only when its last alias does and no instance is built from it.
"""

from __future__ import annotations

import time

from boshcpi import ids, log
from boshcpi.cloud import StemcellSpec
from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote
from boshcpi.drivers.lxd.errors import mapped
from boshcpi.drivers.lxd.naming import META
from boshcpi.faults import fail_point
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.drivers.lxd.host import LXDHost


def find_alias_info(client: LXDClient, cid: str) -> dict | None:
    """The alias behind a stemcell cid (`target` fingerprint, `type`), or None."""
    try:
        return client.get(f"/1.0/images/aliases/{quote(cid, '')}")
    except LXDError as e:
        if e.not_found:
            return None
        raise


def find_alias(client: LXDClient, cid: str) -> str | None:
    """Fingerprint behind a stemcell cid, or None."""
    alias = find_alias_info(client, cid)
    return alias["target"] if alias else None


def image_info(client: LXDClient, fingerprint: str) -> dict | None:
    try:
        return client.get(f"/1.0/images/{quote(fingerprint, '')}")
    except LXDError as e:
        if e.not_found:
            return None
        raise


def predeploy(host: LXDHost, fingerprint: str) -> None:
    """On a cluster, make every online member hold the image now, not at the first create_vm: a
    throwaway instance of the image's own type (a VM image cannot make a container) on each member.
    It runs before the stemcell's alias exists, so a failure leaves no stemcell, only an unaliased image
    `cleanup` recognises; each throwaway carries the CPI's marks and the `creating` mark, so a killed
    call's leftover is an interrupted instance to `cleanup` and never blocks delete_stemcell."""
    client = host.client
    cluster = client.get("/1.0/cluster", project=False) or {}
    if not cluster.get("enabled"):
        return
    kind = (image_info(client, fingerprint) or {}).get("type") or "container"
    members = client.get("/1.0/cluster/members", params={"recursion": 1}, project=False) or []
    for member in members:
        if member.get("status") != "Online":
            log.warn(f"predeploy: skipping member {member.get('server_name')} ({member.get('status')})")
            continue
        name = ids.new_vm_cid()
        body = {
            "name": name,
            "type": kind,
            "source": {"type": "image", "fingerprint": fingerprint},
            "devices": {"root": {"type": "disk", "path": "/", "pool": host.pool}},
            "config": {
                META + "created_by": "boshcpi",
                META + "kind": PREDEPLOY_KIND,
                META + naming.CREATING_KEY: naming.creating_mark(client.daemon_time() or time.time()),
            },
            "description": "boshcpi predeploy (throwaway)",
        }
        try:
            client.request("POST", "/1.0/instances", body, params={"target": member["server_name"]})
            fail_point("predeploy")
        finally:
            try:
                client.delete(f"/1.0/instances/{quote(name, '')}")
            except LXDError as e:
                log.warn(f"predeploy: cannot delete the throwaway instance {name}: {e.message}")
        log.info(f"predeployed image {fingerprint[:12]} on {member['server_name']}")


def create_alias(client: LXDClient, fingerprint: str, spec: StemcellSpec) -> str:
    cid = ids.new_stemcell_cid()
    desc = f"boshcpi stemcell {spec.name}/{spec.version}".strip()
    with mapped("create_stemcell: alias"):
        client.request("POST", "/1.0/images/aliases", {"name": cid, "target": fingerprint, "description": desc})
    return cid


def users_of(client: LXDClient, fingerprint: str) -> list[str]:
    """Instances created from this image (their volatile.base_image)."""
    instances = client.get("/1.0/instances", params={"recursion": 1}) or []
    return [i["name"] for i in instances if (i.get("config") or {}).get("volatile.base_image") == fingerprint]


PREDEPLOY_KIND = "predeploy"


def _reclaim_predeploys(client: LXDClient, fingerprint: str) -> None:
    """Throwaway predeploy instances a killed create_stemcell left on this image: never the
    director's, never in delete_stemcell's way."""
    for inst in client.get("/1.0/instances", params={"recursion": 1}) or []:
        cfg = inst.get("config") or {}
        if (
            cfg.get("volatile.base_image") == fingerprint
            and cfg.get(META + "created_by") == "boshcpi"
            and cfg.get(META + "kind") == PREDEPLOY_KIND
            and ids.is_vm_cid(inst["name"])
        ):
            log.info(f"removing {inst['name']}, a predeploy throwaway a killed create_stemcell left")
            client.delete(f"/1.0/instances/{quote(inst['name'], '')}", params={"target": inst.get("location", "")})


def _ours(info: dict) -> bool:
    """An image boshcpi uploaded (property `boshcpi`), or one in the Go CPI's layout (its
    create_stemcell sets `root_device_name` and `root_disk_size`)."""
    props = info.get("properties") or {}
    return props.get("boshcpi") == "true" or ("root_device_name" in props and "root_disk_size" in props)


def delete(client: LXDClient, cid: str) -> None:
    with mapped(f"delete_stemcell {cid}"):
        fingerprint = find_alias(client, cid)
        if fingerprint is None:
            log.info(f"stemcell {cid} is already gone")
            return
        info = image_info(client, fingerprint) or {}
        if info and not _ours(info):
            log.warn(f"delete_stemcell: {cid} names an image boshcpi did not make; leaving it alone")
            return
        others = [a["name"] for a in info.get("aliases") or [] if a.get("name") != cid]
        if not others:
            _reclaim_predeploys(client, fingerprint)
            users = users_of(client, fingerprint)
            if users:
                raise CloudError(
                    f"delete_stemcell: stemcell {cid} is still used by {len(users)} VM(s): "
                    f"{', '.join(sorted(users)[:5])}; delete them first"
                )
        client.delete(f"/1.0/images/aliases/{quote(cid, '')}")
        if others:
            log.info(f"image {fingerprint[:12]} kept: still the stemcell(s) {', '.join(others)}")
            return
        client.delete(f"/1.0/images/{quote(fingerprint, '')}")
