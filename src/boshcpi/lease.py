"""Locks held in a daemon (LXD/Incus profiles, libvirt volumes) that one holder holds: the protocol,
whatever the store. Each driver gives a `Store` (drivers/lxd/locks.py, drivers/libvirt/locks.py).

The only operation both daemons make atomic is creating an object under a name that must be unique
(of ten concurrent creates exactly one succeeds); an ETag check and the write it guards are two steps
in LXD and Incus, and libvirt versions nothing. So:

- **Acquire**: create the gate `<prefix><key>`, its record naming a random token (the holder's for
  this hold), the holder's process identity and the time it was written. Exactly one creator wins.
- **Renew**: while the call runs, a thread rewrites the record every third of the TTL (on a
  connection of its own), after checking that the gate still names its token; a gate that names
  another token means the hold was lost, which is logged and kept: the release then deletes nothing.
- **Stale**: a gate is stale when its holder is known gone (the same kernel and PID namespace, and
  that process no longer exists: `identity()`), when its record is older than its TTL by the
  daemon's own clock (the store's `age`: the `Date` header against the time the holder wrote from it,
  or a volume's timestamps against the daemon's), or when a waiter has seen the same record, not
  renewed, for longer than the TTL on its own monotonic clock. No machine's wall clock is compared
  with another's.
- **Take over** a stale gate: create the claim `<gate>.c-<its token>-1` (atomic: of several takers
  one wins), read the gate again, and delete it only if it still names that token; then the claim
  goes. A claim whose own creator is gone (killed between its claim and its delete) is passed over
  with the next number, `-2`, and so on, so a killed taker never blocks the lock for good. A gate is
  deleted only by the one who created its live claim, or by its holder within its lease, so two
  takers never both proceed, and no taker deletes a gate created after the one it judged.
- **Release**: within the lease (less than TTL minus a margin since the last renewal began, by the
  holder's monotonic clock) no taker can have judged the gate stale, and the holder deletes it; a
  holder later than that claims its own gate first, as a taker would, and deletes it only if it still
  names its token.

A test switch (`BOSHCPI_TEST_LOCK_DIR`, with the fault hooks enabled) records every entry and exit of
a critical section in that folder, so a test can prove no two holders were ever inside at once.
"""

from __future__ import annotations

import os
import time

from boshcpi import log
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    class Store(Protocol):
        """One daemon's lock objects. `record` strings are short single-line ASCII."""

        def create(self, name: str, record: str) -> bool:
            """Create `name` holding `record`; False if the name exists (the daemon's atomic create)."""

        def read(self, name: str) -> tuple[str, float | None] | None:
            """(record, the daemon's clock when it answered, or None if it does not say); None if
            there is no such object."""

        def rewrite(self, name: str, record: str) -> None: ...

        def delete(self, name: str) -> bool:
            """True if deleted, False if it was gone."""

        def daemon_time(self) -> float | None:
            """The daemon's clock now, as best known without a request (None: unknown)."""

        def fork(self) -> Store:
            """The same store on a connection of its own (the renewal thread's)."""

        def close(self) -> None: ...


MARK = "boshcpi-lease"
DEFAULT_TTL = 120.0
MARGIN = 10.0  # seconds of a lease the holder never counts on (request latency, clock granularity);
# a quarter of it for a TTL under 40 s


