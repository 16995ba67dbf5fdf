"""One libvirt host as the driver's modules share it: the connection (unix socket, TCP or TLS), the
configured storage pool, volumes and domains, and the one place libvirt errors become BOSH errors."""

from __future__ import annotations

import os
import time

from boshcpi import ids, log
from boshcpi.drivers.libvirt import domain as dom_xml
from boshcpi.drivers.libvirt import naming, remote, rpc, xmltree
from boshcpi.drivers.libvirt.xmltree import escape
from boshcpi.protocol import BoshError, CloudError, NoDiskSpace, NotSupported, VMNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from boshcpi.config import Config

CHUNK = 1 << 20
DOWNLOAD_TRIES = 5
DOWNLOAD_STALL = 15.0  # seconds without a byte of a volume download before it is read again
MiB = 1 << 20


class LibvirtHost:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lc = cfg.libvirt
        self._conn: Any = None
        self._pool: Any = None
        self.lv = remote

    # ---- connection -------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        """libvirtd on this machine (qemu:///system, qemu+unix:///...): then its files are ours to see.
        A remote URI (qemu+tls://host/system) names a host whose filesystem this process never sees."""
        _, _, rest = self.lc.uri.partition("://")
        return rest.startswith("/")

    @property
    def conn(self) -> Any:
        if self._conn is None:
            try:
                self._conn = remote.open(
                    self.lc.uri,
                    client_cert=self.lc.tls_client_cert,
                    client_key=self.lc.tls_client_key,
                    ca_cert=self.lc.tls_ca_cert,
                )
            except remote.libvirtError as e:
                if e.code == rpc.ERR_NO_SUPPORT:  # SASL, or a transport boshcpi does not speak
                    raise NotSupported(f"cannot connect to libvirt at {self.lc.uri}: {e.message}") from None
                # A certificate that does not verify, or an authentication refused, stays that way.
                raise CloudError(
                    f"cannot connect to libvirt at {self.lc.uri}: {e.message}", ok_to_retry=not e.permanent
                ) from None
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
                pool = self.conn.storagePoolLookupByName(self.lc.storage_pool_name)
            except self.lv.libvirtError as e:
                raise CloudError(f"storage pool {self.lc.storage_pool_name!r}: {e.get_error_message()}") from None
            # No refresh: libvirtd knows every volume made through it (by any client), and a refresh
            # re-reads every volume's header (a cost that grows with the pool) and is refused while
            # another call creates a volume. `cleanup` refreshes, for files put in by hand.
            self._pool = pool
        return self._pool

    def err(self, e: Any, action: str) -> BoshError:
        code = e.get_error_code()
        msg = e.get_error_message()
        lowered = (msg or "").lower()
        if "no space" in lowered:
            return NoDiskSpace(f"{action}: {msg}")
        retry = code in (self.lv.VIR_ERR_SYSTEM_ERROR, self.lv.VIR_ERR_RPC, self.lv.VIR_ERR_NO_CONNECT)
        return CloudError(f"{action}: {msg}", ok_to_retry=retry)

    # ---- volumes ------------------------------------------------------------------------------
    def volume(self, name: str) -> Any | None:
        try:
            return self.pool.storageVolLookupByName(name)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise self.err(e, f"volume {name}") from None

    def volume_by_path(self, path: str) -> Any | None:
        try:
            return self.conn.storageVolLookupByPath(path)
        except self.lv.libvirtError:
            return None

    def delete_volume(self, name: str) -> None:
        vol = self.volume(name)
        if vol is None:
            return
        try:
            vol.delete(0)
        except self.lv.libvirtError as e:
            if e.get_error_code() != self.lv.VIR_ERR_NO_STORAGE_VOL:
                log.warn(f"cannot delete volume {name}: {e.get_error_message()}")

    def new_volume(self, name: str, size_bytes: int, fmt: str, backing: tuple[str, str] | None = None) -> Any:
        xml = (
            f"<volume><name>{escape(name)}</name><capacity unit='bytes'>{size_bytes}</capacity>"
            f"<allocation unit='bytes'>0</allocation><target><format type='{fmt}'/></target>"
        )
        if backing:
            xml += f"<backingStore><path>{escape(backing[0])}</path><format type='{backing[1]}'/></backingStore>"
        xml += "</volume>"
        try:
            return self.pool.createXML(xml, 0)
        except self.lv.libvirtError as e:
            raise self.err(e, f"create volume {name}") from None

    def upload(self, vol: Any, chunks: Iterable[bytes], length: int) -> None:
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

    def download(self, vol: Any, limit: int = 64 * MiB) -> bytes:
        """A volume's bytes (at most `limit`), checked against its size and read again when short.

        Right after each upload libvirtd clears and refreshes the pool's volumes in a thread of its own
        (libvirt `storage_driver.c` virStorageVolPoolRefreshThread). Concurrent attach_disk calls, each
        reading the config drive the one before had just uploaded, saw a download in that moment end
        at once with no data (about 1 in 30 runs; the same download 10 ms later was whole), or send
        nothing and never end. So a short read is read again, and a stalled one is given up after
        DOWNLOAD_STALL seconds and read again on a new connection."""
        size = min(vol.info()[1], limit)
        got = 0
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            client = self.conn.client
            try:
                out = self._download_once(vol, size)
            except remote.libvirtError as e:
                if client.sock is not None or attempt == DOWNLOAD_TRIES:  # an error libvirtd sent, or the last try
                    raise
                log.warn(f"reading volume {vol.name()}: {e.message}; reading it again on a new connection")
                client.open()
                continue
            if len(out) >= size:
                return out
            got = len(out)
            log.debug(f"reading volume {vol.name()}: {got} of {size} bytes; reading it again")
            time.sleep(0.02 * attempt)
        raise CloudError(f"volume {vol.name()} reads back {got} of its {size} bytes", ok_to_retry=True)

    def _download_once(self, vol: Any, size: int) -> bytes:
        client = self.conn.client
        stream = self.conn.newStream(0)
        vol.download(stream, 0, size, 0)
        client.stall, client.last_message = DOWNLOAD_STALL, time.monotonic()
        try:
            out = bytearray()
            while True:
                data = stream.recv(CHUNK)
                if not data:
                    break
                out += data
            stream.finish()
        finally:
            client.stall = None
        return bytes(out)

    def lock(self, key: str, action: str) -> Any:
        """libvirtd-held lock of a VM cid (locks.py), for a read-modify-write of the domain."""
        from boshcpi.drivers.libvirt import locks

        return locks.lock(self, key, action, 600.0)

    def clock(self) -> float | None:
        """libvirtd's clock: this machine's where libvirtd is local, else the timestamp of a probe
        volume made and deleted at once (None where the pool reports no timestamps)."""
        import time

        if self.is_local:
            return time.time()
        name = PROBE_PREFIX + os.urandom(6).hex()
        try:
            vol = self.new_volume(name, 0, "raw")
        except BoshError as e:
            log.warn(f"cannot read the libvirt host's clock: {e.message}")
            return None
        try:
            return mtime(vol)
        finally:
            self.delete_volume(name)

    def volume_age(self, name: str, now: float | None = None) -> float | None:
        """How old a volume is by libvirtd's clock; None where that cannot be told (or it is gone)."""
        vol = self.volume(name)
        then = mtime(vol) if vol is not None else None
        now = self.clock() if now is None else now
        return None if then is None or now is None else max(0.0, now - then)

    def capacity_bytes(self) -> int:
        try:
            return int(self.pool.info()[1])
        except self.lv.libvirtError:
            return 0

    def free_bytes(self) -> int:
        try:
            return int(self.pool.info()[3])
        except self.lv.libvirtError:
            return 0

    # ---- domains ------------------------------------------------------------------------------
    def domain(self, vm_cid: str) -> Any | None:
        if not ids.is_vm_cid(vm_cid):
            return None
        try:
            return self.conn.lookupByName(vm_cid)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN:
                return None
            raise self.err(e, f"domain {vm_cid}") from None

    def xml(self, dom: Any) -> xmltree.Element:
        return xmltree.fromstring(dom.XMLDesc(self.lv.VIR_DOMAIN_XML_INACTIVE))

    def disks(self, dom: Any, live: bool = False) -> list[dict[str, str]]:
        """Each disk of the domain's definition (or, with `live`, of the running domain): device, target
        dev and bus, source path, volume name, serial."""
        out = []
        root = xmltree.fromstring(dom.XMLDesc(0)) if live else self.xml(dom)
        for disk in root.iter("disk"):
            src, target, serial = disk.find("source"), disk.find("target"), disk.find("serial")
            path = src.get("file", "") if src is not None else ""
            out.append(
                {
                    "device": disk.get("device", "disk"),
                    "dev": target.get("dev", "") if target is not None else "",
                    "bus": target.get("bus", "") if target is not None else "",
                    "path": path,
                    "volume": os.path.basename(path),
                    "serial": serial.text or "" if serial is not None else "",
                }
            )
        return out

    def metadata(self, dom: Any) -> dict[str, Any] | None:
        """boshcpi's <metadata> values of a domain, or None where it has none."""
        try:
            root = xmltree.fromstring(dom.metadata(self.lv.VIR_DOMAIN_METADATA_ELEMENT, dom_xml.NS, 0))
        except self.lv.libvirtError:
            return None
        out: dict[str, Any] = {child.tag: child.text or "" for child in root if child.tag != "tag"}
        out["tags"] = {child.get("name", ""): child.text or "" for child in root if child.tag == "tag"}
        return out

    def set_metadata(
        self, dom: Any, values: dict[str, str], remove: bool = False, tags: dict[str, str] | None = None
    ) -> None:
        """Change boshcpi's <metadata> of a domain (in its definition, and live when it runs)."""
        current = self.metadata(dom) or {}
        current_tags = dict(current.pop("tags", {}) or {})
        for k, v in values.items():
            if remove:
                current.pop(k, None)
            else:
                current[k] = v
        current_tags.update(tags or {})
        lv = self.lv
        flags = lv.VIR_DOMAIN_AFFECT_CONFIG | (lv.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(
            lv.VIR_DOMAIN_METADATA_ELEMENT,
            dom_xml.metadata_xml(current, current_tags, False),
            dom_xml.NS_PREFIX,
            dom_xml.NS,
            flags,
        )

    def is_owned(self, dom: Any) -> bool:
        """A domain boshcpi defined (its metadata says so), or one in the Go libvirt CPI's layout (a
        boot clone `bdisk-<its uuid>`): anything else, even under a vm-<uuid> name, is not ours."""
        if dom is None:
            return False
        meta = self.metadata(dom)
        if meta is not None and meta.get("created_by") == "boshcpi":
            return True
        uid = ids.vm_uuid(dom.name())
        return any(d["volume"] == naming.GO_BOOT_PREFIX + uid for d in self.disks(dom))

    def owned_domain(self, vm_cid: str, action: str) -> Any:
        dom = self.domain(vm_cid)
        if dom is None or not self.is_owned(dom):
            raise VMNotFound(f"{action}: VM {vm_cid} not found")
        return dom

    def all_domains(self) -> list[Any]:
        return list(self.conn.listAllDomains(0))


PROBE_PREFIX = "boshcpi-clock-"


def mtime(vol: Any) -> float | None:
    """A volume's modification time on the libvirt host, from its XML (dir and fs pools report it)."""
    try:
        el = xmltree.fromstring(vol.XMLDesc(0)).find("target/timestamps/mtime")
    except Exception:
        return None
    try:
        return float(el.text) if el is not None and el.text else None
    except ValueError:
        return None
