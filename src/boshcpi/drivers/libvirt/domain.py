"""Domain XML: a default template the operator can replace (`libvirt.domain_template`), and the
device snippets it is filled with.

Disks carry serials (`root`, `ephemeral`, `config-2`, a persistent disk's cid): the guest names
virtio disks in PCI order, so the agent is told the `/dev/disk/by-id/virtio-<serial>` links, never
a vdX letter. Target names in the XML only have to be unique. The config drive is a CD-ROM on a
virtio-scsi controller (CDROM type) or a read-only virtio disk (FAT32 type).
"""

from __future__ import annotations

from boshcpi.drivers.libvirt.xmltree import escape, quoteattr

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
CONFIG_DEV = SLOTS["config"]
TARGETS = tuple(f"vd{c}" for c in "abcdefghijklmnopqrstuvwxyz") + tuple(
    f"vd{a}{b}" for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"
)
SCSI_CONTROLLER = "<controller type='scsi' index='0' model='virtio-scsi'/>"


def cdrom_xml(path: str, dev: str = "sda", bus: str = "scsi") -> str:
    return (
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source file={quoteattr(path)}/><target dev='{dev}' bus='{bus}'/><readonly/></disk>"
    )


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
    from string import Template  # `string` imports `re`: only create_vm pays for it

    return Template(template or DEFAULT_TEMPLATE).substitute(**values)
