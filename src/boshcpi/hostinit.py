"""`boshcpi init --config PATH [driver options]`: set up the host the config names, idempotently.

The driver knows the steps (LXD/Incus: storage pool, bridge, project, profile, certificate trust) and
its options; this command owns the output: each step `created`, `updated` or `unchanged`, and a
second run changes nothing and says so. A failure is one line with a fix, never a traceback.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import argparse

    from boshcpi import config as cfgmod
    from boshcpi import drivers, log
    from boshcpi.protocol import BoshError
    from boshcpi.report import one_line_error

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    known, _ = pre.parse_known_args(argv)
    try:
        cfg = cfgmod.load(known.config)
    except BoshError as e:
        sys.stderr.write(f"init: {e.message}\n")
        return 2
    for secret in cfgmod.secrets_of(cfg):
        log.add_secret(secret)
    part = drivers.host_init(cfg)
    if part is None:
        sys.stderr.write(f"init: the {cfg.driver} driver has no host set-up; see README for its requirements\n")
        return 2
    p = argparse.ArgumentParser(
        prog="boshcpi init", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=known.config)
    part.add_arguments(p)
    args = p.parse_args(argv)
    try:
        what, steps = part.run(cfg, args)
    except Exception as e:
        sys.stderr.write(log.redact(one_line_error("init", e, drivers.connection_fix(known.config))) + "\n")
        return 1
    print(what)
    for step in steps:
        print(step)
    changed = [st for st in steps if st.result != "unchanged"]
    print(f"{len(changed)} change(s)" if changed else "nothing to change: the host is set up")
    return 0
