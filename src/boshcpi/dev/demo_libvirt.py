"""`make demo DRIVER=libvirt`: the lifecycle on libvirt with a test stemcell that really boots
(domain type qemu, so it runs without KVM), showing what the guest read from its config drive."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from boshcpi.dev import bootimage, stemcells
from boshcpi.dev.calls import cpi as _cpi
from boshcpi.dev.calls import quiet as _quiet


def run(tmp: Path, built: dict[str, Path]) -> None:
    boot = stemcells.build_boot_stemcell(Path("/var/tmp/boshcpi-stemcells"))
    console_dir = tmp / "console"
    cfg = {
        "driver": "libvirt",
        "libvirt": {
            "uri": "qemu:///system",
            "domain_type": "qemu",
            "storage_pool_name": "boshcpi-test",
            "network_name": "boshcpi-test-net",
            "console_log_dir": str(console_dir),
        },
        "agent": {"mbus": "nats://demo:demo-password@10.245.30.11:4222"},
    }
    config = tmp / "cpi.json"
    config.write_text(json.dumps(cfg))
    print("\nlifecycle on libvirt (domain type qemu):\n")
    stemcell = vm = disk = None
    try:
        _cpi(config, "info")
        stemcell = _cpi(config, "create_stemcell", str(boot / "image"), stemcells.cloud_properties(boot))
        net = {
            "default": {
                "type": "manual",
                "ip": "10.245.30.50",
                "netmask": "255.255.255.0",
                "gateway": "10.245.30.1",
                "dns": [],
                "default": ["dns", "gateway"],
                "cloud_properties": {},
            }
        }
        vm, _ = _cpi(
            config, "create_vm", "demo-agent", stemcell, {"cpus": 1, "memory": 256, "ephemeral_disk": 64}, net, [], {}
        )
        log = console_dir / f"{vm}.console.log"
        text = _wait(log, "boshcpi-test-image: done")
        settings: Any = bootimage.settings_from_console(text)
        print(
            f"\n  the guest booted and read agent_id={settings['agent_id']!r} "
            f"mac={settings['networks']['default']['mac']} from its config drive\n"
        )
        disk = _cpi(config, "create_disk", 64, {}, vm)
        _cpi(config, "attach_disk", vm, disk)
        snap = _cpi(config, "snapshot_disk", disk, {})
        _cpi(config, "resize_disk", disk, 128)
        _cpi(config, "detach_disk", vm, disk)
        _cpi(config, "delete_snapshot", snap)
        _cpi(config, "delete_disk", disk)
        disk = None
        _cpi(config, "delete_vm", vm)
        vm = None
        _cpi(config, "delete_stemcell", stemcell)
        stemcell = None
    finally:
        if vm:
            _quiet(config, "delete_vm", vm)
        if disk:
            _quiet(config, "delete_disk", disk)
        if stemcell:
            _quiet(config, "delete_stemcell", stemcell)


def _wait(path: Path, needle: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if needle in text:
            return text
        time.sleep(0.5)
    raise SystemExit(f"demo: the VM did not boot within {timeout}s (console: {path})")
