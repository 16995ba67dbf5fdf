"""`boshcpi cleanup --config PATH [--apply] [--older-than 15m] [--json]`: find and remove orphans.

An orphan is something the CPI (or the Go CPI it replaces) made that belongs to nothing alive: the
driver says which (its `Cleaner`), this command owns the output. Persistent disks, snapshots and
anything without the CPIs' marks are never touched. Without `--apply` it only lists. Exit status: 0,
or 1 when an `--apply` removal failed, 2 when the host cannot be reached or the config is broken
(one line with a fix, never a traceback).
"""

from __future__ import annotations

import os
import sys

from boshcpi.report import Orphan, one_line_error


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if age >= size:
            return f"{age / size:.0f}{unit}"
    return f"{age:.0f}s"


def table(orphans: list[Orphan], applied: bool) -> str:
    rows = [("KIND", "NAME", "AGE", "ACTION", "REASON")]
    for o in orphans:
        action = ("removed" if o.removed else f"FAILED: {o.error}") if applied else "would remove"
        rows.append((o.kind, o.name, _fmt_age(o.age), action, o.reason))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse
    import json

    from boshcpi import config as cfgmod
    from boshcpi import drivers, log

    p = argparse.ArgumentParser(
        prog="boshcpi cleanup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    p.add_argument("--apply", action="store_true", help="remove what is listed (default: list only)")
    p.add_argument("--older-than", default="15m", help="only objects at least this old (default 15m)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    cleaner = None
    try:
        cfg = cfgmod.load(args.config)
        for secret in cfgmod.secrets_of(cfg):
            log.add_secret(secret)
        older = cfgmod.parse_duration(args.older_than, "--older-than")
        cleaner = drivers.make_cleaner(cfg)
        orphans = cleaner.find(older)
        if args.apply:
            for o in orphans:
                cleaner.remove(o)
    except Exception as e:
        sys.stderr.write(log.redact(one_line_error("cleanup", e, drivers.connection_fix(args.config))) + "\n")
        return 2
    finally:
        if cleaner is not None:
            cleaner.close()
    if args.json:
        sys.stdout.write(
            json.dumps({"applied": args.apply, "orphans": [o.as_dict() for o in orphans]}, indent=2) + "\n"
        )
    elif orphans:
        sys.stdout.write(table(orphans, args.apply) + "\n")
        if not args.apply:
            sys.stdout.write(f"{len(orphans)} orphan(s); run with --apply to remove them\n")
    else:
        sys.stdout.write("no orphans\n")
    return 1 if args.apply and any(not o.removed for o in orphans) else 0
