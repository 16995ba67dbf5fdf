"""The libvirt objects the driver uses (connection, domain, storage pool and volume, network, stream),
each method one REMOTE_PROGRAM procedure of libvirt's `src/remote/remote_protocol.x`, with the
argument and return structs written as that file has them. Method names and constants are
libvirt-python's, so the driver reads as it did on the C binding; nothing here links a C library.
"""

from __future__ import annotations

from boshcpi.drivers.libvirt import rpc
from boshcpi.drivers.libvirt.rpc import LibvirtError
from boshcpi.drivers.libvirt.xdr import Packer, Unpacker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

libvirtError = LibvirtError  # libvirt-python's name

# Error codes (virterror.h) and flags (libvirt-domain.h, libvirt-storage.h) the driver uses.
VIR_ERR_NO_CONNECT = rpc.ERR_NO_CONNECT
VIR_ERR_SYSTEM_ERROR = rpc.ERR_SYSTEM_ERROR
VIR_ERR_RPC = rpc.ERR_RPC
VIR_ERR_NO_DOMAIN = rpc.ERR_NO_DOMAIN
VIR_ERR_NO_NETWORK = rpc.ERR_NO_NETWORK
VIR_ERR_NO_STORAGE_POOL = rpc.ERR_NO_STORAGE_POOL
VIR_ERR_NO_STORAGE_VOL = rpc.ERR_NO_STORAGE_VOL
VIR_ERR_OPERATION_INVALID = rpc.ERR_OPERATION_INVALID
VIR_ERR_NO_DOMAIN_METADATA = rpc.ERR_NO_DOMAIN_METADATA
VIR_DOMAIN_AFFECT_CURRENT = 0
VIR_DOMAIN_AFFECT_LIVE = 1
VIR_DOMAIN_AFFECT_CONFIG = 2
VIR_DOMAIN_DEVICE_MODIFY_FORCE = 4
VIR_DOMAIN_XML_INACTIVE = 2
VIR_DOMAIN_UNDEFINE_MANAGED_SAVE = 1
VIR_STORAGE_POOL_CREATE_WITH_BUILD = 1
VIR_STORAGE_POOL_RUNNING = 2
VIR_DOMAIN_UNDEFINE_NVRAM = 4
VIR_DOMAIN_METADATA_DESCRIPTION = 0
VIR_DOMAIN_METADATA_TITLE = 1
VIR_DOMAIN_METADATA_ELEMENT = 2
VIR_DOMAIN_BLOCK_RESIZE_BYTES = 1

# REMOTE_PROC_* numbers (remote_protocol.x, enum remote_procedure)
P_DOMAIN_DEFINE_XML = 11
P_DOMAIN_DESTROY = 12
P_DOMAIN_GET_XML_DESC = 14
P_DOMAIN_LOOKUP_BY_NAME = 23
P_NETWORK_CREATE = 39
P_NETWORK_DEFINE_XML = 41
P_NETWORK_GET_XML_DESC = 43
P_NETWORK_LOOKUP_BY_NAME = 46
P_NETWORK_SET_AUTOSTART = 48
P_STORAGE_POOL_DEFINE_XML = 77
P_STORAGE_POOL_CREATE = 78
P_STORAGE_POOL_DESTROY = 80
P_STORAGE_POOL_UNDEFINE = 82
P_STORAGE_POOL_REFRESH = 83
P_STORAGE_POOL_LOOKUP_BY_NAME = 84
P_STORAGE_POOL_GET_INFO = 87
P_STORAGE_POOL_SET_AUTOSTART = 90
P_STORAGE_VOL_CREATE_XML = 93
P_STORAGE_VOL_DELETE = 94
P_STORAGE_VOL_LOOKUP_BY_NAME = 95
P_STORAGE_VOL_LOOKUP_BY_PATH = 97
P_STORAGE_VOL_GET_INFO = 98
P_STORAGE_VOL_GET_XML_DESC = 99
P_STORAGE_VOL_GET_PATH = 100
P_STORAGE_VOL_CREATE_XML_FROM = 125
P_DOMAIN_IS_ACTIVE = 150
P_NETWORK_IS_ACTIVE = 152
P_GET_LIB_VERSION = 157
P_DOMAIN_ATTACH_DEVICE_FLAGS = 160
P_DOMAIN_DETACH_DEVICE_FLAGS = 161
P_DOMAIN_UPDATE_DEVICE_FLAGS = 174
P_DOMAIN_CREATE_WITH_FLAGS = 196
P_STORAGE_VOL_UPLOAD = 208
P_STORAGE_VOL_DOWNLOAD = 209
P_DOMAIN_UNDEFINE_FLAGS = 231
P_DOMAIN_BLOCK_RESIZE = 251
P_STORAGE_VOL_RESIZE = 260
P_DOMAIN_SET_METADATA = 264
P_DOMAIN_GET_METADATA = 265
P_CONNECT_LIST_ALL_DOMAINS = 273
P_STORAGE_POOL_LIST_ALL_VOLUMES = 282
P_CONNECT_GET_DOMAIN_CAPABILITIES = 342
P_SECRET_DEFINE_XML = 142
P_SECRET_GET_XML_DESC = 143
P_SECRET_UNDEFINE = 146
P_SECRET_LOOKUP_BY_USAGE = 147
P_CONNECT_LIST_ALL_SECRETS = 287
VIR_SECRET_USAGE_TYPE_CEPH = 2  # a usage named by a free string (virsecret.h)
VIR_ERR_NO_SECRET = 66


