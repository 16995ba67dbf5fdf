"""The real BOSH binaries the tests, benchmarks and demos use (never shipped with boshcpi): found
through an environment variable, then PATH, then `../shared/tools/` beside the project (or beside the
clone's origin, for a fresh clone made elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

TOOLS = {
    "bosh": "BOSH_CLI",
    "bosh-agent": "BOSH_AGENT_BIN",
    "go-lxd-cpi": "GO_LXD_CPI",
    "go-libvirt-cpi": "GO_LIBVIRT_CPI",
}


def _origin() -> Path | None:
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None
    if url.startswith("file://"):
        url = url[len("file://") :]
    return Path(url) if url.startswith("/") else None


def find_tool(name: str) -> Path | None:
    var = TOOLS[name]
    if os.environ.get(var):
        path = Path(os.environ[var])
        return path if path.is_file() and os.access(path, os.X_OK) else None
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    for base in (ROOT, _origin()):
        if base is None:
            continue
        candidate = base.parent / "shared" / "tools" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_reason(name: str) -> str:
    return f"not run: no {name} (set {TOOLS[name]}, put it on PATH, or ../shared/tools/{name})"


# The Go CPI's own templates, as its manifests/libvirt-qemu-vars.yml writes them (Go text/template).
GO_LIBVIRT_TEMPLATES = {
    "DiskDeviceXml": """<disk type='file' device='{{.Device}}'>
  <driver name='qemu' type='raw' cache='none'/>
  <source file='{{.TargetPath}}'/>
  <target dev='{{.TargetDevice}}' bus='{{.TargetBus}}'/>
</disk>""",
    "StorageVolXml": """<volume>
  <name>{{.Name}}</name>
  <allocation unit="G">0</allocation>
  <capacity unit="{{.Unit}}">{{.Size}}</capacity>
</volume>""",
    "ManualNetworkInterfaceXml": """<interface type='network'>
  <source network='{{.NetworkName}}'/>
  <mac address='{{.MacAddress}}'/>
  <model type='virtio'/>
</interface>""",
    "VmDomainXml": """<domain type='qemu'>
  <name>{{.Name}}</name>
  <uuid>{{.UUID}}</uuid>
  <memory unit='MiB'>{{.Memory}}</memory>
  <vcpu>{{.CPU}}</vcpu>
  <os><type>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>restart</on_crash>
  <devices><serial type='pty'><target port='0'/></serial></devices>
</domain>""",
}


class GoLibvirtCPI:
    """The Go libvirt CPI with the config its job template renders for a socket connection to this
    host's libvirtd, domain type qemu, on `pool` and the test network."""

    def __init__(self, binary: Path, pool: str, tmp: Path, connection: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.config = tmp / f"go-libvirt-{pool}.json"
        self.config.write_text(
            json.dumps(
                {
                    "Settings": {**GO_LIBVIRT_TEMPLATES, "NetworkName": "boshcpi-test-net", "StoragePoolName": pool},
                    "Stemcell": {
                        "Formats": ["openstack-raw"],
                        "Type": "ConfigDrive",
                        "Label": "config-2",
                        "MetadataPath": "ec2/latest/meta-data.json",
                        "UserdataPath": "ec2/latest/user-data",
                    },
                    "Connection": connection or {"Type": "socket", "Socket": "/var/run/libvirt/libvirt-sock"},
                    "Agent": {"Mbus": "nats://nats:mbus-s3cret-pw@10.245.30.11:4222", "NTP": []},
                    "VMPublicKey": "",
                    "Throttle": {"Name": "noop"},
                }
            )
        )

    def command(self) -> list[str]:
        return [str(self.binary), "-configPath", str(self.config), "-logLevel", "ERROR"]
