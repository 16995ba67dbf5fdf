"""The libvirt Cloud: stemcells as storage volumes, domains booting qcow2 overlays, config drives,
persistent disks, snapshots. Domain type `kvm` (default) or `qemu` (software emulation)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from boshcpi import log, naming
from boshcpi.agent import settings as agent_settings
from boshcpi.cloud import Cloud, parse_vm_size
from boshcpi.drivers import STEMCELL_FORMATS
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.faults import fail_point
from boshcpi.protocol import (
    BoshError,
    CloudError,
    CpiError,
    DiskNotFound,
    NotImplementedByCpi,
    VMCreationFailed,
    VMNotFound,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec, StemcellSpec, VMSpec
    from boshcpi.config import Config
    from boshcpi.protocol import Request

CHUNK = 1 << 20
MiB = 1 << 20


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise CloudError("the libvirt driver needs libvirt-python (pip install 'boshcpi[libvirt]')") from None
    libvirt.registerErrorHandler(lambda *_: None, None)  # no stderr noise; errors come as exceptions
    return libvirt


class LibvirtCloud(Cloud):
    stemcell_formats = STEMCELL_FORMATS["libvirt"]

    def __init__(self, cfg: Config, request: Request | None = None) -> None:
        self.cfg = cfg
        self.lc = cfg.libvirt
        self._conn: Any = None
        self._pool: Any = None
        self.lv = None

    # ---- connection -------------------------------------------------------------------------
    @property
    def conn(self) -> Any:
        if self._conn is None:
            self.lv = _libvirt()
            uri = self.lc.uri
            tmp = None
            try:
                if self.lc.tls_client_cert:
                    import tempfile

                    # libvirt reads TLS files from a pkipath directory at connect time only.
                    tmp = tempfile.TemporaryDirectory(prefix="boshcpi-pki-")
                    for name, text in (
                        ("cacert.pem", self.lc.tls_ca_cert),
                        ("clientcert.pem", self.lc.tls_client_cert),
                        ("clientkey.pem", self.lc.tls_client_key),
                    ):
                        if text:
                            fd = os.open(os.path.join(tmp.name, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                            with os.fdopen(fd, "w") as fh:
                                fh.write(text)
                    uri += ("&" if "?" in uri else "?") + "pkipath=" + tmp.name
                self._conn = self.lv.open(uri)
            except self.lv.libvirtError as e:
                raise CloudError(
                    f"cannot connect to libvirt at {self.lc.uri}: {e.get_error_message()}", ok_to_retry=True
                ) from None
            finally:
                if tmp is not None:
                    tmp.cleanup()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            try:
                self._pool = self.conn.storagePoolLookupByName(self.lc.storage_pool_name)
                self._pool.refresh(0)
            except self.lv.libvirtError as e:
                raise CloudError(f"storage pool {self.lc.storage_pool_name!r}: {e.get_error_message()}") from None
        return self._pool

    def _err(self, e: Any, action: str) -> BoshError:
        code = e.get_error_code()
        msg = e.get_error_message()
        lowered = (msg or "").lower()
        if "no space" in lowered:
            from boshcpi.protocol import NoDiskSpace

            return NoDiskSpace(f"{action}: {msg}")
        retry = code in (self.lv.VIR_ERR_SYSTEM_ERROR, self.lv.VIR_ERR_RPC, self.lv.VIR_ERR_NO_CONNECT)
        return CloudError(f"{action}: {msg}", ok_to_retry=retry)

    def _volume(self, name: str) -> Any | None:
        try:
            return self.pool.storageVolLookupByName(name)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise self._err(e, f"volume {name}") from None

    def _domain(self, vm_cid: str, action: str | None = None) -> Any | None:
        try:
            return self.conn.lookupByName(vm_cid)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                if action:
                    raise VMNotFound(f"{action}: VM {vm_cid} not found") from None
                return None
            raise self._err(e, f"domain {vm_cid}") from None

    def _delete_volume(self, name: str) -> None:
        vol = self._volume(name)
        if vol is None:
            return
        try:
            vol.delete(0)
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_NO_STORAGE_VOL:
                log.warn(f"cannot delete volume {name}: {e.get_error_message()}")

    def _new_volume(self, name: str, size_bytes: int, fmt: str, backing: tuple[str, str] | None = None) -> Any:
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{size_bytes}</capacity>"
            f"<allocation unit='bytes'>0</allocation><target><format type='{fmt}'/></target>"
        )
        if backing:
            xml += f"<backingStore><path>{backing[0]}</path><format type='{backing[1]}'/></backingStore>"
        xml += "</volume>"
        try:
            return self.pool.createXML(xml, 0)
        except self.lv.libvirtError as e:
            raise self._err(e, f"create volume {name}") from None

    def _upload(self, vol: Any, chunks: Any, length: int) -> None:
        stream = self.conn.newStream(0)
        try:
            vol.upload(stream, 0, length, 0)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:  # libvirt streams take at most 32 MiB per send
                    sent = stream.send(bytes(view[:CHUNK]))
                    view = view[sent:]
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except Exception:
                pass
            raise

    def _download(self, vol: Any) -> bytes:
        size = vol.info()[1]
        stream = self.conn.newStream(0)
        vol.download(stream, 0, size, 0)
        out = bytearray()
        while True:
            data = stream.recv(CHUNK)
            if not data:
                break
            out += data
        stream.finish()
        return bytes(out)

    # ---- stemcells --------------------------------------------------------------------------
    def create_stemcell(self, spec: StemcellSpec) -> str:
        import tarfile

        from boshcpi import stemcell

        stemcell.check_image_path(spec.image_path)
        cid = naming.new_stemcell_cid()
        vol = None
        try:
            with tarfile.open(spec.image_path, mode="r|*") as tf:
                for member in tf:
                    if member.name in stemcell.VM_IMAGE_NAMES and member.isfile():
                        src = tf.extractfile(member)
                        assert src is not None
                        head = src.read(CHUNK)
                        fmt = "qcow2" if head[:4] == b"QFI\xfb" else "raw"
                        capacity = int.from_bytes(head[24:32], "big") if fmt == "qcow2" else member.size
                        vol = self._new_volume(cid, capacity, fmt)
                        log.info(f"uploading {fmt} stemcell image ({member.size // MiB} MiB) to {cid}")

                        def chunks(first: bytes = head, rest: Any = src) -> Any:
                            yield first
                            while True:
                                data = rest.read(CHUNK)
                                if not data:
                                    return
                                yield data

                        self._upload(vol, chunks(), member.size)
                        break
                else:
                    raise CpiError(
                        f"create_stemcell: {spec.image_path!r} holds no root.img (libvirt takes VM stemcells)"
                    )
        except tarfile.TarError as e:
            if vol is not None:
                self._delete_volume(cid)
            raise CpiError(f"create_stemcell: {spec.image_path!r} is not a readable tarball: {e}") from None
        except BaseException as e:
            if vol is not None:
                self._delete_volume(cid)
            if self.lv and isinstance(e, self.lv.libvirtError):
                raise self._err(e, "create_stemcell") from None
            raise
        return cid

    def delete_stemcell(self, stemcell_cid: str) -> None:
        vol = self._volume(stemcell_cid)
        if vol is None:
            log.info(f"stemcell {stemcell_cid} is already gone")
            return
        path = vol.path()
        users = [d.name() for d in self.conn.listAllDomains(0) if path in self._backing_paths(d)]
        if users:
            raise CloudError(f"delete_stemcell: stemcell {stemcell_cid} is still used by {', '.join(sorted(users))}")
        self._delete_volume(stemcell_cid)

    def _backing_paths(self, dom: Any) -> set[str]:
        out = set()
        for disk in ET.fromstring(dom.XMLDesc(self.lv.VIR_DOMAIN_XML_INACTIVE)).iter("disk"):
            src = disk.find("source")
            if src is not None and src.get("file", "").endswith("-root"):
                try:
                    vol = self.conn.storageVolLookupByPath(src.get("file"))
                    bs = ET.fromstring(vol.XMLDesc(0)).find("backingStore/path")
                    if bs is not None and bs.text:
                        out.add(bs.text)
                except self.lv.libvirtError:
                    pass
        return out

    # ---- VMs --------------------------------------------------------------------------------
    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        size = parse_vm_size(spec.cloud_properties)
        stemcell_vol = self._volume(spec.stemcell_cid)
        if stemcell_vol is None:
            raise VMCreationFailed(f"create_vm: stemcell {spec.stemcell_cid} not found", ok_to_retry=False)
        vm_cid = naming.new_vm_cid()
        uid = naming.vm_uuid(vm_cid)
        made: list[str] = []
        defined = False
        try:
            stemcell_fmt = ET.fromstring(stemcell_vol.XMLDesc(0)).find("target/format").get("type")
            capacity = stemcell_vol.info()[1]
            root_mb = int(spec.cloud_properties.get("root_disk_size") or 0)
            root = self._new_volume(
                f"{vm_cid}-root", max(capacity, root_mb * MiB), "qcow2", backing=(stemcell_vol.path(), stemcell_fmt)
            )
            made.append(root.name())
            disks = [dom_xml.disk_xml(root.path(), dom_xml.SLOTS["root"], "qcow2")]
            ephemeral_hint: Any = ""
            fail_point("volumes")
            if size.ephemeral_mb > 0:
                eph = self._new_volume(naming.ephemeral_volume(vm_cid), size.ephemeral_mb * MiB, "qcow2")
                made.append(eph.name())
                disks.append(dom_xml.disk_xml(eph.path(), dom_xml.SLOTS["ephemeral"], "qcow2"))
                ephemeral_hint = "/dev/vdb"
            interfaces, networks = [], {}
            ordered = sorted(spec.networks.values(), key=lambda n: ("gateway" not in n.default, n.name))
            for net in ordered:
                mac = net.mac or naming.random_mac("52:54:00")
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
                system_disk="/dev/vda",
                ephemeral_disk=ephemeral_hint,
            )
            cfg_vol = self._write_config_volume(vm_cid, settings)
            made.append(cfg_vol.name())
            disks.append(dom_xml.disk_xml(cfg_vol.path(), dom_xml.SLOTS["config"], "raw", readonly=True))
            fail_point("define")
            xml = self._domain_xml(vm_cid, uid, spec, size, disks, interfaces)
            try:
                dom = self.conn.defineXML(xml)
            except self.lv.libvirtError as e:
                raise self._err(e, "define domain") from None
            defined = True
            fail_point("start")
            try:
                dom.create()
            except self.lv.libvirtError as e:
                raise self._err(e, "start domain") from None
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
                "creating": "",
                "created": _now(),
            }
        )
        os.makedirs(self.lc.console_log_dir, exist_ok=True)
        try:
            return dom_xml.render(
                template,
                domain_type=self.lc.domain_type,
                name=vm_cid,
                uuid=uid,
                title=f"bosh agent {spec.agent_id}",
                description="boshcpi VM",
                metadata=meta,
                memory_mb=str(size.memory_mb),
                cpus=str(size.cpus),
                machine=self.lc.machine_type,
                cpu=cpu,
                emulator=f"<emulator>{self.lc.emulator}</emulator>" if self.lc.emulator else "",
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
            self._delete_volume(name)

    def _destroy_and_undefine(self, vm_cid: str) -> bool:
        dom = self._domain(vm_cid)
        if dom is None:
            return False
        try:
            if dom.isActive():
                dom.destroy()
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_OPERATION_INVALID:
                raise self._err(e, f"stop {vm_cid}") from None
        try:
            dom.undefineFlags(self.lv.VIR_DOMAIN_UNDEFINE_NVRAM | self.lv.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_NO_DOMAIN:
                raise self._err(e, f"undefine {vm_cid}") from None
        return True

    def _own_volumes(self, vm_cid: str) -> list[str]:
        uid = naming.vm_uuid(vm_cid)
        try:
            self.pool.refresh(0)
        except self.lv.libvirtError:
            pass
        return [
            n
            for n in self.pool.listVolumes()
            if n == f"{vm_cid}-root" or n.startswith((naming.EPHEMERAL_PREFIX + uid, naming.CONFIG_PREFIX + uid))
        ]

    def delete_vm(self, vm_cid: str) -> None:
        if not self._destroy_and_undefine(vm_cid):
            log.info(f"VM {vm_cid} is already gone")
        for name in self._own_volumes(vm_cid):
            self._delete_volume(name)
        try:
            os.unlink(self.console_log(vm_cid))
        except OSError:
            pass

    def has_vm(self, vm_cid: str) -> bool:
        return self._domain(vm_cid) is not None

    def reboot_vm(self, vm_cid: str) -> None:
        dom = self._domain(vm_cid, "reboot_vm")
        try:
            # A power cycle (not an ACPI request a hung guest may ignore); it also boots with the
            # latest config drive.
            if dom.isActive():
                dom.destroy()
            dom.create()
        except self.lv.libvirtError as e:
            raise self._err(e, "reboot_vm") from None

    def _set_meta(
        self,
        dom: Any,
        values: dict[str, str],
        remove: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        root = ET.fromstring(dom.metadata(self.lv.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.NS, 0))
        current = {child.tag: child.text or "" for child in root if child.tag != "tag"}
        current_tags = {child.get("name", ""): child.text or "" for child in root if child.tag == "tag"}
        for k, v in values.items():
            if remove:
                current.pop(k, None)
            else:
                current[k] = v
        current_tags.update(tags or {})
        flags = self.lv.VIR_DOMAIN_AFFECT_CONFIG | (self.lv.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(
            self.lv.VIR_DOMAIN_METADATA_ELEMENT,
            dom_xml.metadata_xml(current, current_tags, False),
            dom_xml.NS_PREFIX,
            dom_xml.NS,
            flags,
        )

    def vm_metadata(self, vm_cid: str) -> dict[str, Any]:
        dom = self._domain(vm_cid, "metadata")
        root = ET.fromstring(dom.metadata(self.lv.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.NS, 0))
        out: dict[str, Any] = {child.tag: child.text or "" for child in root if child.tag != "tag"}
        out["tags"] = {child.get("name", ""): child.text or "" for child in root if child.tag == "tag"}
        return out

    def set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        dom = self._domain(vm_cid, "set_vm_metadata")
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
                dom.setMetadata(self.lv.VIR_DOMAIN_METADATA_TITLE, title.strip("/"), None, None, flags)
        except self.lv.libvirtError as e:
            raise self._err(e, "set_vm_metadata") from None

    # ---- agent settings ----------------------------------------------------------------------
    def _write_config_volume(self, vm_cid: str, settings: dict[str, Any]) -> Any:
        from boshcpi.agent import configdisk

        ac = self.cfg.agent_config
        image = configdisk.build(
            settings, kind=ac.type, label=ac.label, userdata_path=ac.userdata_path, metadata_path=ac.metadata_path
        )
        name = naming.config_volume(vm_cid)
        vol = self._new_volume(name, len(image), "raw")
        try:
            self._upload(vol, [image], len(image))
        except BaseException:
            self._delete_volume(name)
            raise
        return vol

    def _xml(self, dom: Any) -> ET.Element:
        return ET.fromstring(dom.XMLDesc(self.lv.VIR_DOMAIN_XML_INACTIVE))

    def read_settings(self, vm_cid: str) -> dict[str, Any]:
        from boshcpi.agent import configdisk

        dom = self._domain(vm_cid, "read settings")
        for disk in self._xml(dom).iter("disk"):
            target = disk.find("target")
            if target is not None and target.get("dev") == dom_xml.SLOTS["config"]:
                path = disk.find("source").get("file")
                vol = self.conn.storageVolLookupByPath(path)
                return configdisk.read_settings(self._download(vol), userdata_path=self.cfg.agent_config.userdata_path)
        raise CloudError(f"VM {vm_cid} has no config drive")

    def _write_settings(self, dom: Any, settings: dict[str, Any]) -> None:
        vm_cid = dom.name()
        old_path = None
        for disk in self._xml(dom).iter("disk"):
            target = disk.find("target")
            if target is not None and target.get("dev") == dom_xml.SLOTS["config"]:
                old_path = disk.find("source").get("file")
        vol = self._write_config_volume(vm_cid, settings)
        try:
            # A virtio disk's source cannot change live: the new drive takes effect at next boot,
            # when the agent reads its settings again.
            dom.updateDeviceFlags(
                dom_xml.disk_xml(vol.path(), dom_xml.SLOTS["config"], "raw", readonly=True),
                self.lv.VIR_DOMAIN_AFFECT_CONFIG,
            )
        except self.lv.libvirtError as e:
            self._delete_volume(vol.name())
            raise self._err(e, "update config drive") from None
        if old_path and not dom.isActive():
            try:
                self.conn.storageVolLookupByPath(old_path).delete(0)
            except self.lv.libvirtError:
                pass

    # ---- disks ------------------------------------------------------------------------------
    def create_disk(self, spec: DiskSpec) -> str:
        cid = naming.new_disk_cid()
        self._new_volume(cid, spec.size_mb * MiB, "raw")
        log.info(f"created disk {cid} of {spec.size_mb} MiB")
        return cid

    def _require_disk(self, disk_cid: str, action: str) -> Any:
        vol = self._volume(disk_cid)
        if vol is None:
            raise DiskNotFound(f"{action}: disk {disk_cid} not found")
        return vol

    def _disk_users(self, path: str) -> list[str]:
        users = []
        for d in self.conn.listAllDomains(0):
            for disk in self._xml(d).iter("disk"):
                src = disk.find("source")
                if src is not None and src.get("file") == path:
                    users.append(d.name())
        return users

    def has_disk(self, disk_cid: str) -> bool:
        return self._volume(disk_cid) is not None

    def delete_disk(self, disk_cid: str) -> None:
        vol = self._volume(disk_cid)
        if vol is None:
            log.info(f"disk {disk_cid} is already gone")
            return
        users = self._disk_users(vol.path())
        if users:
            raise CloudError(f"delete_disk: disk {disk_cid} is attached to {', '.join(users)}; detach it first")
        self._delete_volume(disk_cid)

    def _persistent(self, dom: Any) -> dict[str, tuple[str, str]]:
        """disk_cid -> (target dev, serial) of the persistent disks in the domain's definition."""
        out = {}
        for disk in self._xml(dom).iter("disk"):
            src, target = disk.find("source"), disk.find("target")
            name = os.path.basename(src.get("file", "")) if src is not None else ""
            if name.startswith(naming.PERSISTENT_PREFIX) and target is not None:
                serial = disk.find("serial")
                out[name] = (target.get("dev", ""), serial.text if serial is not None else "")
        return out

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        dom = self._domain(vm_cid, "attach_disk")
        vol = self._require_disk(disk_cid, "attach_disk")
        attached = self._persistent(dom)
        settings = self.read_settings(vm_cid)
        if disk_cid in attached:
            hint = settings.get("disks", {}).get("persistent", {}).get(disk_cid)
            if hint:
                return hint
        others = [u for u in self._disk_users(vol.path()) if u != vm_cid]
        if others:
            raise CloudError(f"attach_disk: disk {disk_cid} is attached to {', '.join(others)}; detach it first")
        used = {dev for dev, _ in attached.values()}
        dev = next((d for d in dom_xml.PERSISTENT_SLOTS if d not in used), None)
        if dev is None:
            raise CloudError(f"attach_disk: {vm_cid} has no free disk slot")
        serial = naming.persistent_device(disk_cid)
        xml = dom_xml.disk_xml(vol.path(), dev, "raw", serial=serial)
        live = dom.isActive()
        try:
            dom.attachDeviceFlags(
                xml, self.lv.VIR_DOMAIN_AFFECT_CONFIG | (self.lv.VIR_DOMAIN_AFFECT_LIVE if live else 0)
            )
        except self.lv.libvirtError as e:
            if not live:
                raise self._err(e, "attach_disk") from None
            log.warn(f"live attach failed ({e.get_error_message()}); the disk appears at next boot")
            dom.attachDeviceFlags(xml, self.lv.VIR_DOMAIN_AFFECT_CONFIG)
        hint = {"id": serial, "path": f"/dev/{dev}"}
        try:
            self._write_settings(dom, agent_settings.attach_persistent(settings, disk_cid, hint))
        except BaseException:
            self._detach_device(dom, xml)
            raise
        log.info(f"attached {disk_cid} to {vm_cid} as {hint}")
        return hint

    def _detach_device(self, dom: Any, xml: str) -> None:
        flags = self.lv.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            try:
                dom.detachDeviceFlags(xml, self.lv.VIR_DOMAIN_AFFECT_LIVE)
            except self.lv.libvirtError as e:
                log.warn(f"live detach: {e.get_error_message()}")
        try:
            dom.detachDeviceFlags(xml, flags)
        except self.lv.libvirtError as e:
            raise self._err(e, "detach disk") from None

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        dom = self._domain(vm_cid, "detach_disk")
        vol = self._require_disk(disk_cid, "detach_disk")
        attached = self._persistent(dom)
        settings = self.read_settings(vm_cid)
        if disk_cid in attached:
            dev, serial = attached[disk_cid]
            self._detach_device(dom, dom_xml.disk_xml(vol.path(), dev, "raw", serial=serial))
        if disk_cid in settings.get("disks", {}).get("persistent", {}):
            self._write_settings(dom, agent_settings.detach_persistent(settings, disk_cid))

    def get_disks(self, vm_cid: str) -> list[str]:
        return sorted(self._persistent(self._domain(vm_cid, "get_disks")))

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        vol = self._require_disk(disk_cid, "resize_disk")
        current = vol.info()[1]
        new = new_size_mb * MiB
        if new < current:
            raise CloudError(f"resize_disk: cannot shrink {disk_cid} from {current // MiB} MiB to {new_size_mb} MiB")
        if new == current:
            return
        try:
            for name in self._disk_users(vol.path()):
                d = self.conn.lookupByName(name)
                if d.isActive():
                    dev = self._persistent(d)[disk_cid][0]
                    d.blockResize(dev, new, self.lv.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                    return
            vol.resize(new, 0)
        except self.lv.libvirtError as e:
            raise self._err(e, "resize_disk") from None

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
            self.pool.createXMLFrom(xml, vol, 0)
        except self.lv.libvirtError as e:
            raise self._err(e, "snapshot_disk") from None
        return cid

    def delete_snapshot(self, snapshot_cid: str) -> None:
        if naming.split_snapshot_cid(snapshot_cid) is None:
            raise CpiError(f"delete_snapshot: {snapshot_cid!r} is not a boshcpi snapshot cid")
        self._delete_volume(snapshot_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        vol = self._require_disk(disk_cid, "set_disk_metadata")
        # Volumes carry no metadata in libvirt: record it on the domain the disk is attached to.
        for name in self._disk_users(vol.path()):
            self._set_meta(
                self.conn.lookupByName(name), {}, tags={f"disk.{disk_cid}.{k}": str(v) for k, v in metadata.items()}
            )


def _now() -> str:
    import time

    return str(int(time.time()))
