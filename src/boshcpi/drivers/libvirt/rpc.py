"""libvirt's RPC wire protocol on the standard library: framing, serials, calls, errors and streams,
over a unix socket, TCP or TLS. No libvirt C library is needed (a director VM has none).

The wire format is libvirt's `src/rpc/virnetprotocol.x`: every message is a 4-byte length (counting
itself), a 24-byte header `{prog, vers, proc, type, serial, status}` and an XDR payload. A call is
answered by a REPLY of the same serial, with status OK (the procedure's `_ret` struct) or ERROR (a
`virNetMessageError`, the same struct as `remote_error` in `src/remote/remote_protocol.x`). Streams
(volume upload and download) are STREAM messages under the serial of the call that opened them: data
with status CONTINUE, the end with OK, a failure with ERROR. Flow control is TCP's own: the daemon
sends no per-packet acknowledgement (`src/rpc/virnetclientstream.c`).
"""

from __future__ import annotations

from boshcpi import transport
from boshcpi.drivers.libvirt.xdr import Packer, Unpacker, XDRError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REMOTE_PROGRAM = 0x20008086
REMOTE_PROTOCOL_VERSION = 1

# virNetMessageType and virNetMessageStatus (virnetprotocol.x)
CALL, REPLY, MESSAGE, STREAM = 0, 1, 2, 3
STREAM_HOLE = 6
OK, ERROR, CONTINUE = 0, 1, 2

# virnetprotocol.x: VIR_NET_MESSAGE_MAX, and the largest stream payload every daemon takes
# (VIR_NET_MESSAGE_LEGACY_PAYLOAD_MAX; newer ones take more, older ones refuse more).
MESSAGE_MAX = 32 * 1024 * 1024
STREAM_PAYLOAD = 262120

# remote_protocol.x: remote_auth_type and the auth procedures
AUTH_NONE, AUTH_SASL, AUTH_POLKIT = 0, 1, 2
PROC_AUTH_LIST = 66
PROC_AUTH_POLKIT = 70
PROC_CONNECT_OPEN = 1
PROC_CONNECT_CLOSE = 2

# virErrorNumber (include/libvirt/virterror.h): the codes the driver tells apart
ERR_INTERNAL_ERROR = 1
ERR_NO_SUPPORT = 3
ERR_NO_CONNECT = 5
ERR_OPERATION_FAILED = 9
ERR_SYSTEM_ERROR = 38
ERR_RPC = 39
ERR_NO_DOMAIN = 42
ERR_NO_NETWORK = 43
ERR_AUTH_FAILED = 45
ERR_NO_STORAGE_POOL = 49
ERR_NO_STORAGE_VOL = 50
ERR_OPERATION_INVALID = 55
ERR_NO_DOMAIN_METADATA = 80


