"""`boshcpi doctor --config PATH [--json]`: preflight checks of the host the config names.

The driver checks its IaaS (connection and trust, pools, networks, VM support, ...); this command adds
the throttle server's check and owns the output: a table of OK / WARN / FAIL, each not-OK row with a
one-line fix. Exits 1 on any FAIL; a check that cannot run is a FAIL row, never a traceback.
"""

from __future__ import annotations

import os
import sys

from boshcpi.report import FAIL, OK, WARN, Check

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.config import Config


def throttle_check(cfg: Config) -> Check:
    from boshcpi.throttle.client import server_status

    path = cfg.throttle_config.path
    try:
        return Check("throttle", OK, f"server at {path}: {server_status(path)[:80]}")
    except OSError as e:
        return Check(
            "throttle",
            WARN,
            f"no server at {path} ({e.strerror or e})",
            "start `boshcpi throttle` (the job's process); CPIs fall back to flock slots meanwhile",
        )


def run_checks(cfg: Config) -> list[Check]:
    from boshcpi import drivers

    try:
        checks = drivers.doctor_checks(cfg)
    except Exception as e:
        message = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
        checks = [Check("connection", FAIL, str(message).splitlines()[0], "check the config's server/libvirt URL")]
    if cfg.throttle_config.enabled:
        checks.append(throttle_check(cfg))
    return checks


def table(checks: list[Check]) -> str:
    rows = [("CHECK", "STATUS", "DETAIL")] + [
        (c.name, c.status, c.detail + (f"  -> {c.fix}" if c.fix else "")) for c in checks
    ]
    w0 = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w0}}  {r[1]:<6}  {r[2]}" for r in rows)


def main(argv: list[str]) -> int:
    import argparse
    import json

    from boshcpi import config as cfgmod
    from boshcpi import log
    from boshcpi.protocol import BoshError

    p = argparse.ArgumentParser(prog="boshcpi doctor", description=__doc__)
    p.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = cfgmod.load(args.config)
        for secret in cfgmod.secrets_of(cfg):
            log.add_secret(secret)
        checks = run_checks(cfg)
    except BoshError as e:
        checks = [Check("config", FAIL, e.message, "fix the config file (boshcpi check-config)")]
    checks = [Check(c.name, c.status, log.redact(c.detail), c.fix) for c in checks]
    if args.json:
        sys.stdout.write(json.dumps([c.as_dict() for c in checks], indent=2) + "\n")
    else:
        sys.stdout.write(table(checks) + "\n")
    return 1 if any(c.status == FAIL for c in checks) else 0
