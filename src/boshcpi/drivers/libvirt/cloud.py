"""The libvirt Cloud: stemcells as storage volumes, domains booting qcow2 overlays, config drives,
persistent disks, snapshots. Domain type `kvm` (default) or `qemu` (software emulation).

Domains and volumes of the Go libvirt CPI (a2geek/libvirt-bosh-cpi) are taken over in their own
layout: see naming.py."""

from __future__ import annotations

import os

from boshcpi import ids, lease, log
from boshcpi.agent import settings as agent_settings
from boshcpi.cloud import Cloud, parse_vm_size
from boshcpi.drivers.libvirt import STEMCELL_FORMATS, configdrive, naming, xmltree
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.drivers.libvirt.host import LibvirtHost, MiB
from boshcpi.drivers.libvirt.xmltree import escape
from boshcpi.faults import fail_point
from boshcpi.protocol import (
    BoshError,
    CloudError,
    CpiError,
    DiskNotFound,
    NotImplementedByCpi,
    NotSupported,
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

    # ---- stemcells --------------------------------------------------------------------------
    def create_stemcell(self, spec: StemcellSpec) -> str:
        from boshcpi import stemcell

        stemcell.check_image_path(spec.image_path)
        stemcell.architecture(spec.cloud_properties.get("architecture"))
        cid = ids.new_stemcell_cid()
        vol = None
        with stemcell.DiskImage(spec.image_path) as disk:
            if disk.format == "raw" and disk.size > self.cfg.max_stemcell_image:
                raise CpiError(
                    f"create_stemcell: root.img is {disk.size >> 20} MiB, above the limit of "
                    f"{self.cfg.max_stemcell_image >> 20} MiB (server.max_stemcell_image)"
                )
            free = self.host.free_bytes()
            if free and disk.size > free:
                raise CpiError(
                    f"create_stemcell: root.img is {disk.size >> 20} MiB; pool {self.lc.storage_pool_name} has "
                    f"{free >> 20} MiB free"
                )
            try:
                vol = self.host.new_volume(cid, disk.virtual_size, disk.format)
                log.info(f"uploading {disk.format} stemcell image ({disk.size // MiB} MiB) to {cid}")
                self.host.upload(vol, stemcell.prefetched(disk.chunks()), disk.size)
            except BaseException as e:
                if vol is not None:
                    self.host.delete_volume(cid)
                if isinstance(e, self.lv.libvirtError):
                    raise self.host.err(e, "create_stemcell") from None
                raise
        return cid

    def delete_stemcell(self, stemcell_cid: str) -> None:
        name = naming.stemcell_volume(stemcell_cid)
        vol = self.host.volume(name)
        if vol is None:
            log.info(f"stemcell {stemcell_cid} is already gone")
            return
        path = vol.path()
        users = [d.name() for d in self.host.all_domains() if path in self._backing_paths(d)]
        if users:
            raise CloudError(f"delete_stemcell: stemcell {stemcell_cid} is still used by {', '.join(sorted(users))}")
        self.host.delete_volume(name)
        if name.startswith(naming.GO_STEMCELL_PREFIX):
            self.host.delete_volume(name + ".json")  # the Go CPI's copy of the stemcell's properties

    def _backing_paths(self, dom: Any) -> set[str]:
        out = set()
        for d in self.host.disks(dom):
            if not d["volume"].endswith(naming.ROOT_SUFFIX):
                continue
            vol = self.host.volume_by_path(d["path"])
            if vol is None:
                continue
            bs = xmltree.fromstring(vol.XMLDesc(0)).find("backingStore/path")
            if bs is not None and bs.text:
                out.add(bs.text)
        return out

    # ---- VMs --------------------------------------------------------------------------------
    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        size = parse_vm_size(spec.cloud_properties)
        stemcell_vol = self.host.volume(naming.stemcell_volume(spec.stemcell_cid))
        if stemcell_vol is None:
            raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
        vm_cid = ids.new_vm_cid()
        uid = ids.vm_uuid(vm_cid)
        made: list[str] = []
        defined = False
        try:
            fmt_el = xmltree.fromstring(stemcell_vol.XMLDesc(0)).find("target/format")
            stemcell_fmt = fmt_el.get("type") if fmt_el is not None else "raw"
            capacity = stemcell_vol.info()[1]
            root_mb = int(spec.cloud_properties.get("root_disk_size") or 0)
            root = self.host.new_volume(
                naming.root_volume(vm_cid),
                max(capacity, root_mb * MiB),
                "qcow2",
                backing=(stemcell_vol.path(), stemcell_fmt),
            )
            made.append(root.name())
            disks = [dom_xml.disk_xml(root.path(), dom_xml.SLOTS["root"], "qcow2", serial=naming.ROOT_SERIAL)]
            ephemeral_hint: Any = ""
            fail_point("volumes")
            if size.ephemeral_mb > 0:
                eph = self.host.new_volume(naming.ephemeral_volume(vm_cid), size.ephemeral_mb * MiB, "qcow2")
                made.append(eph.name())
                disks.append(
                    dom_xml.disk_xml(eph.path(), dom_xml.SLOTS["ephemeral"], "qcow2", serial=naming.EPHEMERAL_SERIAL)
                )
                # Found by the agent by path only: the by-id link of its serial.
                ephemeral_hint = {"path": naming.by_id_path(naming.EPHEMERAL_SERIAL)}
            interfaces, networks = [], {}
            ordered = sorted(spec.networks.values(), key=lambda n: ("gateway" not in n.default, n.name))
            for net in ordered:
                mac = net.mac or ids.random_mac("52:54:00")
                if net.type != "vip":
                    bridge = str(net.cloud_properties.get("bridge") or self.lc.bridge_name or "")
                    network = str(net.cloud_properties.get("name") or self.lc.network_name)
                    interfaces.append(dom_xml.interface_xml(mac, network=network, bridge=bridge))
                networks[net.name] = agent_settings.network_entry(
                    dict(spec.raw_networks.get(net.name) or {}), mac, preconfigured=False
                )
            settings = agent_settings.build(
                agent_id=spec.agent_id,
                vm_cid=vm_cid,
                networks=networks,
                env=spec.env,
                mbus=self.cfg.agent.mbus,
                ntp=self.cfg.agent.ntp,
                blobstore=self.cfg.agent.blobstore,
                system_disk=naming.by_id_path(naming.ROOT_SERIAL),
                ephemeral_disk=ephemeral_hint,
            )
            cfg_vol = configdrive.new_volume(self.host, vm_cid, configdrive.build_image(self.host, settings))
            made.append(cfg_vol.name())
            is_cdrom = self.cfg.agent_config.type == "CDROM"
            if is_cdrom:
                disks.append(dom_xml.SCSI_CONTROLLER)
            disks.append(configdrive.device_xml(self.host, cfg_vol.path(), is_cdrom))
            fail_point("define")
            xml = self._domain_xml(vm_cid, uid, spec, size, disks, interfaces)
            try:
                dom = self.conn.defineXML(xml)
            except self.lv.libvirtError as e:
                raise self.host.err(e, "define domain") from None
            defined = True
            fail_point("start")
            try:
                dom.create()
            except self.lv.libvirtError as e:
                raise self.host.err(e, "start domain") from None
            self._set_meta(dom, {"creating": ""}, remove=True)
        except BaseException as e:
            self._undo(vm_cid, defined, made)
            if isinstance(e, (VMCreationFailed, CpiError)):
                raise
            if isinstance(e, BoshError):
                raise VMCreationFailed(f"create_vm: {e.message}", ok_to_retry=e.ok_to_retry) from None
            if isinstance(e, Exception):
                raise VMCreationFailed(f"create_vm: {type(e).__name__}: {e}") from None
            raise
        out_networks = {n: {**(spec.raw_networks.get(n) or {}), "mac": networks[n]["mac"]} for n in spec.networks}
        log.info(f"created domain {vm_cid} ({self.lc.domain_type}) from {spec.stemcell_cid}")
        return vm_cid, out_networks

    def _domain_xml(
        self, vm_cid: str, uid: str, spec: VMSpec, size: Any, disks: list[str], interfaces: list[str]
    ) -> str:
        template = None
        if self.lc.domain_template:
            t = self.lc.domain_template
            if "<domain" in t:
                template = t
            else:
                try:
                    with open(t, encoding="utf-8") as fh:
                        template = fh.read()
                except OSError as e:
                    raise CpiError(f"libvirt.domain_template: cannot read {t}: {e.strerror}") from None
        cpu = "<cpu mode='host-passthrough'/>" if self.lc.domain_type == "kvm" else ""
        meta = dom_xml.metadata_xml(
            {
                "agent_id": spec.agent_id,
                "stemcell": spec.stemcell_cid,
                "created_by": "boshcpi",
                # Until create_vm answers, the process making it (boshcpi.lease.identity): a killed
                # attempt's domain, started or not, is cleanup's once that process is gone.
                "creating": lease.identity(),
                "created": _now(),
            }
        )
        if self.host.is_local:
            # The serial console's file is opened by libvirtd on its host: the folder must exist there.
            try:
                os.makedirs(self.lc.console_log_dir, exist_ok=True)
            except OSError as e:
                log.warn(f"console log folder {self.lc.console_log_dir}: {e.strerror}")
        try:
            return dom_xml.render(
                template,
                domain_type=self.lc.domain_type,
                name=vm_cid,
                uuid=uid,
                title=escape(f"bosh agent {spec.agent_id}"),
                description="boshcpi VM",
                metadata=meta,
                memory_mb=str(size.memory_mb),
                cpus=str(size.cpus),
                machine=self.lc.machine_type,
                cpu=cpu,
                emulator=f"<emulator>{escape(self.lc.emulator)}</emulator>" if self.lc.emulator else "",
                disks="\n    ".join(disks),
                interfaces="\n    ".join(interfaces),
                console_log=self.console_log(vm_cid),
            )
        except (KeyError, ValueError) as e:
            raise CpiError(f"libvirt.domain_template: unknown or bad placeholder {e}") from None

    def console_log(self, vm_cid: str) -> str:
        return os.path.join(self.lc.console_log_dir, f"{vm_cid}.console.log")

    def _undo(self, vm_cid: str, defined: bool, volumes: list[str]) -> None:
        log.warn(f"create_vm failed: removing what it made ({vm_cid}, {len(volumes)} volume(s))")
        if defined:
            self._destroy_and_undefine(vm_cid)
        for name in volumes:
            self.host.delete_volume(name)

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
    def create_disk(self, spec: DiskSpec) -> str:
        capacity = self.host.capacity_bytes()
        if capacity and spec.size_mb * MiB > capacity:
            raise CpiError(
                f"create_disk: size {spec.size_mb} MiB does not fit in pool {self.lc.storage_pool_name} "
                f"({capacity >> 20} MiB in all)"
            )
        cid = naming.new_disk_cid()
        self.host.new_volume(cid, spec.size_mb * MiB, "raw")
        log.info(f"created disk {cid} of {spec.size_mb} MiB")
        return cid

    def _require_disk(self, disk_cid: str, action: str) -> Any:
        vol = self.host.volume(disk_cid) if naming.is_disk_cid(disk_cid) else None
        if vol is None:
            raise DiskNotFound(f"{action}: disk {disk_cid} not found")
        return vol

    def _disk_users(self, path: str, live: bool = False) -> list[str]:
        """The domains whose definition (or, with `live`, whose running guest) has the disk at `path`."""
        users = []
        for dom in self.host.all_domains():
            try:
                if live and not dom.isActive():
                    continue
                disks = self.host.disks(dom, live=live)
            except self.lv.libvirtError as e:
                if e.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                    continue  # deleted since the list was made
                raise self.host.err(e, "list the domains' disks") from None
            if any(x["path"] == path for x in disks):
                users.append(dom.name())
        return users

    def has_disk(self, disk_cid: str) -> bool:
        return naming.is_disk_cid(disk_cid) and self.host.volume(disk_cid) is not None

    def delete_disk(self, disk_cid: str) -> None:
        vol = self.host.volume(disk_cid) if naming.is_disk_cid(disk_cid) else None
        if vol is None:
            log.info(f"disk {disk_cid} is already gone")
            return
        users = self._disk_users(vol.path())
        if users:
            raise CloudError(f"delete_disk: disk {disk_cid} is attached to {', '.join(users)}; detach it first")
        self.host.delete_volume(disk_cid)

    def _persistent(self, dom: Any, live: bool = False) -> dict[str, dict[str, str]]:
        """disk_cid -> disk entry of the persistent disks in the domain's definition (or, with `live`,
        in the running domain)."""
        return {d["volume"]: d for d in self.host.disks(dom, live=live) if naming.is_disk_cid(d["volume"])}

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        self.host.owned_domain(vm_cid, "attach_disk")  # VMNotFound before any lock
        with self.host.lock(vm_cid, "attach_disk"):
            return self._attach_disk(vm_cid, disk_cid)

    def _attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        dom = self.host.owned_domain(vm_cid, "attach_disk")
        vol = self._require_disk(disk_cid, "attach_disk")
        attached = self._persistent(dom)
        settings, _ = configdrive.read(self.host, dom)
        if disk_cid in attached:
            hint = agent_settings.persistent(settings).get(disk_cid)
            if hint:
                return hint
        others = [u for u in self._disk_users(vol.path()) if u != vm_cid]
        if others:
            raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
        # Detached, but a running guest that never let go of it (a detach answers once its wait for the
        # guest runs out) still has it open, and QEMU would refuse it here ("Failed to get write lock").
        holding = [u for u in self._disk_users(vol.path(), live=True) if u != vm_cid]
        if holding:
            raise CloudError(
                f"attach_disk: disk {disk_cid} is still open in {', '.join(holding)}: its guest has not let it go "
                "since it was detached; retry once it has (or once that VM reboots or is deleted)",
                ok_to_retry=True,
            )
        # Targets in use in the definition and in the running domain (a disk the guest has not let go of
        # yet still holds its target there).
        used = {d["dev"] for d in self.host.disks(dom)} | {d["dev"] for d in self.host.disks(dom, live=True)}
        dev = next((t for t in dom_xml.TARGETS if t not in used), None)
        if dev is None:
            raise CloudError(f"attach_disk: {vm_cid} has no free disk target")
        serial = naming.disk_serial(disk_cid)
        xml = dom_xml.disk_xml(vol.path(), dev, "raw", serial=serial)
        live = dom.isActive()
        if disk_cid not in attached:
            try:
                dom.attachDeviceFlags(
                    xml, self.lv.VIR_DOMAIN_AFFECT_CONFIG | (self.lv.VIR_DOMAIN_AFFECT_LIVE if live else 0)
                )
            except self.lv.libvirtError as e:
                raise self.host.err(e, "attach_disk") from None
        else:
            serial = attached[disk_cid]["serial"] or serial
        hint = {"path": naming.by_id_path(serial)}
        try:
            configdrive.write(self.host, dom, agent_settings.attach_persistent(settings, disk_cid, hint))
        except BaseException:
            self._detach_device(dom, xml, vol.path())
            raise
        log.info(f"attached {disk_cid} to {vm_cid} as {hint}")
        return hint

    def _detach_device(self, dom: Any, xml: str, path: str = "", wait: float = 20.0) -> None:
        """Remove a disk from the definition and from the running guest. A live unplug needs the guest's
        cooperation (ACPI hot-unplug) and completes after libvirt returns: wait for the disk to leave
        the running domain, so its image is free (QEMU holds a lock on it) when this call answers."""
        flags = self.lv.VIR_DOMAIN_AFFECT_CONFIG
        live = dom.isActive()
        if live:
            try:
                dom.detachDeviceFlags(xml, self.lv.VIR_DOMAIN_AFFECT_LIVE)
            except self.lv.libvirtError as e:
                log.warn(f"live detach: {e.get_error_message()}")
                live = False
        try:
            dom.detachDeviceFlags(xml, flags)
        except self.lv.libvirtError as e:
            if "no target device" not in (e.get_error_message() or "").lower():
                raise self.host.err(e, "detach disk") from None
        if live and path:
            import time

            deadline = time.monotonic() + wait
            while any(d["path"] == path for d in self.host.disks(dom, live=True)):
                if time.monotonic() > deadline:
                    log.warn(f"the guest of {dom.name()} still holds {os.path.basename(path)}; it goes at next boot")
                    return
                time.sleep(0.25)

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        self.host.owned_domain(vm_cid, "detach_disk")
        with self.host.lock(vm_cid, "detach_disk"):
            self._detach_disk(vm_cid, disk_cid)

    def _detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        dom = self.host.owned_domain(vm_cid, "detach_disk")
        # The running guest's disks too: a detach killed after it took the disk out of the definition
        # leaves it in the running domain until the guest lets go, and its retry waits for that.
        attached = {**(self._persistent(dom, live=True) if dom.isActive() else {}), **self._persistent(dom)}
        settings, _ = configdrive.read(self.host, dom)
        if disk_cid in attached:
            d = attached[disk_cid]
            self._detach_device(dom, dom_xml.disk_xml(d["path"], d["dev"], "raw", serial=d["serial"]), d["path"])
        if disk_cid in agent_settings.persistent(settings):
            configdrive.write(self.host, dom, agent_settings.detach_persistent(settings, disk_cid))
        self._require_disk(disk_cid, "detach_disk")

    def get_disks(self, vm_cid: str) -> list[str]:
        return sorted(self._persistent(self.host.owned_domain(vm_cid, "get_disks")))

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        vol = self._require_disk(disk_cid, "resize_disk")
        current = vol.info()[1]
        new = new_size_mb * MiB
        if new < current:
            raise NotSupported(f"resize_disk: cannot shrink {disk_cid} from {current // MiB} MiB to {new_size_mb} MiB")
        if new == current:
            return
        try:
            for name in self._disk_users(vol.path()):
                d = self.conn.lookupByName(name)
                if d.isActive():
                    dev = self._persistent(d)[disk_cid]["dev"]
                    d.blockResize(dev, new, self.lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    return
            vol.resize(new, 0)
        except self.lv.libvirtError as e:
            raise self.host.err(e, "resize_disk") from None

    def update_disk(self, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
        self._require_disk(disk_cid, "update_disk")
        if cloud_properties:
            raise NotImplementedByCpi("update_disk: changing disk cloud properties is done by the director")
        self.resize_disk(disk_cid, new_size_mb)
        return disk_cid

    def snapshot_disk(self, disk_cid: str, metadata: dict[str, Any]) -> str:
        vol = self._require_disk(disk_cid, "snapshot_disk")
        cid = naming.new_snapshot_cid(disk_cid)
        xml = (
            f"<volume><name>{cid}</name><capacity unit='bytes'>{vol.info()[1]}</capacity>"
            "<target><format type='raw'/></target></volume>"
        )
        try:
            # A storage-volume clone: libvirt has no volume snapshots; on a dir pool this copies
            # (sparsely). The cid names its disk, so delete_snapshot needs no lookup table.
            fail_point("snapshot")
            self.host.pool.createXMLFrom(xml, vol, 0)
        except self.lv.libvirtError as e:
            raise self.host.err(e, "snapshot_disk") from None
        return cid

    def delete_snapshot(self, snapshot_cid: str) -> None:
        if naming.split_snapshot_cid(snapshot_cid) is None:
            # The Go CPI's `snap-cid` never named a snapshot: nothing to delete.
            log.info(f"snapshot {snapshot_cid!r} names nothing this CPI made")
            return
        self.host.delete_volume(snapshot_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        vol = self._require_disk(disk_cid, "set_disk_metadata")
        tags = {f"disk.{disk_cid}.{k}": str(v)[:1024] for k, v in metadata.items()}
        # Volumes carry no metadata in libvirt: record it on the domain the disk is attached to, under
        # the domain's lock (its metadata is one read-modify-write with set_vm_metadata's).
        for name in self._disk_users(vol.path()):
            with self.host.lock(name, "set_disk_metadata"):
                dom = self.host.domain(name)
                if dom is None or not self.host.is_owned(dom):
                    continue
                try:
                    self._set_meta(dom, {}, tags=tags)
                except self.lv.libvirtError as e:
                    if e.get_error_code() != self.lv.VIR_ERR_NO_DOMAIN:
                        raise self.host.err(e, "set_disk_metadata") from None


def _now() -> str:
    import time

    return str(int(time.time()))