class LibvirtError(Exception):
    """libvirtd answered with an error, or could not be reached (`code` ERR_RPC / ERR_NO_CONNECT).
    `permanent`: a certificate or an authentication that a retry will not change."""

    def __init__(self, code: int, message: str, domain: int = 0, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.domain = domain
        self.message = message
        self.permanent = permanent

    # libvirt-python's names, which the driver's error mapping reads.
    def get_error_code(self) -> int:
        return self.code

    def get_error_message(self) -> str:
        return self.message


def read_error(u: Unpacker) -> LibvirtError:
    """A `remote_error` (remote_protocol.x): code, domain, message, level, dom, str1-3, int1-2, net."""
    code, domain = u.int(), u.int()
    message = u.optional(u.string) or "unknown libvirt error"
    return LibvirtError(code, message, domain)


class Target:
    """Where libvirtd is and what to open there, from a libvirt URI: `qemu:///system` (the local
    socket), `qemu+unix:///system?socket=PATH`, `qemu+tcp://host[:16509]/system`,
    `qemu+tls://host[:16514]/system` (`?no_verify=1` skips the server certificate check)."""

    def __init__(self, uri: str) -> None:
        scheme, sep, rest = uri.partition("://")
        if not sep:
            raise LibvirtError(ERR_NO_CONNECT, f"{uri!r} is not a libvirt URI", permanent=True)
        driver, _, self.transport = scheme.partition("+")
        authority, _, path_query = rest.partition("/")
        path, _, query = path_query.partition("?")
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        self.host = ""
        self.port = 0
        if not self.transport:
            self.transport = "tls" if authority else "unix"
        if self.transport == "unix":
            self.socket = params.get("socket") or (
                "/var/run/libvirt/libvirt-sock" if path == "system" else "/var/run/libvirt/virtqemud-sock"
            )
        elif self.transport in ("tcp", "tls"):
            if not authority:
                raise LibvirtError(ERR_NO_CONNECT, f"{uri}: a {self.transport} URI needs a host", permanent=True)
            self.host, self.port = transport.split_hostport(
                authority.rpartition("@")[2], 16509 if self.transport == "tcp" else 16514
            )
        else:
            raise LibvirtError(
                ERR_NO_SUPPORT,
                f"{uri}: transport {self.transport!r} is not supported (use unix, tcp or tls)",
                permanent=True,
            )
        self.no_verify = params.get("no_verify") == "1"
        # What the daemon opens: the driver URI without transport, host and client-side parameters,
        # as libvirt's remote driver sends it (src/remote/remote_driver.c, doRemoteOpen).
        self.name = f"{driver}:///{path}"


class Client:
    """One connection to libvirtd, one call at a time (a CPI process is single-threaded)."""

    def __init__(self, uri: str, *, client_cert: str = "", client_key: str = "", ca_cert: str = "") -> None:
        self.uri = uri
        self.target = Target(uri)
        self._tls = (client_cert, client_key, ca_cert)
        self.sock: Any = None
        self.serial = 0
        self.buf = bytearray()

    # ---- connection ------------------------------------------------------------------------
    def open(self) -> None:
        t = self.target
        self.buf = bytearray()  # what a lost connection left half-read
        try:
            if t.transport == "unix":
                self.sock = transport.unix(t.socket)
            elif t.transport == "tcp":
                self.sock = transport.tcp(t.host, t.port)
            else:
                cert, key, ca = self._tls
                if not (cert and key) and not t.no_verify:
                    raise LibvirtError(
                        ERR_AUTH_FAILED,
                        f"{self.uri}: TLS needs a client certificate and key (libvirt.client)",
                        permanent=True,
                    )
                ctx = transport.tls_context(cert, key, ca_cert=ca, insecure=t.no_verify)
                self.sock = transport.tls(t.host, t.port, ctx)
                # libvirtd checks the client certificate after the handshake and says so with one byte
                # (src/rpc/virnetserverclient.c; virnetclient.c reads it): 1 when it was accepted.
                ack = self.sock.recv(1)
                if ack != b"\x01":
                    raise LibvirtError(
                        ERR_AUTH_FAILED,
                        f"{self.uri}: libvirtd refused this client certificate (is it signed by the CA "
                        "libvirtd trusts, and its name in tls_allowed_dn_list?)",
                        permanent=True,
                    )
        except LibvirtError:
            self.close()
            raise
        except OSError as e:
            self.close()
            if transport.verify_failed(e):
                raise LibvirtError(
                    ERR_AUTH_FAILED,
                    f"cannot connect to {self.uri}: libvirtd's certificate does not verify against "
                    f"libvirt.server_ca ({e})",
                    permanent=True,
                ) from None
            raise LibvirtError(ERR_NO_CONNECT, f"cannot connect to {self.uri}: {e}") from None
        self._authenticate()
        self.call(PROC_CONNECT_OPEN, Packer().optional_string(self.target.name).uint(0))

    def _authenticate(self) -> None:
        u = self.call(PROC_AUTH_LIST)
        kinds = u.array(u.int, 20)
        if not kinds or AUTH_NONE in kinds:
            return
        if AUTH_POLKIT in kinds:
            self.call(PROC_AUTH_POLKIT)
            return
        raise LibvirtError(
            ERR_NO_SUPPORT,
            f"{self.uri}: libvirtd asks for SASL authentication, which boshcpi does not speak; set "
            'auth_tcp = "none" (on a listener only the director reaches) or use TLS client certificates',
            permanent=True,
        )

    def close(self) -> None:
        if self.sock is None:
            return
        sock, self.sock = self.sock, None
        try:
            sock.close()
        except OSError:
            pass

    def goodbye(self) -> None:
        """CONNECT_CLOSE, then the socket: libvirtd frees the connection's objects at once."""
        if self.sock is not None:
            try:
                self.call(PROC_CONNECT_CLOSE)
            except LibvirtError:
                pass
        self.close()

    # ---- messages ----------------------------------------------------------------------------
    def _send(self, proc: int, kind: int, serial: int, status: int, payload: bytes | memoryview = b"") -> None:
        n = 28 + len(payload)
        head = (
            n.to_bytes(4, "big")
            + REMOTE_PROGRAM.to_bytes(4, "big")
            + REMOTE_PROTOCOL_VERSION.to_bytes(4, "big")
            + proc.to_bytes(4, "big")
            + kind.to_bytes(4, "big")
            + serial.to_bytes(4, "big")
            + status.to_bytes(4, "big")
        )
        if self.sock is None:
            raise LibvirtError(ERR_RPC, f"{self.uri}: not connected (the connection was lost)")
        try:
            self.sock.sendall(head + payload if len(payload) <= STREAM_PAYLOAD else head)
            if len(payload) > STREAM_PAYLOAD:
                self.sock.sendall(payload)
        except OSError as e:
            self.close()
            raise LibvirtError(ERR_RPC, f"{self.uri}: connection lost while sending: {e}") from None

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except OSError as e:
                self.close()
                raise LibvirtError(ERR_RPC, f"{self.uri}: connection lost: {e}") from None
            if not chunk:
                self.close()
                raise LibvirtError(ERR_RPC, f"{self.uri}: libvirtd closed the connection")
            self.buf += chunk

    def _receive(self) -> tuple[int, int, int, int, bytes]:
        """The next message: (proc, type, serial, status, payload)."""
        if self.sock is None:
            raise LibvirtError(ERR_RPC, f"{self.uri}: not connected")
        self._fill(4)
        n = int.from_bytes(self.buf[:4], "big")
        if n < 28 or n > MESSAGE_MAX:
            self.close()
            raise LibvirtError(ERR_RPC, f"{self.uri}: a message of {n} bytes is not libvirt's protocol")
        self._fill(n)
        msg = bytes(self.buf[:n])
        del self.buf[:n]
        prog = int.from_bytes(msg[4:8], "big")
        proc, kind, serial, status = (int.from_bytes(msg[i : i + 4], "big") for i in (12, 16, 20, 24))
        if prog != REMOTE_PROGRAM:
            return proc, -1, serial, status, b""  # keepalive or another program: not ours
        return proc, kind, serial, status, msg[28:]

    def _await(self, serial: int, kinds: tuple[int, ...]) -> tuple[int, int, bytes]:
        """Messages until one for `serial` of one of `kinds`; events and strays are skipped."""
        while True:
            _, kind, got, status, payload = self._receive()
            if got == serial and kind in kinds:
                return kind, status, payload

    def _raise_for(self, status: int, payload: bytes) -> None:
        if status == ERROR:
            try:
                err = read_error(Unpacker(payload))
            except XDRError:
                err = LibvirtError(ERR_RPC, "libvirtd sent an error that does not decode")
            raise err

    def call(self, proc: int, args: Packer | None = None) -> Unpacker:
        """One procedure call; its `_ret` payload to decode, or its error raised."""
        self.serial += 1
        serial = self.serial
        self._send(proc, CALL, serial, OK, args.buf if args is not None else b"")
        _, status, payload = self._await(serial, (REPLY,))
        self._raise_for(status, payload)
        return Unpacker(payload)

    # ---- streams -----------------------------------------------------------------------------
    def stream_open(self, proc: int, args: Packer) -> int:
        """A call that opens a stream (STORAGE_VOL_UPLOAD / DOWNLOAD); the stream's serial."""
        self.call(proc, args)
        return self.serial

    def stream_send(self, proc: int, serial: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            self._send(proc, STREAM, serial, CONTINUE, view[:STREAM_PAYLOAD])
            view = view[STREAM_PAYLOAD:]

    def stream_recv(self, serial: int) -> bytes:
        """The next data of a download; b"" at its end. A hole (sparse streams) is not asked for."""
        _, status, payload = self._await(serial, (STREAM, STREAM_HOLE))
        self._raise_for(status, payload)
        return payload if status == CONTINUE else b""

    def stream_finish(self, proc: int, serial: int) -> None:
        """The client's end of a stream; libvirtd answers OK once everything is written."""
        self._send(proc, STREAM, serial, OK)
        while True:
            _, status, payload = self._await(serial, (STREAM, REPLY, STREAM_HOLE))
            self._raise_for(status, payload)
            if status == OK:
                return

    def stream_abort(self, proc: int, serial: int) -> None:
        """Tell libvirtd to drop the stream; its answer (an error that says so) is read and dropped."""
        if self.sock is None:
            return
        try:
            self._send(proc, STREAM, serial, ERROR)
            while True:
                _, status, _ = self._await(serial, (STREAM, REPLY, STREAM_HOLE))
                if status != CONTINUE:
                    return
        except LibvirtError:
            self.close()
