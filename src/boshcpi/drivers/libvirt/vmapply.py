"""Carries out a libvirt create_vm plan (vmplan.Plan) in order, with one undo journal: the root
overlay, the ephemeral disk, the config drive, the domain's definition and its start, and last the
`creating` mark removed. Where a step fails or the call is interrupted, what was made goes."""

from __future__ import annotations

import os

from boshcpi import log
from boshcpi.drivers.libvirt import configdrive, vmplan
from boshcpi.faults import fail_point

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.libvirt.host import LibvirtHost


def apply(host: LibvirtHost, plan: vmplan.Plan, undefine: Any) -> None:
    """`undefine(vm_cid)`: stops and undefines a domain (the driver's, shared with delete_vm)."""
    made: list[str] = []
    defined = False
    try:
        for i, vol in enumerate(plan.volumes):
            host.new_volume(vol.name, vol.size_bytes, "qcow2", backing=vol.backing)
            made.append(vol.name)
            if i == 0:
                fail_point("volumes")
        image = configdrive.build_image(host, plan.settings)
        configdrive.new_volume(host, plan.vm_cid, image, plan.config_drive)
        made.append(plan.config_drive)
        fail_point("define")
        _console_folder(host)
        try:
            dom = host.conn.defineXML(plan.domain_xml)
        except host.lv.libvirtError as e:
            raise host.err(e, "define domain") from None
        defined = True
        fail_point("start")
        try:
            dom.create()
        except host.lv.libvirtError as e:
            raise host.err(e, "start domain") from None
        host.set_metadata(dom, {"creating": ""}, remove=True)
    except BaseException:
        log.warn(f"create_vm failed: removing what it made ({plan.vm_cid}, {len(made)} volume(s))")
        if defined:
            undefine(plan.vm_cid)
        for name in made:
            host.delete_volume(name)
        raise


def _console_folder(host: LibvirtHost) -> None:
    """The serial console's file is opened by libvirtd on its host: where that is this machine, the
    folder must exist."""
    if not host.is_local:
        return
    folder = host.cfg.libvirt.console_log_dir
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        log.warn(f"console log folder {folder}: {e.strerror}")
