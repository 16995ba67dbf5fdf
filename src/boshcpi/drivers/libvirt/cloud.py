"""The libvirt Cloud: stemcells as storage volumes, domains booting qcow2 overlays, config drives,
persistent disks, snapshots. Domain type `kvm` (default) or `qemu` (software emulation).

Domains and volumes of the Go libvirt CPI (a2geek/libvirt-bosh-cpi) are taken over in their own
layout: see naming.py."""

from __future__ import annotations

import os

from boshcpi import ids, log
from boshcpi.cloud import Cloud, parse_vm_size
from boshcpi.drivers.libvirt import STEMCELL_FORMATS, configdrive, disks, images, naming
from boshcpi.drivers.libvirt.host import LibvirtHost
from boshcpi.protocol import (
    BoshError,
    CpiError,
    VMCreationFailed,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec, StemcellSpec, VMSpec
    from boshcpi.config import Config
    from boshcpi.protocol import Request


class LibvirtCloud(Cloud):
    stemcell_formats = STEMCELL_FORMATS

    def __init__(self, cfg: Config, request: Request | None = None) -> None:
        self.cfg = cfg
        self.lc = cfg.libvirt
        self.host = LibvirtHost(cfg)

    @property
    def conn(self) -> Any:
        return self.host.conn

    @property
    def lv(self) -> Any:
        self.host.conn  # noqa: B018 - connects and loads the module
        return self.host.lv

    def close(self) -> None:
        self.host.close()

    def recognises(self, kind: str, cid: str) -> bool:
        if kind == "vm":
            return ids.is_vm_cid(cid)
        if kind == "stemcell":
            return naming.is_stemcell_cid(cid)
        if kind == "disk":
            return naming.is_disk_cid(cid)
        if kind == "snapshot":
            return naming.is_snapshot_cid(cid)
        return False

    # ---- stemcells (images.py) --------------------------------------------------------------
    def create_stemcell(self, spec: StemcellSpec) -> str:
        return images.create(self.host, spec)

    def delete_stemcell(self, stemcell_cid: str) -> None:
        images.delete(self.host, stemcell_cid)

    # ---- VMs --------------------------------------------------------------------------------
    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        """Read, plan, apply (vmfacts, vmplan, vmapply); a failure undoes what was made and is a
        VMCreationFailed."""
        from boshcpi.drivers.libvirt import vmapply, vmfacts, vmplan

        size = parse_vm_size(spec.cloud_properties)
        try:
            facts = vmfacts.read(self.host, spec)
            plan = vmplan.plan(self.cfg, spec, size, facts, ids.new_vm_cid(), ids.random_mac)
            vmapply.apply(self.host, plan, self._destroy_and_undefine)
        except (VMCreationFailed, CpiError):
            raise
        except BaseException as e:
            if isinstance(e, BoshError):
                raise VMCreationFailed(f"create_vm: {e.message}", ok_to_retry=e.ok_to_retry) from None
            if isinstance(e, Exception):
                raise VMCreationFailed(f"create_vm: {type(e).__name__}: {e}") from None
            raise
        log.info(f"created domain {plan.vm_cid} ({self.lc.domain_type}) from {spec.stemcell_cid}")
        return plan.vm_cid, plan.networks

    def console_log(self, vm_cid: str) -> str:
        from boshcpi.drivers.libvirt import vmplan

        return vmplan.console_log(self.cfg, vm_cid)

    def _destroy_and_undefine(self, vm_cid: str) -> bool:
        dom = self.host.domain(vm_cid)
        if dom is None:
            return False
        try:
            if dom.isActive():
                dom.destroy()
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_OPERATION_INVALID:
                raise self.host.err(e, f"stop {vm_cid}") from None
        try:
            dom.undefineFlags(self.lv.VIR_DOMAIN_UNDEFINE_NVRAM | self.lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_NO_DOMAIN:
                raise self.host.err(e, f"undefine {vm_cid}") from None
        return True

    def delete_vm(self, vm_cid: str) -> None:
        dom = self.host.domain(vm_cid)
        if dom is not None and not self.host.is_owned(dom):
            log.warn(f"delete_vm: {vm_cid} is not a VM made by boshcpi or the Go libvirt CPI; leaving it alone")
            return
        # Its boot, ephemeral and config volumes: from its own disks (either CPI's layout), never a
        # persistent disk; plus boshcpi's boot and ephemeral volumes by exact name (a half-made VM).
        owned = {d["volume"] for d in self.host.disks(dom) if naming.owned_by(d["volume"], vm_cid)} if dom else set()
        owned |= {naming.root_volume(vm_cid), naming.ephemeral_volume(vm_cid)}
        if dom is not None:
            # Config drives a running guest held when they were replaced: recorded by name.
            owned |= {v for v in configdrive.stale(self.host, dom) if naming.owned_by(v, vm_cid)}
        if not self._destroy_and_undefine(vm_cid):
            log.info(f"VM {vm_cid} is already gone")
        for name in sorted(owned):
            if not naming.is_disk_cid(name):
                self.host.delete_volume(name)
        if self.host.is_local:
            try:
                os.unlink(self.console_log(vm_cid))
            except OSError:
                pass

    def has_vm(self, vm_cid: str) -> bool:
        dom = self.host.domain(vm_cid)
        return dom is not None and self.host.is_owned(dom)

    def reboot_vm(self, vm_cid: str) -> None:
        dom = self.host.owned_domain(vm_cid, "reboot_vm")
        try:
            # A power cycle (not an ACPI request a hung guest may ignore); it also boots with the
            # latest config drive.
            if dom.isActive():
                dom.destroy()
            # Config drives the running guest still held are free now.
            configdrive.drop_stale(self.host, dom)
            dom.create()
        except self.lv.libvirtError as e:
            raise self.host.err(e, "reboot_vm") from None

    def _set_meta(
        self, dom: Any, values: dict[str, str], remove: bool = False, tags: dict[str, str] | None = None
    ) -> None:
        self.host.set_metadata(dom, values, remove=remove, tags=tags)

    def vm_metadata(self, vm_cid: str) -> dict[str, Any]:
        dom = self.host.owned_domain(vm_cid, "metadata")
        return self.host.metadata(dom) or {"tags": {}}

    def set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        self.host.owned_domain(vm_cid, "set_vm_metadata")
        with self.host.lock(vm_cid, "set_vm_metadata"):
            self._set_vm_metadata(vm_cid, metadata)

    def _set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        dom = self.host.owned_domain(vm_cid, "set_vm_metadata")
        try:
            self._set_meta(dom, {}, tags=metadata)
            parts = [metadata.get(k, "") for k in ("deployment", "job", "index")]
            title = (
                f"{metadata.get('deployment', '')}/{metadata['name']}"
                if metadata.get("name")
                else "/".join(p for p in parts if p)
            )
            if title:
                flags = self.lv.VIR_DOMAIN_AFFECT_CONFIG | (self.lv.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
                dom.setMetadata(self.lv.VIR_DOMAIN_METADATA_TITLE, title.strip("/")[:255], None, None, flags)
        except self.lv.libvirtError as e:
            raise self.host.err(e, "set_vm_metadata") from None

    def read_settings(self, vm_cid: str) -> dict[str, Any]:
        return configdrive.read(self.host, self.host.owned_domain(vm_cid, "read settings"))[0]

    # ---- disks ------------------------------------------------------------------------------

    # ---- disks (disks.py) -------------------------------------------------------------------
    def create_disk(self, spec: DiskSpec) -> str:
        return disks.create(self.host, spec)

    def has_disk(self, disk_cid: str) -> bool:
        return disks.exists(self.host, disk_cid)

    def delete_disk(self, disk_cid: str) -> None:
        disks.delete(self.host, disk_cid)

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        return disks.attach(self.host, vm_cid, disk_cid)

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        disks.detach(self.host, vm_cid, disk_cid)

    def get_disks(self, vm_cid: str) -> list[str]:
        return disks.attached(self.host, vm_cid)

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        disks.resize(self.host, disk_cid, new_size_mb)

    def update_disk(self, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
        return disks.update(self.host, disk_cid, new_size_mb, cloud_properties)

    def snapshot_disk(self, disk_cid: str, metadata: dict[str, Any]) -> str:
        return disks.snapshot(self.host, disk_cid, metadata)

    def delete_snapshot(self, snapshot_cid: str) -> None:
        disks.delete_snapshot(self.host, snapshot_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        disks.set_metadata(self.host, disk_cid, metadata)
