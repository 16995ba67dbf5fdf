"""The CPI's side of the throttle: a lease around each heavy call.

With `throttle_config.enabled`, the CPI asks the lease server on `throttle_config.path` and holds
the connection for the call; if the server is unreachable it takes a flock slot from the same slot
directory the server uses (so the limit holds either way) and says so on stderr.
"""

from __future__ import annotations

import _socket
import os
import time

from boshcpi import fastjson, log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from boshcpi.config import Config


def _trace(event: str, method: str) -> None:
    """BOSHCPI_THROTTLE_TRACE=<file>: append enter/exit times (used by the concurrency tests)."""
    path = os.environ.get("BOSHCPI_THROTTLE_TRACE")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {time.time():.6f} {os.getpid()} {method}\n".encode())
        finally:
            os.close(fd)


class Lease:
    """Context manager: holds a throttle lease (server or flock slot) for the duration of a call."""

    def __init__(self, socket_path: str, limit: int, wait_timeout: float, method: str) -> None:
        self.socket_path, self.limit, self.wait_timeout, self.method = socket_path, limit, wait_timeout, method
        self._sock = None
        self._fd = -1
        self._stop_renewing: object = None

    def _from_server(self) -> bool:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(2)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            return False
        sock.settimeout(self.wait_timeout)
        try:
            sock.sendall(fastjson.dumps({"op": "acquire", "id": f"{os.getpid()}:{self.method}"}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                buf += chunk
            reply = fastjson.loads(buf) if buf.strip() else {}
        except (OSError, ValueError) as e:
            sock.close()
            log.warn(f"throttle server at {self.socket_path} failed ({e}); using the flock fallback")
            return False
        if not reply.get("granted"):
            sock.close()
            log.warn(f"throttle server refused ({reply.get('error', 'no answer')}); using the flock fallback")
            return False
        self._sock = sock
        if reply.get("waited", 0) > 0.5:
            log.info(f"throttle: waited {reply['waited']:.1f}s for lease {reply.get('lease')}")
        hold = reply.get("hold")
        if isinstance(hold, (int, float)) and hold > 0:
            self._keep_renewing(sock, float(hold))
        return True

    def _keep_renewing(self, sock: object, hold: float) -> None:
        """Renew the lease every third of its hold while the call runs: a large create_stemcell or a
        slow create_vm outlasts any sensible hold, and a lease reclaimed mid-call stops the limit from
        holding. A daemon thread: it ends with the call (the socket closes) or the process."""
        import threading

        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(max(hold / 3, 0.05)):
                try:
                    sock.sendall(b'{"op": "renew"}\n')  # type: ignore[attr-defined]
                except OSError:
                    return

        self._stop_renewing = stop
        threading.Thread(target=renew, name="boshcpi-lease-renew", daemon=True).start()

    def __enter__(self) -> Lease:
        if not self._from_server():
            from boshcpi.throttle.slots import Slots, slot_dir

            log.warn(f"throttle server {self.socket_path} not reachable: using flock slots (limit {self.limit})")
            start = time.monotonic()
            slots = Slots(self.socket_path, self.limit)
            if slots.dir != slot_dir(self.socket_path):
                log.warn(f"throttle: cannot make {slot_dir(self.socket_path)}; slots in {slots.dir}")
            try:
                _, self._fd = slots.acquire(timeout=self.wait_timeout)
            except TimeoutError as e:
                from boshcpi.protocol import CloudError

                raise CloudError(f"throttle: {e}", ok_to_retry=True) from None
            waited = time.monotonic() - start
            if waited > 0.5:
                log.info(f"throttle: waited {waited:.1f}s for a slot")
        _trace("enter", self.method)
        return self

    def __exit__(self, *exc: object) -> None:
        _trace("exit", self.method)
        if self._stop_renewing is not None:
            self._stop_renewing.set()  # type: ignore[attr-defined]
            self._stop_renewing = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd >= 0:
            from boshcpi.throttle.slots import Slots

            Slots.release(self._fd)
            self._fd = -1


def lease_for(cfg: Config) -> Callable[[str], Lease]:
    tc = cfg.throttle_config
    wait = max(cfg.operation_timeout, cfg.throttle_hold * 4)

    def make(method: str) -> Lease:
        return Lease(tc.path, tc.limit, wait, method)

    return make


def server_status(path: str, timeout: float = 2.0) -> str:
    """The lease server's `status` reply (one line), or raise OSError when none answers at `path`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b'{"op": "status"}\n')
        reply = sock.recv(65536)
        return reply.decode(errors="replace").strip()
    finally:
        sock.close()
