"""What create_vm on libvirt reads before it plans (vmplan): the stemcell volume (its path, format
and size), the operator's domain template, and who and when for the domain's marks."""

from __future__ import annotations

import time

from boshcpi import lease
from boshcpi.drivers.libvirt import naming, vmplan, xmltree
from boshcpi.protocol import CpiError, VMCreationFailed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.cloud import VMSpec
    from boshcpi.drivers.libvirt.host import LibvirtHost


def read(host: LibvirtHost, spec: VMSpec) -> vmplan.Facts:
    vol = host.volume(naming.stemcell_volume(spec.stemcell_cid))
    if vol is None:
        raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
    fmt = xmltree.fromstring(vol.XMLDesc(0)).find("target/format")
    return vmplan.Facts(
        stemcell_format=fmt.get("type") if fmt is not None else "raw",
        stemcell_bytes=vol.info()[1],
        stemcell_path=vol.path(),
        template=template(host),
        identity=lease.identity(),
        created=str(int(time.time())),
    )


def template(host: LibvirtHost) -> str | None:
    """`libvirt.domain_template`: the XML itself, or a file holding it; None for the default."""
    t = host.cfg.libvirt.domain_template
    if not t or "<domain" in t:
        return t or None
    try:
        with open(t, encoding="utf-8") as fh:
            return fh.read()
    except OSError as e:
        raise CpiError(f"libvirt.domain_template: cannot read {t}: {e.strerror}") from None