def open(uri: str, *, client_cert: str = "", client_key: str = "", ca_cert: str = "") -> Connection:
    """libvirt-python's `libvirt.open`, with the TLS material passed in (never written to a disk)."""
    client = rpc.Client(uri, client_cert=client_cert, client_key=client_key, ca_cert=ca_cert)
    client.open()
    return Connection(client)


class Connection:
    def __init__(self, client: rpc.Client) -> None:
        self.client = client

    def _call(self, proc: int, args: Packer | None = None) -> Unpacker:
        return self.client.call(proc, args)

    def close(self) -> int:
        self.client.goodbye()
        return 0

    # ---- the connection ----------------------------------------------------------------------
    def getLibVersion(self) -> int:
        return self._call(P_GET_LIB_VERSION).uhyper()

    def getDomainCapabilities(
        self, emulatorbin: str | None, arch: str | None, machine: str | None, virttype: str | None, flags: int = 0
    ) -> str:
        p = Packer().optional_string(emulatorbin).optional_string(arch).optional_string(machine)
        return self._call(P_CONNECT_GET_DOMAIN_CAPABILITIES, p.optional_string(virttype).uint(flags)).string()

    # ---- domains -----------------------------------------------------------------------------
    def lookupByName(self, name: str) -> Domain:
        return Domain(self, self._call(P_DOMAIN_LOOKUP_BY_NAME, Packer().string(name)))

    def defineXML(self, xml: str) -> Domain:
        return Domain(self, self._call(P_DOMAIN_DEFINE_XML, Packer().string(xml)))

    def listAllDomains(self, flags: int = 0) -> list[Domain]:
        u = self._call(P_CONNECT_LIST_ALL_DOMAINS, Packer().int(1).uint(flags))
        return u.array(lambda: Domain(self, u))

    # ---- storage -----------------------------------------------------------------------------
    def storagePoolLookupByName(self, name: str) -> StoragePool:
        return StoragePool(self, self._call(P_STORAGE_POOL_LOOKUP_BY_NAME, Packer().string(name)))

    def storagePoolDefineXML(self, xml: str, flags: int = 0) -> StoragePool:
        return StoragePool(self, self._call(P_STORAGE_POOL_DEFINE_XML, Packer().string(xml).uint(flags)))

    def storageVolLookupByPath(self, path: str) -> StorageVol:
        return StorageVol(self, self._call(P_STORAGE_VOL_LOOKUP_BY_PATH, Packer().string(path)))

    def networkLookupByName(self, name: str) -> Network:
        return Network(self, self._call(P_NETWORK_LOOKUP_BY_NAME, Packer().string(name)))

    def networkDefineXML(self, xml: str) -> Network:
        return Network(self, self._call(P_NETWORK_DEFINE_XML, Packer().string(xml)))

    def newStream(self, flags: int = 0) -> Stream:
        return Stream(self.client)

    # ---- secrets -----------------------------------------------------------------------------
    def secretDefineXML(self, xml: str, flags: int = 0) -> Secret:
        return Secret(self, self._call(P_SECRET_DEFINE_XML, Packer().string(xml).uint(flags)))

    def secretLookupByUsage(self, usage_type: int, usage_id: str) -> Secret:
        return Secret(self, self._call(P_SECRET_LOOKUP_BY_USAGE, Packer().int(usage_type).string(usage_id)))

    def listAllSecrets(self, flags: int = 0) -> list[Secret]:
        u = self._call(P_CONNECT_LIST_ALL_SECRETS, Packer().int(1).uint(flags))
        return u.array(lambda: Secret(self, u))


class Secret:
    """remote_nonnull_secret: uuid, usage type, usage id."""

    __slots__ = ("conn", "usage_id", "usage_type", "uuid")

    def __init__(self, conn: Connection, u: Unpacker) -> None:
        self.conn = conn
        self.uuid = u.fixed(16)
        self.usage_type = u.int()
        self.usage_id = u.string()

    def _ref(self) -> Packer:
        return Packer().fixed(self.uuid).int(self.usage_type).string(self.usage_id)

    def usageID(self) -> str:
        return self.usage_id

    def UUIDString(self) -> str:
        h = self.uuid.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def XMLDesc(self, flags: int = 0) -> str:
        return self.conn._call(P_SECRET_GET_XML_DESC, self._ref().uint(flags)).string()

    def undefine(self) -> int:
        self.conn._call(P_SECRET_UNDEFINE, self._ref())
        return 0