def _read_text(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the PID, it
    names one process for the life of a kernel (a PID is reused, a PID and start time are not)."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] == "Z":  # a zombie is gone, only not yet reaped
        return ""
    return fields[19]


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").split("[")[-1].rstrip("]")
    except OSError:
        return "?"


_IDENTITY: str | None = None


def identity() -> str:
    """This process, named so that no two processes anywhere share it: the kernel's boot id (one per
    boot of one machine; containers share their host's), the PID namespace (containers and their
    host differ), the PID and its start time. A hostname and a PID, as before, two containers can share."""
    global _IDENTITY
    if _IDENTITY is None:
        boot = _read_text("/proc/sys/kernel/random/boot_id").replace("-", "") or "?"
        _IDENTITY = f"{boot}/{_pid_namespace()}/{os.getpid()}/{_start_ticks(os.getpid()) or '?'}"
    return _IDENTITY


def holder_gone(ident: str) -> bool:
    """True only when the holder ran under this kernel, in this PID namespace, and that process is no
    longer there; anything else (another machine, another namespace, unreadable) is not known gone."""
    parts = ident.split("/")
    if len(parts) != 4 or "?" in parts:
        return False
    mine = identity().split("/")
    if parts[:2] != mine[:2]:
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    return _start_ticks(pid) != parts[3]


def new_token() -> str:
    return os.urandom(8).hex()


def format_record(token: str, ttl: float, written: float | None, action: str, renewal: int = 0) -> str:
    """`boshcpi-lease <token> <identity> <ttl> <written>+<renewal> <action>`: `written` the daemon's
    time (or ?) and `renewal` a count, so that each renewal changes the record a waiter watches."""
    w = f"{written:.0f}" if written is not None else "?"
    return f"{MARK} {token} {identity()} {ttl:.0f} {w}+{renewal} {'_'.join(action.split()) or '-'}"


def parse_record(record: str) -> dict[str, Any]:
    """The holder a record names. Anything else (an older boshcpi's lock, a record still being
    written) names an unknown holder with the default TTL, and a token that names that record."""
    parts = record.split(maxsplit=5)
    if len(parts) == 6 and parts[0] == MARK:
        try:
            ttl = float(parts[3])
            w = parts[4].split("+", 1)[0]
            written = None if w == "?" else float(w)
            return {"token": parts[1], "identity": parts[2], "ttl": ttl, "written": written, "action": parts[5]}
        except ValueError:
            pass
    import hashlib

    return {
        "token": "x" + hashlib.sha1(record.encode()).hexdigest()[:15],
        "identity": "?",
        "ttl": DEFAULT_TTL,
        "written": None,
        "action": "an older boshcpi" if record else "a holder still writing its record",
    }


def claim_name(gate: str, token: str, n: int) -> str:
    return f"{gate}.c-{token}-{n}"


def is_claim(name: str) -> bool:
    return ".c-" in name


def claim_target(name: str) -> tuple[str, str] | None:
    """(gate, token) of a claim's name."""
    gate, sep, rest = name.rpartition(".c-")
    token, _, n = rest.rpartition("-")
    return (gate, token) if sep and token and n.isdigit() else None


def stale(record: str, daemon_now: float | None, unchanged_for: float = 0.0, age: float | None = None) -> str:
    """Why a gate or claim with this record is stale, or "" while its holder may still be at work.
    `age`: how long ago the object was last written, by the daemon's clock, where the store can tell
    it (a volume's timestamps) rather than the record (the `Date` its writer knew)."""
    holder = parse_record(record)
    if holder_gone(holder["identity"]):
        return "its holder is gone"
    if age is None and daemon_now is not None and holder["written"] is not None:
        age = daemon_now - holder["written"]
    if age is not None and age > holder["ttl"]:
        return f"not renewed for {age:.0f}s by the daemon's clock"
    if unchanged_for > holder["ttl"]:
        return f"not renewed while this call waited {unchanged_for:.0f}s"
    return ""


def leftovers(
    records: dict[str, tuple[str, float | None]], ages: dict[str, float | None] | None = None
) -> list[tuple[str, str, float | None]]:
    """(name, why, age) of the stale gates among `records` (name -> (record, daemon clock)), and of
    the claims a killed taker left or whose gate is gone: what `cleanup` removes."""
    out = []
    for name, (record, now) in records.items():
        holder = parse_record(record)
        age = (ages or {}).get(name)
        if age is None and now is not None and holder["written"] is not None:
            age = max(0.0, now - holder["written"])
        target = claim_target(name) if is_claim(name) else None
        if target is not None:
            gate = records.get(target[0])
            if gate is None or parse_record(gate[0])["token"] != target[1]:
                out.append((name, "a claim on a lock that is gone", age))
            elif stale(record, now, age=age):
                out.append((name, "a claim its taker left (killed)", age))
            continue
        why = stale(record, now, age=age)
        if why:
            out.append((name, f"a lock held by {holder['action']}: {why}", age))
    return out


def remove_leftover(store: Store, name: str, age: Callable[[str], float | None] | None = None) -> None:
    """Remove what `leftovers` found, judged again just before; a gate only through the takeover
    protocol (its claim), so a lock a live call took meanwhile is never removed."""
    got = store.read(name)
    if got is None:
        return
    current = age(name) if age is not None else None
    target = claim_target(name) if is_claim(name) else None
    if target is not None:
        gate = store.read(target[0])
        if gate is None or parse_record(gate[0])["token"] != target[1] or stale(got[0], got[1], age=current):
            store.delete(name)
        return
    why = stale(got[0], got[1], age=current)
    if why:
        take_over(store, name, parse_record(got[0])["token"], new_token(), why, "cleanup")


def take_over(store: Store, gate: str, token: str, me: str, why: str, action: str) -> bool | None:
    """Delete the gate naming `token`, as the one taker that claims it: True when this call did (or
    found it gone), False when the gate names another token now, None when a live claim of another
    taker stands (its outcome is to wait for)."""
    n = 1
    while True:
        claim = claim_name(gate, token, n)
        if store.create(claim, format_record(me, DEFAULT_TTL, store.daemon_time(), "claim")):
            break
        got = store.read(claim)
        if got is None:
            continue  # its taker finished meanwhile: claim it again
        if not stale(got[0], got[1]):
            return None
        n += 1  # its taker was killed: pass it over
    try:
        again = store.read(gate)
        if again is None:
            return True
        if parse_record(again[0])["token"] != token:
            return False
        log.warn(f"{action}: taking over {gate} ({why})")
        store.delete(gate)
        return True
    finally:
        for k in range(n, 0, -1):
            store.delete(claim_name(gate, token, k))


def _test_hook(event: str, key: str, token: str) -> None:
    """Test-only: record entries and exits of the critical section (see the module docstring)."""
    folder = os.environ.get("BOSHCPI_TEST_LOCK_DIR")
    if not folder or not os.environ.get("BOSHCPI_TEST_FAULTS"):
        return
    line = f"{time.monotonic():.6f} {event} {key} {token} {os.getpid()}\n"
    fd = os.open(os.path.join(folder, "events"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class Lease:
    """`with Lease(store, prefix, key, action, timeout, ttl):` the work on `key` runs with no other holder."""

    def __init__(self, store: Store, prefix: str, key: str, action: str, timeout: float, ttl: float) -> None:
        self.store, self.key, self.action, self.timeout = store, key, action, timeout
        self.ttl = ttl
        self.margin = min(MARGIN, ttl / 4)
        self.gate = prefix + key
        self.token = ""
        self.held = False
        self.lost = False
        self._renewed_at = 0.0  # monotonic start of the request that last wrote our record
        self._stop: Any = None
        self._done: Any = None

    # ---- acquire ------------------------------------------------------------------------------
    def __enter__(self) -> Lease:
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        seen: tuple[str, float] | None = None  # (record, when first seen unchanged)
        while True:
            self.token = new_token()
            started = time.monotonic()
            if self.store.create(self.gate, format_record(self.token, self.ttl, self.store.daemon_time(), self.action)):
                self.held = True
                self._renewed_at = started
                _test_hook("enter", self.key, self.token)
                self._start_renewal()
                return self
            got = self.store.read(self.gate)
            if got is None:
                continue  # released meanwhile
            record, daemon_now = got
            now = time.monotonic()
            if seen is None or seen[0] != record:
                seen = (record, now)
            why = stale(record, daemon_now, now - seen[1])
            if why:
                self._take_over(record, why)
                seen = None
                continue
            if now >= deadline:
                raise CloudError(
                    f"{self.action}: {self.key} is busy with another CPI call ({parse_record(record)['action']})",
                    ok_to_retry=True,
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _take_over(self, record: str, why: str) -> None:
        take_over(self.store, self.gate, parse_record(record)["token"], self.token, why, self.action)

    # ---- renew --------------------------------------------------------------------------------
    def _start_renewal(self) -> None:
        import _thread

        stop, done = _thread.allocate_lock(), _thread.allocate_lock()
        stop.acquire()
        done.acquire()
        self._stop, self._done = stop, done
        _thread.start_new_thread(self._renew_loop, (stop, done))

    def _renew_loop(self, stop: Any, done: Any) -> None:
        store = None
        renewal = 0
        try:
            while not stop.acquire(True, self.ttl / 3):
                if store is None:
                    store = self.store.fork()
                started = time.monotonic()
                got = store.read(self.gate)
                if got is None or parse_record(got[0])["token"] != self.token:
                    self.lost = True
                    log.warn(f"{self.action}: the lock of {self.key} was taken from this call")
                    return
                renewal += 1
                store.rewrite(self.gate, format_record(self.token, self.ttl, store.daemon_time(), self.action, renewal))
                self._renewed_at = started
        except Exception as e:  # the next renewal, or the release, sees what became of it
            log.warn(f"{self.action}: renewing the lock of {self.key} failed: {e}")
        finally:
            if store is not None:
                store.close()
            done.release()

    # ---- release ------------------------------------------------------------------------------
    def __exit__(self, *exc: object) -> None:
        if not self.held:
            return
        self.held = False
        if self._stop is not None:
            # The renewal thread ends before the gate goes: a rewrite after the delete could land
            # on the next holder's gate.
            self._stop.release()
            self._done.acquire(True, 120)
        _test_hook("exit", self.key, self.token)
        try:
            if self.lost:
                return
            if time.monotonic() - self._renewed_at < self.ttl - self.margin:
                self.store.delete(self.gate)
                return
            # Late: a taker may have judged the gate stale. Claim it as a taker would.
            done = take_over(self.store, self.gate, self.token, self.token, "released late", self.action)
            if done is not True:
                log.warn(f"{self.action}: the lock of {self.key} was taken over before this call released it")
        except Exception as e:  # the call's own outcome stands; the gate goes stale in time
            log.warn(f"{self.action}: cannot release the lock of {self.key} ({e}); it expires in {self.ttl:.0f}s")
