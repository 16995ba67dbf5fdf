"""One LXD/Incus host as the driver's modules share it: the connection, the configured pool, and the
instance and custom-volume operations every part needs (create_vm, disks, settings, cleanup).

Every path built here quotes each segment completely (a cid holding `/` can never reach a sub-resource
such as `/state` or `/snapshots/...`), and every delete goes through a name this driver recognises.
"""

from __future__ import annotations

import time

from boshcpi import log
from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote
from boshcpi.drivers.lxd.errors import mapped, member_down
from boshcpi.ids import is_vm_cid
from boshcpi.protocol import CloudError, VMNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.config import Config

META = naming.META


def connect(cfg: Config) -> LXDClient:
    s = cfg.server
    return LXDClient(
        cfg.server_url,
        project=s.project_name,
        client_cert=s.tls_client_cert,
        client_key=s.tls_client_key,
        server_cert=s.tls_server_cert,
        insecure=s.insecure_skip_verify,
        timeout=cfg.operation_timeout,
    )


def instance_path(name: str) -> str:
    return f"/1.0/instances/{quote(name, '')}"


def volume_path(pool: str, name: str) -> str:
    return f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom/{quote(name, '')}"


def volumes_path(pool: str) -> str:
    return f"/1.0/storage-pools/{quote(pool, '')}/volumes/custom"


def now() -> str:
    return str(int(time.time()))


