"""Locks held in libvirtd, for the read-modify-writes concurrent CPI calls must not interleave: a
domain's disks and its config drive (attach_disk, detach_disk, set_vm_metadata). libvirt versions
nothing (two attaches would pick the same free target; interleaved config drive writes keep the last
writer's settings and orphan a config volume), so the lock is the one thing libvirtd creates
atomically by name: a storage volume `boshcpi-lock-<key>` (0 bytes) in the CPI's pool. It holds across
processes and across hosts. A killed holder's lock is taken over once older than TTL, judged by
libvirtd's own clock (the lock volume's timestamp against a fresh probe volume's); `cleanup` removes
expired ones.
"""

from __future__ import annotations

import time

from boshcpi import log
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PREFIX = "boshcpi-lock-"
TTL = 120.0
ERR_STORAGE_VOL_EXIST = 90  # virErrorNumber VIR_ERR_STORAGE_VOL_EXIST


class VolumeLock:
    def __init__(self, host: Any, key: str, action: str, timeout: float) -> None:
        """`host`: the driver's LibvirtHost (which makes these; not imported here, so the two modules
        do not import each other)."""
        self.host, self.key, self.action, self.timeout = host, key, action, timeout
        self.name = PREFIX + key
        self.held = False

    def __enter__(self) -> VolumeLock:
        lv = self.host.lv
        xml = (
            f"<volume><name>{self.name}</name><capacity unit='bytes'>0</capacity>"
            "<target><format type='raw'/></target></volume>"
        )
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        while True:
            try:
                self.host.pool.createXML(xml, 0)
                self.held = True
                return self
            except lv.libvirtError as e:
                if e.get_error_code() != ERR_STORAGE_VOL_EXIST:
                    raise self.host.err(e, f"{self.action}: lock {self.key}") from None
            age = self.host.volume_age(self.name)
            if age is not None and age > TTL:
                log.warn(f"{self.action}: taking over the expired lock of {self.key} ({age:.0f}s old)")
                self.host.delete_volume(self.name)
                continue
            if time.monotonic() >= deadline:
                raise CloudError(f"{self.action}: {self.key} is busy with another CPI call", ok_to_retry=True)
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.held = False
            try:
                self.host.delete_volume(self.name)
            except Exception as e:  # the call's own outcome stands; the lock expires after TTL
                log.warn(f"{self.action}: cannot release the lock of {self.key} ({e}); it expires in {TTL:.0f}s")
