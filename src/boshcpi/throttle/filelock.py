"""The Go LXD CPI's `create_vm_lock`: an flock on one file, so one create_vm runs at a time on a host
(a2geek/bosh-lxd-cpi-release `server.create_vm_lock`). boshcpi's throttle does the same with a limit;
this keeps the Go property working as it did."""

from __future__ import annotations

import os
import time

from boshcpi import log
from boshcpi.protocol import CloudError


class FileLock:
    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> FileLock:
        import fcntl

        from boshcpi.throttle.lockdir import usable_dir

        folder = usable_dir(os.path.dirname(self.path) or ".")
        if folder != os.path.dirname(self.path):
            log.warn(f"create_vm lock: cannot make {os.path.dirname(self.path)}; locking in {folder}")
            self.path = os.path.join(folder, os.path.basename(self.path))
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self.fd)
                    self.fd = -1
                    raise CloudError(
                        f"create_vm: waited {self.timeout:.0f}s for the create_vm lock {self.path}", ok_to_retry=True
                    ) from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1
            log.debug(f"released {self.path}")
