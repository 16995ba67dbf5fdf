"""`boshcpi throttle --config PATH`: the lease server.

Protocol (newline-delimited JSON on a unix socket, one held connection per lease):

    client -> {"op": "acquire", "id": "<pid>:<method>"}
    server -> {"granted": true, "lease": "L7", "slot": 2, "waited": 1.25}     (when it is its turn)
    ... the client does its heavy call ...
    client -> {"op": "renew"}      (every hold/3 seconds while its call runs: the lease is kept)
    client closes the connection (or sends {"op": "release"})  -> the lease is released

    client -> {"op": "status"}
    server -> {"limit": 4, "active": [...], "waiting": n}

Waiters are served in arrival order. A lease is released the moment its connection closes, so a
CPI killed with SIGKILL frees its lease at once; a lease not renewed for `hold` is reclaimed (the
connection is closed and the slot freed) so a hung CPI cannot wedge the host either. A CPI renews its
lease while its call runs (a large create_stemcell takes longer than any sensible hold), up to
MAX_RENEWED_HOLDS holds in all. Leases are
backed by the same flock slots the CPI falls back to when the server is down, so the limit holds
across both. SIGTERM stops accepting, turns waiters away (they fall back to the slots), and exits
when the active leases end or their hold runs out.

Defensive limits: a connection must send its request line within FIRST_LINE_TIMEOUT seconds and in at
most MAX_LINE bytes; every malformed request (not JSON, not an object, an unknown op, a line too long or
too deep) is answered with `{"error": ...}` and closed; at most MAX_CONNECTIONS connections and
MAX_WAITERS queued acquires are kept (beyond them a caller is told so and takes a flock slot itself);
client ids are logged with control characters replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from boshcpi.throttle.slots import Slots

FIRST_LINE_TIMEOUT = 5.0
MAX_LINE = 4096
MAX_CONNECTIONS = 512
MAX_WAITERS = 256
MAX_RENEWED_HOLDS = 30  # a lease renewed for longer than 30 holds (an hour at the default 2m) is reclaimed


def printable(text: object, limit: int = 120) -> str:
    """A client-supplied string as it may appear in a log line: printable ASCII only."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text)[:limit])


def _log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} throttle: {message}\n")
    sys.stderr.flush()


@dataclass
class Lease:
    name: str
    client: str
    writer: asyncio.StreamWriter
    slot: int = -1
    fd: int = -1
    granted_at: float = 0.0
    renewed_at: float = 0.0
    queued_at: float = field(default_factory=time.monotonic)
    granted: asyncio.Event = field(default_factory=asyncio.Event)


