"""`make demo` / `python -m boshcpi.dev.demo`: a director-like lifecycle on the local host.

Each step runs the real `boshcpi cpi` process with one JSON request, as a director would, and
prints the call and its duration. Everything the demo makes lives in its own project and is
removed at the end, also when a step fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from boshcpi.dev.calls import cpi as _cpi
from boshcpi.dev.calls import quiet as _quiet

DEMO_PROJECT = "boshcpi-demo"


def _lxd_config(kind: str, tmp: Path) -> Path:
    # The project, its profile, the pool and the bridge come from `boshcpi init` (run first).
    cfg = {
        "server": {
            "type": kind,
            "project_name": DEMO_PROJECT,
            "storage_pool_name": "boshcpi-btrfs",
            "network_name": "boshcpi-lxdbr0" if kind == "lxd" else "boshcpi-incbr0",
        },
        "agent": {"mbus": "nats://demo:demo-password@10.245.0.11:4222", "ntp": ["10.245.0.1"]},
    }
    path = tmp / "cpi.json"
    path.write_text(json.dumps(cfg))
    return path


def lifecycle(config: Path, stemcell_dir: Path, subnet: str, show: list[str]) -> None:
    from boshcpi.dev import stemcells

    vm = disk = snap = stemcell = None
    try:
        _cpi(config, "info")
        stemcell = _cpi(
            config, "create_stemcell", str(stemcell_dir / "image"), stemcells.cloud_properties(stemcell_dir)
        )
        net = {
            "default": {
                "type": "manual",
                "ip": f"{subnet}.50",
                "netmask": "255.255.255.0",
                "gateway": f"{subnet}.1",
                "dns": [f"{subnet}.1"],
                "default": ["dns", "gateway"],
                "cloud_properties": {},
            }
        }
        vm, _ = _cpi(
            config,
            "create_vm",
            "demo-agent",
            stemcell,
            {"instance_type": "c1-m1", "ephemeral_disk": 256},
            net,
            [],
            {"bosh": {"group": "demo"}},
        )
        _cpi(config, "has_vm", vm)
        _cpi(
            config,
            "set_vm_metadata",
            vm,
            {"director": "demo", "deployment": "demo", "job": "web", "index": "0", "name": "web/0"},
        )
        print()
        subprocess.run([*show, "list", "-c", "nsd4t"], check=False)
        print()
        disk = _cpi(config, "create_disk", 64, {}, vm)
        _cpi(config, "attach_disk", vm, disk)
        _cpi(config, "get_disks", vm)
        snap = _cpi(config, "snapshot_disk", disk, {"deployment": "demo"})
        _cpi(config, "resize_disk", disk, 128)
        _cpi(config, "detach_disk", vm, disk)
        _cpi(config, "delete_snapshot", snap)
        snap = None
        _cpi(config, "delete_disk", disk)
        disk = None
        _cpi(config, "delete_vm", vm)
        vm = None
        _cpi(config, "delete_stemcell", stemcell)
        stemcell = None
    finally:
        # Leave the host clean even when a step failed.
        if snap:
            _quiet(config, "delete_snapshot", snap)
        if vm:
            _quiet(config, "delete_vm", vm)
        if disk:
            _quiet(config, "delete_disk", disk)
        if stemcell:
            _quiet(config, "delete_stemcell", stemcell)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from boshcpi.dev import stemcells

    p = argparse.ArgumentParser(prog="boshcpi demo", description=__doc__)
    p.add_argument("--driver", default=os.environ.get("DRIVER", "lxd"), choices=["lxd", "incus", "libvirt"])
    args = p.parse_args(argv)
    cache = Path(os.environ.get("BOSHCPI_STEMCELL_CACHE", "/var/tmp/boshcpi-stemcells"))
    print(f"building test stemcells in {cache} (Debian packages only)")
    built = stemcells.build_all(cache)
    with tempfile.TemporaryDirectory(prefix="boshcpi-demo-") as tmp:
        if args.driver == "libvirt":
            from boshcpi.dev.demo_libvirt import run as run_libvirt

            run_libvirt(Path(tmp), built)
            return 0
        config = _lxd_config(args.driver, Path(tmp))
        cli = "lxc" if args.driver == "lxd" else "incus"
        subnet = "10.245.10" if args.driver == "lxd" else "10.245.20"
        for step in (
            ["init", "--config", str(config), "--network-cidr", f"{subnet}.1/24", "--pool-size", "12GiB"],
            ["doctor", "--config", str(config)],
        ):
            print(f"\n$ boshcpi {' '.join(step[:1])} --config cpi.json\n", flush=True)
            rc = subprocess.run([sys.executable, "-m", "boshcpi.cli", *step]).returncode
            if rc != 0:
                raise SystemExit(f"demo: boshcpi {step[0]} failed")
        print(f"\nlifecycle on {args.driver}, project {DEMO_PROJECT}:\n")
        lifecycle(config, built["warden"], subnet, [cli, "--project", DEMO_PROJECT])
        subprocess.run([cli, "project", "delete", DEMO_PROJECT], capture_output=True)
    print("\ndemo done: host left clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
