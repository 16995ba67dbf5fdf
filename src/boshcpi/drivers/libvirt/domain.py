"""Domain XML: a default template the operator can replace (`libvirt.domain_template`), and the
device snippets it is filled with. Disk slots are static, as in the Go libvirt CPI:

    vda  boot disk: a qcow2 overlay on the stemcell volume (copy-on-write)
    vdb  ephemeral disk
    vdc  config drive (FAT32 or ISO9660, label config-2), read-only
    vdd… persistent disks, in attach order; each carries a 20-character serial so the agent finds it
         under /dev/disk/by-id/virtio-<serial>
"""

from __future__ import annotations

from string import Template
from xml.sax.saxutils import escape, quoteattr

NS = "https://boshcpi.dev/xmlns/vm/1"
NS_PREFIX = "boshcpi"

DEFAULT_TEMPLATE = """<domain type='${domain_type}'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  <title>${title}</title>
  <description>${description}</description>
  <metadata>${metadata}</metadata>
  <memory unit='MiB'>${memory_mb}</memory>
  <vcpu>${cpus}</vcpu>
  <os>
    <type arch='x86_64' machine='${machine}'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  ${cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    ${emulator}
    ${disks}
    ${interfaces}
    <serial type='file'>
      <source path='${console_log}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='${console_log}' append='on'/>
      <target type='serial' port='0'/>
    </console>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>
    <video><model type='vga'/></video>
    <memballoon model='virtio'/>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
  </devices>
</domain>
"""

SLOTS = {"root": "vda", "ephemeral": "vdb", "config": "vdc"}
PERSISTENT_SLOTS = tuple(f"vd{c}" for c in "defghijklmnopqrstuvwxyz")


def disk_xml(path: str, dev: str, fmt: str, *, readonly: bool = False, serial: str = "") -> str:
    parts = [
        "<disk type='file' device='disk'>",
        f"<driver name='qemu' type='{fmt}' discard='unmap'/>",
        f"<source file={quoteattr(path)}/>",
        f"<target dev='{dev}' bus='virtio'/>",
    ]
    if serial:
        parts.append(f"<serial>{escape(serial)}</serial>")
    if readonly:
        parts.append("<readonly/>")
    parts.append("</disk>")
    return "".join(parts)


def interface_xml(mac: str, network: str = "", bridge: str = "") -> str:
    if bridge:
        source = f"<interface type='bridge'><source bridge={quoteattr(bridge)}/>"
    else:
        source = f"<interface type='network'><source network={quoteattr(network)}/>"
    return f"{source}<mac address='{mac}'/><model type='virtio'/></interface>"


def metadata_xml(values: dict[str, str], tags: dict[str, str] | None = None, namespaced: bool = True) -> str:
    """boshcpi's <metadata> element: namespaced inside domain XML; plain for virDomainSetMetadata,
    which adds the namespace itself."""
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in values.items())
    inner += "".join(f"<tag name={quoteattr(k)}>{escape(v)}</tag>" for k, v in (tags or {}).items())
    if not namespaced:
        return f"<vm>{inner}</vm>"
    return f"<{NS_PREFIX}:vm xmlns:{NS_PREFIX}='{NS}'>{inner}</{NS_PREFIX}:vm>"


def render(template: str | None, **values: str) -> str:
    """Fill the template; an unknown ${placeholder} in an operator's template is an error."""
    return Template(template or DEFAULT_TEMPLATE).substitute(**values)
