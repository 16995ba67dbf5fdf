"""Locks held in the daemon, for the read-modify-writes concurrent CPI calls must not interleave: a
VM's devices and agent settings (attach_disk, detach_disk, set_vm_metadata) and a disk's config
(resize_disk, set_disk_metadata). They hold across CPI processes and across hosts, since every
director (or `create-env`) talking to one daemon sees the same locks.

An ETag alone is not enough: LXD and Incus check `If-Match` and then write, not atomically, so two
requests carrying the same ETag can both succeed (seen: four concurrent set_disk_metadata calls with
ETags, one tag lost). Creating an object under a fixed name is atomic (a unique key in the daemon's
database: of ten concurrent creates exactly one succeeds), and the cheapest object to create is a
profile (no storage): `boshcpi-lock-<cid>` in the CPI's project, its description naming the holder
and when the lock expires. A killed holder's lock is taken over once it has expired, or at once
where the holder ran on this machine and its process is gone. `cleanup` removes expired ones.
"""

from __future__ import annotations

import _socket
import os
import time

from boshcpi import log
from boshcpi.drivers.lxd.client import LXDError, quote
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.lxd.client import LXDClient

PREFIX = "boshcpi-lock-"
TTL = 120.0  # seconds a lock is good for; the calls it guards take a few seconds
MARK = "boshcpi lock"


def name_of(key: str) -> str:
    return PREFIX + key


def holder_of(description: str) -> tuple[str, int, float] | None:
    """(host, pid, expiry) from a lock profile's description; None for anything else."""
    parts = description.split()
    if len(parts) != 5 or " ".join(parts[:2]) != MARK:
        return None
    try:
        return parts[2], int(parts[3]), float(parts[4])
    except ValueError:
        return None


def is_stale(description: str, now: float | None = None) -> bool:
    holder = holder_of(description)
    if holder is None:
        return False  # not ours to judge
    host, pid, expiry = holder
    if expiry < (now if now is not None else time.time()):
        return True
    if host == _socket.gethostname() and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True  # its holder, on this machine, is gone
        except PermissionError:
            pass
    return False


class DaemonLock:
    """`with DaemonLock(client, key, action, timeout):` the read-modify-write of `key` runs alone."""

    def __init__(self, client: LXDClient, key: str, action: str, timeout: float, ttl: float = TTL) -> None:
        """`ttl`: how long the lock stays good should its holder die on another host (a holder on this
        machine that is gone loses it at once); longer for a call that copies data."""
        self.client, self.key, self.action, self.timeout, self.ttl = client, key, action, timeout, ttl
        self.path = f"/1.0/profiles/{quote(name_of(key), '')}"
        self.held = False

    def __enter__(self) -> DaemonLock:
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        body: dict[str, Any] = {"name": name_of(self.key), "config": {}, "devices": {}}
        while True:
            body["description"] = f"{MARK} {_socket.gethostname()} {os.getpid()} {time.time() + self.ttl:.0f}"
            try:
                self.client.request("POST", "/1.0/profiles", body)
                self.held = True
                return self
            except LXDError as e:
                if "already exists" not in e.message.lower():
                    raise CloudError(f"{self.action}: cannot lock {self.key}: {e.message}", ok_to_retry=True) from None
            try:
                current = self.client.get(self.path) or {}
            except LXDError as e:
                if e.not_found:
                    continue  # released meanwhile
                raise CloudError(f"{self.action}: cannot read the lock of {self.key}: {e.message}") from None
            description = str(current.get("description", ""))
            if is_stale(description):
                log.warn(f"{self.action}: taking over the expired lock of {self.key} ({description})")
                self.client.delete(self.path)
                continue
            if time.monotonic() >= deadline:
                raise CloudError(
                    f"{self.action}: {self.key} is busy with another CPI call ({description})", ok_to_retry=True
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self.held = False
        try:
            self.client.delete(self.path)
        except LXDError as e:
            log.warn(f"{self.action}: cannot release the lock of {self.key} ({e.message}); it expires in time")