def as_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class LXDHost:
    """The connection (opened on first use, closed once per call) and the shared operations."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._client: LXDClient | None = None

    @property
    def client(self) -> LXDClient:
        if self._client is None:
            self._client = connect(self.cfg)
        return self._client

    @client.setter
    def client(self, value: LXDClient) -> None:
        self._client = value

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def pool(self) -> str:
        return self.cfg.server.storage_pool_name

    def lock(self, key: str, action: str, timeout: float | None = None, ttl: float | None = None) -> Any:
        """The daemon-held lock of a VM or disk cid (locks.py), for a read-modify-write."""
        from boshcpi.drivers.lxd import locks

        wait = self.cfg.operation_timeout if timeout is None else timeout
        cfg = self.cfg
        return locks.lock(self.client, key, action, wait, locks.TTL if ttl is None else ttl, lambda: connect(cfg))

    @property
    def server_type(self) -> str:
        """'lxd' or 'incus' as the daemon says (GET /1.0, once per call), never cpi.json's
        `server.type`: after an `lxd-to-incus` migration the config may still say lxd, while every
        disk serial the guest sees starts with `incus_` (new disk cids and all hints follow it)."""
        return self.client.server_type

    # ---- instances -----------------------------------------------------------------------
    def find_instance(self, name: str, action: str = "") -> dict[str, Any] | None:
        try:
            return self.client.get(instance_path(name))
        except LXDError as e:
            if e.not_found:
                return None
            down = self._member_down(name, action or "look up", e)
            if down is not None:
                raise down from None
            raise

    def instance(self, vm_cid: str, action: str) -> tuple[dict[str, Any], str]:
        """The instance and its ETag, or VMNotFound."""
        try:
            return self.client.get_with_etag(instance_path(vm_cid))
        except LXDError as e:
            if e.not_found:
                raise VMNotFound(f"{action}: VM {vm_cid} not found") from None
            down = self._member_down(vm_cid, action, e)
            if down is not None:
                raise down from None
            with mapped(action):
                raise

    def _member_down(self, vm_cid: str, action: str, e: LXDError) -> CloudError | None:
        """A VM on a cluster member that does not answer (offline, its daemon gone): it exists (has_vm
        must not say otherwise, or the director recreates it), and the call can succeed once the
        member is back. Known by the daemon's words (`member_down`) or, where it says something else
        (Incus: "Server isn't ready yet"), by the state of the member the instance list places it on."""
        if not (self.client.server.get("environment") or {}).get("server_clustered"):
            return None
        member = ""
        try:
            for inst in self.client.get("/1.0/instances", params={"recursion": 1}) or []:
                if inst.get("name") == vm_cid:
                    member = str(inst.get("location") or "")
            state = (
                str((self.client.get(f"/1.0/cluster/members/{quote(member, '')}", project=False) or {}).get("status"))
                if member
                else ""
            )
        except LXDError:
            state = ""
        if not member_down(e) and (not member or state == "Online"):
            return None
        return CloudError(
            f"{action}: VM {vm_cid} is on cluster member {member or '?'} ({state or 'not answering'}), which does "
            f"not answer ({e.message}); retry once it is back",
            ok_to_retry=True,
        )

    def is_owned(self, inst: dict[str, Any] | None) -> bool:
        """An instance boshcpi made, or one in the Go CPI's layout (a `config` disk device on a
        `vol-c-<uuid>` volume): anything else, even under a vm-<uuid> name, is not ours to touch."""
        if inst is None or not is_vm_cid(str(inst.get("name", ""))):
            return False
        if (inst.get("config") or {}).get(META + "created_by") == "boshcpi":
            return True
        dev = (inst.get("devices") or {}).get(naming.GO_CONFIG_DEVICE) or {}
        return dev.get("type") == "disk" and naming.is_go_volume(str(dev.get("source", "")), naming.CONFIG_PREFIX)

    def owned_instance(self, vm_cid: str, action: str) -> tuple[dict[str, Any], str]:
        """A VM this driver may change, with its ETag; VMNotFound for anything else."""
        inst, etag = self.instance(vm_cid, action)
        if not self.is_owned(inst):
            raise VMNotFound(f"{action}: {vm_cid} is not a VM made by boshcpi or the Go LXD CPI")
        return inst, etag

    def put_instance(self, vm_cid: str, inst: dict[str, Any], etag: str, action: str, wait: bool = True) -> Any:
        """Replace an instance's config and devices. With `wait=False` the daemon's operation is
        returned still running: the caller does other requests meanwhile, then `finish(op, ...)`."""
        body = {k: inst.get(k) for k in ("architecture", "config", "devices", "ephemeral", "profiles", "description")}
        body["stateful"] = False
        headers = {"If-Match": etag} if etag else None
        with mapped(action, not_found=VMNotFound(f"{action}: VM {vm_cid} not found")):
            return self.client.request("PUT", instance_path(vm_cid), body, headers=headers, wait=wait)

    def finish(self, op: Any, vm_cid: str, action: str) -> None:
        """Wait for an operation `put_instance(wait=False)` started; its failure is the call's."""
        if isinstance(op, dict) and "id" in op:
            with mapped(action, not_found=VMNotFound(f"{action}: VM {vm_cid} not found")):
                self.client.wait(op["id"])

    def change_state(self, name: str, action: str, timeout: int = 30, force: bool = True) -> None:
        body: dict[str, Any] = {"action": action, "timeout": timeout}
        if action != "start":
            body["force"] = force
        self.client.request("PUT", instance_path(name) + "/state", body)

    def delete_instance(self, name: str) -> dict[str, Any] | None:
        """Stop and delete an instance; return its last state (None if it was already gone)."""
        inst = self.find_instance(name)
        if inst is None:
            return None
        if inst.get("status") not in ("Stopped", None):
            try:
                self.change_state(name, "stop")
            except LXDError as e:
                msg = e.message.lower()
                if not e.not_found and "already stopped" not in msg and "not running" not in msg:
                    raise
        self.client.delete(instance_path(name))
        return inst

    # ---- custom volumes ------------------------------------------------------------------
    def find_volume(self, name: str, pool: str | None = None) -> dict[str, Any] | None:
        try:
            return self.client.get(volume_path(pool or self.pool, name))
        except LXDError as e:
            if e.not_found:
                return None
            raise

    def create_volume(
        self, name: str, size_mb: int, content: str, kind: str, vm_cid: str = "", target: str = ""
    ) -> None:
        body = {
            "name": name,
            "type": "custom",
            "content_type": content,
            "config": {"size": f"{size_mb}MiB", META + "kind": kind, META + "vm": vm_cid, META + "created": now()},
            "description": f"boshcpi {kind} disk" + (f" of {vm_cid}" if vm_cid else ""),
        }
        with mapped(f"create {kind} volume"):
            self.client.request("POST", volumes_path(self.pool), body, params={"target": target})

    def delete_volume(self, name: str, pool: str | None = None) -> bool:
        """Delete a custom volume; a failure (e.g. still in use) is logged, not raised."""
        try:
            return self.client.delete(volume_path(pool or self.pool, name))
        except LXDError as e:
            log.warn(f"cannot delete volume {name}: {e.message}")
            return False

    def volume_names(self) -> list[str]:
        urls = self.client.get(volumes_path(self.pool)) or []
        return [url.rsplit("/", 1)[-1].split("?")[0] for url in urls]
