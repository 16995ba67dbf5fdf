"""A process that takes one of the CPI's daemon-held locks, as a CPI call does, for the lock tests:

    python -m tests.lockworker CONFIG KEY ROUNDS HOLD TTL [START_AT]

It takes the lock of KEY through the driver the config names (LXDHost.lock / the libvirt driver's
locks.lock), holds it HOLD seconds (the critical section, recorded by boshcpi.lease's test hook in
$BOSHCPI_TEST_LOCK_DIR), releases it, ROUNDS times. START_AT (a CLOCK_MONOTONIC time) lines several
workers up to start at once. Prints `ok <rounds>` at the end."""

from __future__ import annotations

import sys
import time


def main() -> int:
    config, key, rounds, hold, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    start_at = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    from boshcpi import config as cfgmod

    cfg = cfgmod.load(config)
    if cfg.driver == "libvirt":
        from boshcpi.drivers.libvirt import locks
        from boshcpi.drivers.libvirt.host import LibvirtHost

        host = LibvirtHost(cfg)

        def take():
            return locks.lock(host, key, "lock test", 300.0, ttl)
    else:
        from boshcpi.drivers.lxd.host import LXDHost

        host = LXDHost(cfg)

        def take():
            return host.lock(key, "lock test", timeout=300.0, ttl=ttl)

    _ = host.pool if cfg.driver == "libvirt" else host.client.server  # connect before the start line
    while time.monotonic() < start_at:
        time.sleep(0.001)
    for _ in range(rounds):
        with take():
            time.sleep(hold)
    print(f"ok {rounds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
