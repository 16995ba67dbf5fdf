"""The shared counting semaphore: `limit` slot files, each held by an exclusive flock.

Both the lease server and CPIs that cannot reach it take slots from the same directory, so the
limit holds whether the server runs or not, and mixed. The kernel drops a dead process's flocks, so
a CPI killed with SIGKILL never wedges a slot.
"""

from __future__ import annotations

import fcntl
import os
import time


def slot_dir(socket_path: str) -> str:
    return socket_path + ".slots"


class Slots:
    def __init__(self, socket_path: str, limit: int) -> None:
        from boshcpi.throttle.lockdir import usable_dir

        self.dir = usable_dir(slot_dir(socket_path))
        self.limit = limit

    def try_acquire(self) -> tuple[int, int] | None:
        """(slot, fd) of a free slot, or None when all `limit` are taken."""
        for n in range(self.limit):
            path = os.path.join(self.dir, f"slot-{n}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode())
            return n, fd
        return None

    def acquire(self, timeout: float | None = None, poll: float = 0.05) -> tuple[int, int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            got = self.try_acquire()
            if got is not None:
                return got
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no throttle slot free within {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    @staticmethod
    def release(fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
