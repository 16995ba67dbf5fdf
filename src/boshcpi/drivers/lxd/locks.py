"""Locks held in the daemon, for the read-modify-writes concurrent CPI calls must not interleave: a
VM's devices and agent settings (attach_disk, detach_disk, set_vm_metadata) and a disk's config and
moves (resize_disk, set_disk_metadata, update_disk, a move between cluster members). They hold across
CPI processes and across hosts, since every director (or `create-env`) talking to one daemon sees the
same locks. The protocol (one holder, renewal, takeover, release) is `boshcpi.lease`'s.

The store: a profile `boshcpi-lock-<cid>` in the CPI's project, its description the lease record.
Creating a profile is atomic (`UNIQUE (project_id, name)`, LXD `lxd/db/cluster/schema.go`, Incus
the same: of ten concurrent creates exactly one succeeds), and the cheapest object to create (no
storage). An ETag does not make a write conditional here: LXD and Incus check `If-Match` before
and outside the transaction that writes (`lxd/profiles.go` profilePut), and ignore it on DELETE and
rename. The daemon's clock is the `Date` header of its answers (Go's net/http sets it on each).
"""

from __future__ import annotations

from boshcpi import lease
from boshcpi.drivers.lxd.client import LXDError, http_date, quote
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from boshcpi.drivers.lxd.client import LXDClient

PREFIX = "boshcpi-lock-"
TTL = 120.0  # seconds a lock stays good without renewal; its holder renews it every third of that


def name_of(key: str) -> str:
    return PREFIX + key


def _path(name: str) -> str:
    return f"/1.0/profiles/{quote(name, '')}"


class ProfileStore:
    """Lease objects as profiles (boshcpi.lease.Store)."""

    def __init__(self, client: LXDClient, connect: Callable[[], LXDClient] | None = None) -> None:
        self.client = client
        self.connect = connect

    def create(self, name: str, record: str) -> bool:
        try:
            self.client.request(
                "POST", "/1.0/profiles", {"name": name, "description": record, "config": {}, "devices": {}}
            )
            return True
        except LXDError as e:
            if "already exists" in e.message.lower() or "already in use" in e.message.lower():
                return False
            raise CloudError(f"cannot create the lock {name}: {e.message}", ok_to_retry=True) from None

    def read(self, name: str) -> tuple[str, float | None] | None:
        status, headers, payload = self.client.raw("GET", _path(name))
        if status == 404:
            return None
        try:
            doc = self.client.answer(status, payload, True) or {}
        except LXDError as e:
            raise CloudError(f"cannot read the lock {name}: {e.message}", ok_to_retry=True) from None
        date = headers.get("date")
        return str(doc.get("description", "")), http_date(date) if date else None

    def rewrite(self, name: str, record: str) -> None:
        self.client.request("PUT", _path(name), {"description": record, "config": {}, "devices": {}})

    def delete(self, name: str) -> bool:
        return self.client.delete(_path(name))

    def daemon_time(self) -> float | None:
        return self.client.daemon_time()

    def fork(self) -> ProfileStore:
        if self.connect is None:
            raise RuntimeError("no connection to renew the lock on")
        return ProfileStore(self.connect(), self.connect)

    def close(self) -> None:
        self.client.close()


def lock(client: LXDClient, key: str, action: str, timeout: float, ttl: float = TTL,
         connect: Callable[[], LXDClient] | None = None) -> lease.Lease:  # fmt: skip
    """`with lock(client, cid, action, timeout):` the read-modify-write of `cid` runs alone. `ttl`:
    how long the lock stays good should its holder stop renewing it (a holder on this machine that is
    gone loses it at once)."""
    return lease.Lease(ProfileStore(client, connect), PREFIX, key, action, timeout, ttl)


def is_lock(name: str) -> bool:
    return name.startswith(PREFIX)


def stale_reason(store: ProfileStore, name: str) -> str:
    """Why a lock profile is stale now (its record, the daemon's clock), or "" if it may be held."""
    got = store.read(name)
    if got is None:
        return ""
    return lease.stale(got[0], got[1])