class ThrottleServer:
    def __init__(self, path: str, limit: int, hold: float, poll: float = 0.1) -> None:
        self.path, self.limit, self.hold, self.poll = path, limit, hold, poll
        self.slots = Slots(path, limit)
        self.waiting: deque[Lease] = deque()
        self.active: dict[str, Lease] = {}
        self.counter = 0
        self.connections = 0
        self.draining = False
        self.server: asyncio.base_events.Server | None = None

    # ---- lease bookkeeping -------------------------------------------------------------------
    def _grant_waiters(self) -> None:
        while self.waiting and not self.draining:
            got = self.slots.try_acquire()
            if got is None:
                return  # all slots taken (by leases or by CPIs using the fallback)
            lease = self.waiting.popleft()
            lease.slot, lease.fd = got
            lease.granted_at = lease.renewed_at = time.monotonic()
            self.active[lease.name] = lease
            lease.granted.set()

    def _release(self, lease: Lease, why: str) -> None:
        if self.active.pop(lease.name, None) is not None:
            Slots.release(lease.fd)
            held = time.monotonic() - lease.granted_at
            _log(f"{why} {lease.name} ({lease.client}, slot {lease.slot}, held {held:.2f}s)")
        elif lease in self.waiting:
            self.waiting.remove(lease)
        self._grant_waiters()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            now = time.monotonic()
            for lease in list(self.active.values()):
                if now - lease.renewed_at > self.hold or now - lease.granted_at > self.hold * MAX_RENEWED_HOLDS:
                    lease.writer.close()
                    self._release(lease, "reclaimed (hold exceeded)")
            self._grant_waiters()  # fallback users may have freed slots
            if self.draining and not self.active:
                if self.server:
                    self.server.close()
                return

    # ---- connections ------------------------------------------------------------------------
    async def _reply(self, writer: asyncio.StreamWriter, doc: dict) -> None:
        writer.write((json.dumps(doc) + "\n").encode())
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lease: Lease | None = None
        self.connections += 1
        try:
            if self.connections > MAX_CONNECTIONS:
                await self._reply(writer, {"granted": False, "error": "too many connections"})
                return
            try:
                line = await asyncio.wait_for(reader.readline(), FIRST_LINE_TIMEOUT)
            except TimeoutError:
                await self._reply(writer, {"granted": False, "error": f"no request within {FIRST_LINE_TIMEOUT:.0f}s"})
                return
            except (ValueError, asyncio.LimitOverrunError):
                await self._reply(writer, {"granted": False, "error": f"request line over {MAX_LINE} bytes"})
                return
            try:
                req = json.loads(line or b"{}")
            except (ValueError, RecursionError):
                req = None
            if not isinstance(req, dict):
                await self._reply(writer, {"granted": False, "error": "expected a JSON object with an op"})
                return
            op = req.get("op")
            if op == "status":
                status = {
                    "limit": self.limit,
                    "hold": self.hold,
                    "active": [
                        {
                            "lease": lease.name,
                            "client": lease.client,
                            "slot": lease.slot,
                            "held": round(time.monotonic() - lease.granted_at, 3),
                        }
                        for lease in self.active.values()
                    ],
                    "waiting": len(self.waiting),
                }
                writer.write((json.dumps(status) + "\n").encode())
                await writer.drain()
                return
            if op != "acquire":
                await self._reply(writer, {"granted": False, "error": "unknown op"})
                return
            if self.draining:
                await self._reply(writer, {"granted": False, "error": "shutting down"})
                return
            if len(self.waiting) >= MAX_WAITERS:
                await self._reply(writer, {"granted": False, "error": "too many waiters"})
                return
            self.counter += 1
            lease = Lease(name=f"L{self.counter}", client=printable(req.get("id", "?")), writer=writer)
            self.waiting.append(lease)
            self._grant_waiters()
            waiter = asyncio.ensure_future(lease.granted.wait())
            closed = asyncio.ensure_future(reader.read(1))
            done, _ = await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                return  # the client went away while queued
            if self.draining and lease.name not in self.active:
                return
            waited = lease.granted_at - lease.queued_at
            _log(f"granted {lease.name} to {lease.client} (slot {lease.slot}, waited {waited:.2f}s)")
            writer.write(
                (
                    json.dumps(
                        {
                            "granted": True,
                            "lease": lease.name,
                            "slot": lease.slot,
                            "waited": round(waited, 3),
                            "hold": self.hold,
                        }
                    )
                    + "\n"
                ).encode()
            )
            await writer.drain()
            # Held until the client closes or says release; each renew line restarts the hold.
            pending = await closed
            if not pending:
                return
            while True:
                while b"\n" in pending:
                    line, _, pending = pending.partition(b"\n")
                    if b"renew" in line and b"release" not in line:
                        lease.renewed_at = time.monotonic()
                    else:
                        return  # release, or anything else: the lease ends
                if len(pending) > MAX_LINE:
                    return
                data = await reader.read(256)
                if not data:
                    return
                pending += data
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections -= 1
            if lease is not None:
                self._release(lease, "released")
            try:
                writer.close()
            except Exception:
                pass

    def _drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        _log(f"SIGTERM: draining ({len(self.active)} active, {len(self.waiting)} waiting turned away)")
        if self.server:
            self.server.close()
        while self.waiting:
            lease = self.waiting.popleft()
            try:
                lease.writer.write(b'{"granted": false, "error": "shutting down"}\n')
                lease.writer.close()
            except Exception:
                pass
            lease.granted.set()

    async def serve(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._handle, path=self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o660)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._drain)
        loop.add_signal_handler(signal.SIGINT, self._drain)
        _log(f"serving {self.path}: limit {self.limit}, hold {self.hold:.0f}s")
        housekeeping = asyncio.ensure_future(self._housekeeping())
        await housekeeping
        try:
            os.unlink(self.path)
        except OSError:
            pass
        _log("stopped")


def main(argv: list[str]) -> int:
    import argparse

    from boshcpi import config as cfgmod
    from boshcpi.protocol import CpiError

    p = argparse.ArgumentParser(prog="boshcpi throttle", description="Serve throttle leases on a unix socket.")
    p.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    p.add_argument("--path", help="socket path (default: throttle_config.path)")
    p.add_argument("--limit", type=int, help="concurrent leases (default: throttle_config.limit)")
    p.add_argument("--hold", help="longest lease, e.g. 2m (default: throttle_config.hold)")
    args = p.parse_args(argv)
    try:
        cfg = cfgmod.load(args.config)
        hold = cfgmod.parse_duration(args.hold, "--hold") if args.hold else cfg.throttle_hold
    except CpiError as e:
        _log(f"config error: {e.message}")
        return 2
    server = ThrottleServer(args.path or cfg.throttle_config.path, args.limit or cfg.throttle_config.limit, hold)
    asyncio.run(server.serve())
    return 0