class Domain:
    """remote_nonnull_domain: name, uuid, id."""

    __slots__ = ("_name", "conn", "id", "uuid")

    def __init__(self, conn: Connection, u: Unpacker) -> None:
        self.conn = conn
        self._name = u.string()
        self.uuid = u.fixed(16)
        self.id = u.int()

    def _ref(self) -> Packer:
        return Packer().string(self._name).fixed(self.uuid).int(self.id)

    def _call(self, proc: int, more: Callable[[Packer], Packer] | None = None) -> Unpacker:
        p = self._ref()
        return self.conn._call(proc, more(p) if more else p)

    def name(self) -> str:
        return self._name

    def XMLDesc(self, flags: int = 0) -> str:
        return self._call(P_DOMAIN_GET_XML_DESC, lambda p: p.uint(flags)).string()

    def isActive(self) -> int:
        return self._call(P_DOMAIN_IS_ACTIVE).int()

    def create(self) -> int:
        return self.createWithFlags(0)

    def createWithFlags(self, flags: int = 0) -> int:
        u = self._call(P_DOMAIN_CREATE_WITH_FLAGS, lambda p: p.uint(flags))
        self.id = Domain(self.conn, u).id  # the running domain's id
        return 0

    def destroy(self) -> int:
        self._call(P_DOMAIN_DESTROY)
        self.id = -1
        return 0

    def undefineFlags(self, flags: int = 0) -> int:
        self._call(P_DOMAIN_UNDEFINE_FLAGS, lambda p: p.uint(flags))
        return 0

    def setMetadata(self, type: int, metadata: str | None, key: str | None, uri: str | None, flags: int = 0) -> int:
        self._call(
            P_DOMAIN_SET_METADATA,
            lambda p: p.int(type).optional_string(metadata).optional_string(key).optional_string(uri).uint(flags),
        )
        return 0

    def metadata(self, type: int, uri: str | None, flags: int = 0) -> str:
        return self._call(P_DOMAIN_GET_METADATA, lambda p: p.int(type).optional_string(uri).uint(flags)).string()

    def attachDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._call(P_DOMAIN_ATTACH_DEVICE_FLAGS, lambda p: p.string(xml).uint(flags))
        return 0

    def detachDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._call(P_DOMAIN_DETACH_DEVICE_FLAGS, lambda p: p.string(xml).uint(flags))
        return 0

    def updateDeviceFlags(self, xml: str, flags: int = 0) -> int:
        self._call(P_DOMAIN_UPDATE_DEVICE_FLAGS, lambda p: p.string(xml).uint(flags))
        return 0

    def blockResize(self, disk: str, size: int, flags: int = 0) -> int:
        self._call(P_DOMAIN_BLOCK_RESIZE, lambda p: p.string(disk).uhyper(size).uint(flags))
        return 0


class StoragePool:
    """remote_nonnull_storage_pool: name, uuid."""

    __slots__ = ("_name", "conn", "uuid")

    def __init__(self, conn: Connection, u: Unpacker) -> None:
        self.conn = conn
        self._name = u.string()
        self.uuid = u.fixed(16)

    def _ref(self) -> Packer:
        return Packer().string(self._name).fixed(self.uuid)

    def name(self) -> str:
        return self._name

    def refresh(self, flags: int = 0) -> int:
        self.conn._call(P_STORAGE_POOL_REFRESH, self._ref().uint(flags))
        return 0

    def create(self, flags: int = 0) -> int:
        self.conn._call(P_STORAGE_POOL_CREATE, self._ref().uint(flags))
        return 0

    def destroy(self) -> int:
        self.conn._call(P_STORAGE_POOL_DESTROY, self._ref())
        return 0

    def setAutostart(self, autostart: int) -> int:
        self.conn._call(P_STORAGE_POOL_SET_AUTOSTART, self._ref().int(autostart))
        return 0

    def undefine(self) -> int:
        self.conn._call(P_STORAGE_POOL_UNDEFINE, self._ref())
        return 0

    def info(self) -> list[int]:
        """[state, capacity, allocation, available] (remote_storage_pool_get_info_ret)."""
        u = self.conn._call(P_STORAGE_POOL_GET_INFO, self._ref())
        return [u.uint(), u.uhyper(), u.uhyper(), u.uhyper()]

    def listAllVolumes(self, flags: int = 0) -> list[StorageVol]:
        u = self.conn._call(P_STORAGE_POOL_LIST_ALL_VOLUMES, self._ref().int(1).uint(flags))
        return u.array(lambda: StorageVol(self.conn, u))

    def listVolumes(self) -> list[str]:
        return [v.name() for v in self.listAllVolumes()]

    def storageVolLookupByName(self, name: str) -> StorageVol:
        return StorageVol(self.conn, self.conn._call(P_STORAGE_VOL_LOOKUP_BY_NAME, self._ref().string(name)))

    def createXML(self, xml: str, flags: int = 0) -> StorageVol:
        return StorageVol(self.conn, self.conn._call(P_STORAGE_VOL_CREATE_XML, self._ref().string(xml).uint(flags)))

    def createXMLFrom(self, xml: str, clonevol: StorageVol, flags: int = 0) -> StorageVol:
        p = self._ref().string(xml)
        p.buf += clonevol._ref().buf
        return StorageVol(self.conn, self.conn._call(P_STORAGE_VOL_CREATE_XML_FROM, p.uint(flags)))


