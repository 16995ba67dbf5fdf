"""Locks held in libvirtd, for the read-modify-writes concurrent CPI calls must not interleave: a
domain's disks and its config drive (attach_disk, detach_disk, set_vm_metadata). libvirt versions
nothing (two attaches would pick the same free target; interleaved config drive writes keep the last
writer's settings and orphan a config volume). The protocol (one holder, renewal, takeover, release)
is `boshcpi.lease`'s.

The store: a libvirt secret (no value, only its XML) whose usage is named `boshcpi-lock-<key>` and
whose description is the lease record. Defining a secret whose usage another secret has is refused
under the secret list's lock (src/conf/virsecretobj.c virSecretObjListAdd: "a secret with UUID ...
already defined for use with ..."), so of concurrent creators exactly one wins; each gate's UUID is
derived from its token, so a renewal (the same definition again) can only ever rewrite the gate its
holder made. Secrets are plain RPCs: no stream, no volume, so a lock never makes libvirtd refresh a
pool (an upload does, and a concurrent volume download then stalls: LibvirtHost.download). They are
persistent (`ephemeral='no'`): a lock outlives a libvirtd restart as its holder does.

libvirt sends no `Date`: where libvirtd is local, its clock is this machine's and the record carries
it; elsewhere a waiter judges a holder by its identity and by how long the record stays unchanged on
its own monotonic clock. Earlier boshcpi releases locked with a 0-byte volume `boshcpi-lock-<key>` in
the pool; `cleanup` still removes those once older than TTL by libvirtd's clock.
"""

from __future__ import annotations

import time

from boshcpi import lease
from boshcpi.drivers.libvirt import xmltree
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "boshcpi-lock-"
TTL = 120.0


def _uuid(name: str, token: str) -> str:
    """The gate's UUID, from its name and its holder's token: one gate per hold, known to its holder."""
    import hashlib

    h = hashlib.sha256(f"{name}\0{token}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def _xml(name: str, record: str) -> str:
    token = lease.parse_record(record)["token"]
    return (
        f"<secret ephemeral='no' private='yes'><uuid>{_uuid(name, token)}</uuid>"
        f"<description>{xmltree.escape(record)}</description>"
        f"<usage type='ceph'><name>{xmltree.escape(name)}</name></usage></secret>"
    )


class SecretStore:
    """Lease objects as libvirt secrets (boshcpi.lease.Store)."""

    def __init__(self, host: Any) -> None:
        """`host`: the driver's LibvirtHost (not imported here, so the two modules do not import
        each other)."""
        self.host = host
        self.lv = host.lv

    def _lookup(self, name: str) -> Any | None:
        try:
            return self.host.conn.secretLookupByUsage(self.lv.VIR_SECRET_USAGE_TYPE_CEPH, name)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_SECRET:
                return None
            raise self.host.err(e, f"look up the lock {name}") from None

    def create(self, name: str, record: str) -> bool:
        try:
            self.host.conn.secretDefineXML(_xml(name, record), 0)
            return True
        except self.lv.libvirtError as e:
            if "already defined for use" in e.get_error_message():
                return False
            raise self.host.err(e, f"lock {name}") from None

    def read(self, name: str) -> tuple[str, float | None] | None:
        secret = self._lookup(name)
        if secret is None:
            return None
        try:
            doc = xmltree.fromstring(secret.XMLDesc(0))
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_SECRET:
                return None
            raise self.host.err(e, f"read the lock {name}") from None
        except ValueError:
            return ("", self.daemon_time())
        desc = doc.find("description")
        return (desc.text or "" if desc is not None else ""), self.daemon_time()

    def rewrite(self, name: str, record: str) -> None:
        """The same definition again, under the UUID of this holder's token: a gate someone else made
        since has another UUID, and libvirtd refuses (the renewal then finds the lock lost)."""
        try:
            self.host.conn.secretDefineXML(_xml(name, record), 0)
        except self.lv.libvirtError as e:
            raise CloudError(f"cannot renew the lock {name}: {e.get_error_message()}") from None

    def delete(self, name: str) -> bool:
        secret = self._lookup(name)
        if secret is None:
            return False
        try:
            secret.undefine()
            return True
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_SECRET:
                return False
            raise self.host.err(e, f"delete the lock {name}") from None

    def daemon_time(self) -> float | None:
        return time.time() if self.host.is_local else None

    def fork(self) -> SecretStore:
        return SecretStore(type(self.host)(self.host.cfg))

    def close(self) -> None:
        self.host.close()

    def names(self) -> list[str]:
        """Every lock object of this CPI in libvirtd (gates and claims)."""
        try:
            return [s.usageID() for s in self.host.conn.listAllSecrets(0) if is_lock(s.usageID())]
        except self.lv.libvirtError as e:
            raise self.host.err(e, "list the locks") from None


def lock(host: Any, key: str, action: str, timeout: float, ttl: float = TTL) -> lease.Lease:
    return lease.Lease(SecretStore(host), PREFIX, key, action, timeout, ttl)


def is_lock(name: str) -> bool:
    return name.startswith(PREFIX)
