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

import time

from boshcpi import transport
from boshcpi.drivers.libvirt.errors import (  # noqa: F401 - the codes callers read as rpc.ERR_*
    ERR_AUTH_FAILED,
    ERR_INTERNAL_ERROR,
    ERR_NO_CONNECT,
    ERR_NO_DOMAIN,
    ERR_NO_DOMAIN_METADATA,
    ERR_NO_NETWORK,
    ERR_NO_STORAGE_POOL,
    ERR_NO_STORAGE_VOL,
    ERR_NO_SUPPORT,
    ERR_OPERATION_FAILED,
    ERR_OPERATION_INVALID,
    ERR_RPC,
    ERR_SYSTEM_ERROR,
    LibvirtError,
    XDRError,
)
from boshcpi.drivers.libvirt.xdr import Packer, Unpacker

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

REMOTE_PROGRAM = 0x20008086
REMOTE_PROTOCOL_VERSION = 1

# virNetMessageType and virNetMessageStatus (virnetprotocol.x)
CALL, REPLY, MESSAGE, STREAM = 0, 1, 2, 3
STREAM_HOLE = 6
OK, ERROR, CONTINUE = 0, 1, 2

# virkeepaliveprotocol.x: the keepalive program. A PING (or PONG) is a MESSAGE with serial 0, status 0
# and no payload (virkeepalive.c virKeepAliveMessage); libvirtd answers every client's PING with a
# PONG, negotiated or not (virnetserverclient.c runs virKeepAliveCheckMessage on every message).
KEEPALIVE_PROGRAM = 0x6B656570
KEEPALIVE_PING, KEEPALIVE_PONG = 1, 2
# libvirtd.conf's defaults (keepalive_interval, keepalive_count): a peer silent for interval x (count
# + 1) seconds, its PINGs unanswered, is gone.
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT = 5
SEND_TIMEOUT = transport.CONNECT_TIMEOUT  # a send that makes no progress for this long: the peer is gone

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
            self.socket = params.get("socket") or unix_socket(driver, path, params.get("mode", "auto"))
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


def unix_socket(driver: str, path: str, mode: str = "auto") -> str:
    """The socket libvirt's own client opens for `<driver>:///<path>` (src/remote/remote_sockets.c
    remoteGetUNIXSocket): the driver's own daemon (`virtqemud-sock`, the modular daemons) where its
    socket exists, else the monolithic libvirtd's (`libvirt-sock`) where that exists, else the
    modular one; `?mode=legacy|direct` picks one. `/session` as an ordinary user is that user's runtime
    folder ($XDG_RUNTIME_DIR/libvirt, else ~/.cache/libvirt: virGetUserRuntimeDirectory); as root,
    and for `/system`, /var/run/libvirt (remoteGetURIDaemonInfo)."""
    import os

    if path == "session" and os.geteuid() > 0:
        runtime = os.environ.get("XDG_RUNTIME_DIR")
        folder = f"{runtime}/libvirt" if runtime else os.path.expanduser("~/.cache/libvirt")
    else:
        folder = "/var/run/libvirt"
    direct, legacy = f"{folder}/virt{driver}d-sock", f"{folder}/libvirt-sock"
    if mode == "direct":
        return direct
    if mode == "legacy":
        return legacy
    if os.path.exists(direct):
        return direct
    return legacy if os.path.exists(legacy) else direct


class Client:
    """One connection to libvirtd, one call at a time (a CPI process is single-threaded).

    A call waits for its reply as long as libvirtd takes: some run their whole work before they
    answer (STORAGE_VOL_CREATE_XML_FROM copies the volume first, storage_driver.c
    storageVolCreateXMLFrom). While it waits, each `keepalive_interval` of silence sends a keepalive
    PING; libvirtd answers it even while the call runs, so a peer that stays silent through
    `keepalive_count` PINGs (a dead daemon, a lost network) ends the wait with a retryable error."""

    keepalive_interval = KEEPALIVE_INTERVAL
    keepalive_count = KEEPALIVE_COUNT

    def __init__(self, uri: str, *, client_cert: str = "", client_key: str = "", ca_cert: str = "") -> None:
        self.uri = uri
        self.target = Target(uri)
        self._tls = (client_cert, client_key, ca_cert)
        self.sock: Any = None
        self.serial = 0
        self.buf = bytearray()
        # Seconds a stream may go without data before it is given up (a download; None: no limit), and
        # when the last message of the remote program came (monotonic).
        self.stall: float | None = None
        self.last_message = 0.0

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
        self.sock.settimeout(self.keepalive_interval)
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
    def _send(
        self,
        proc: int,
        kind: int,
        serial: int,
        status: int,
        payload: bytes | memoryview = b"",
        prog: int = REMOTE_PROGRAM,
    ) -> None:
        n = 28 + len(payload)
        head = (
            n.to_bytes(4, "big")
            + prog.to_bytes(4, "big")
            + REMOTE_PROTOCOL_VERSION.to_bytes(4, "big")
            + proc.to_bytes(4, "big")
            + kind.to_bytes(4, "big")
            + serial.to_bytes(4, "big")
            + status.to_bytes(4, "big")
        )
        if self.sock is None:
            raise LibvirtError(ERR_RPC, f"{self.uri}: not connected (the connection was lost)")
        try:
            self.sock.settimeout(SEND_TIMEOUT)
            self.sock.sendall(head + payload if len(payload) <= STREAM_PAYLOAD else head)
            if len(payload) > STREAM_PAYLOAD:
                self.sock.sendall(payload)
            self.sock.settimeout(self.keepalive_interval)
        except OSError as e:
            self.close()
            raise LibvirtError(ERR_RPC, f"{self.uri}: connection lost while sending: {e}") from None

    def _fill(self, n: int) -> None:
        unanswered = 0
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except TimeoutError:
                if self.stall is not None and time.monotonic() - self.last_message > self.stall:
                    self.close()
                    raise LibvirtError(ERR_RPC, f"{self.uri}: the stream sent nothing for {self.stall:.0f}s") from None
                unanswered += 1
                if unanswered > self.keepalive_count:
                    self.close()
                    raise LibvirtError(
                        ERR_RPC,
                        f"{self.uri}: libvirtd answered nothing, keepalive PINGs included, for "
                        f"{self.keepalive_interval * unanswered:.0f}s",
                    ) from None
                self._send(KEEPALIVE_PING, MESSAGE, 0, OK, prog=KEEPALIVE_PROGRAM)
                continue
            except OSError as e:
                self.close()
                raise LibvirtError(ERR_RPC, f"{self.uri}: connection lost: {e}") from None
            if not chunk:
                self.close()
                raise LibvirtError(ERR_RPC, f"{self.uri}: libvirtd closed the connection")
            unanswered = 0
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
        if prog == KEEPALIVE_PROGRAM and kind == MESSAGE and proc == KEEPALIVE_PING:
            self._send(KEEPALIVE_PONG, MESSAGE, 0, OK, prog=KEEPALIVE_PROGRAM)
        if prog != REMOTE_PROGRAM:
            return proc, -1, serial, status, b""  # keepalive or another program: not a reply
        self.last_message = time.monotonic()
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
        """The next data of a download; b"" at its end. A hole (sparse streams) is not asked for.
        With `stall` set, a download that sends nothing for that long fails (the connection closed)."""
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