class StorageVol:
    """remote_nonnull_storage_vol: pool, name, key."""

    __slots__ = ("_name", "conn", "key_", "pool")

    def __init__(self, conn: Connection, u: Unpacker) -> None:
        self.conn = conn
        self.pool = u.string()
        self._name = u.string()
        self.key_ = u.string()

    def _ref(self) -> Packer:
        return Packer().string(self.pool).string(self._name).string(self.key_)

    def name(self) -> str:
        return self._name

    def key(self) -> str:
        return self.key_

    def path(self) -> str:
        return self.conn._call(P_STORAGE_VOL_GET_PATH, self._ref()).string()

    def XMLDesc(self, flags: int = 0) -> str:
        return self.conn._call(P_STORAGE_VOL_GET_XML_DESC, self._ref().uint(flags)).string()

    def info(self) -> list[int]:
        """[type, capacity, allocation] (remote_storage_vol_get_info_ret)."""
        u = self.conn._call(P_STORAGE_VOL_GET_INFO, self._ref())
        return [u.int(), u.uhyper(), u.uhyper()]

    def delete(self, flags: int = 0) -> int:
        self.conn._call(P_STORAGE_VOL_DELETE, self._ref().uint(flags))
        return 0

    def resize(self, capacity: int, flags: int = 0) -> int:
        self.conn._call(P_STORAGE_VOL_RESIZE, self._ref().uhyper(capacity).uint(flags))
        return 0

    def upload(self, stream: Stream, offset: int, length: int, flags: int = 0) -> int:
        stream._open(P_STORAGE_VOL_UPLOAD, self._ref().uhyper(offset).uhyper(length).uint(flags))
        return 0

    def download(self, stream: Stream, offset: int, length: int, flags: int = 0) -> int:
        stream._open(P_STORAGE_VOL_DOWNLOAD, self._ref().uhyper(offset).uhyper(length).uint(flags))
        return 0


class Network:
    """remote_nonnull_network: name, uuid."""

    __slots__ = ("_name", "conn", "uuid")

    def __init__(self, conn: Connection, u: Unpacker) -> None:
        self.conn = conn
        self._name = u.string()
        self.uuid = u.fixed(16)

    def name(self) -> str:
        return self._name

    def _ref(self) -> Packer:
        return Packer().string(self._name).fixed(self.uuid)

    def isActive(self) -> int:
        return self.conn._call(P_NETWORK_IS_ACTIVE, self._ref()).int()

    def XMLDesc(self, flags: int = 0) -> str:
        return self.conn._call(P_NETWORK_GET_XML_DESC, self._ref().uint(flags)).string()

    def create(self) -> int:
        self.conn._call(P_NETWORK_CREATE, self._ref())
        return 0

    def setAutostart(self, autostart: int) -> int:
        self.conn._call(P_NETWORK_SET_AUTOSTART, self._ref().int(autostart))
        return 0


class Stream:
    """One volume upload or download: data goes in STREAM messages of the opening call's serial."""

    def __init__(self, client: rpc.Client) -> None:
        self.client = client
        self.proc = 0
        self.serial = 0
        self.pending = b""

    def _open(self, proc: int, args: Packer) -> None:
        self.proc = proc
        self.serial = self.client.stream_open(proc, args)

    def send(self, data: bytes | memoryview) -> int:
        self.client.stream_send(self.proc, self.serial, data)
        return len(data)

    def recv(self, nbytes: int) -> bytes:
        if not self.pending:
            self.pending = self.client.stream_recv(self.serial)
        out, self.pending = self.pending[:nbytes], self.pending[nbytes:]
        return out

    def finish(self) -> int:
        self.client.stream_finish(self.proc, self.serial)
        return 0

    def abort(self) -> int:
        self.client.stream_abort(self.proc, self.serial)
        return 0
