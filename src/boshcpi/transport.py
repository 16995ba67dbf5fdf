"""Byte streams to a daemon, shared by every driver: a unix socket, TCP, and TLS on `_ssl` itself.

`import ssl` pulls in socket, selectors, enum and more (about 10 ms a call), and `import socket` a few
more: the CPI starts once per call, so both drivers open their connections here on the C modules.
Whatever fails on the way is an `OSError` (a refused or unverifiable certificate included); callers
map it to their own errors, and `verify_failed` says whether a retry could ever help.
"""

from __future__ import annotations

import _socket
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONNECT_TIMEOUT = 90.0


class _WeakSocket(_socket.socket):
    """`_ssl` keeps a weak reference to its socket, which the bare C type does not allow."""

    __slots__ = ("__weakref__",)


def unix(path: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    sock = _WeakSocket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def tcp(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> Any:
    # A str host makes getaddrinfo encode it with the "idna" codec, whose import (re, enum,
    # functools) costs ~10 ms a call; config.py allows only ASCII host names.
    family, _, _, _, addr = _socket.getaddrinfo(host.encode("ascii"), port, 0, _socket.SOCK_STREAM)[0]
    sock = _WeakSocket(family, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(addr)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def split_hostport(hostport: str, default_port: int) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`."""
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    return host, int(port) if port else default_port


def tls_context(
    client_cert: str = "",
    client_key: str = "",
    *,
    server_cert: str = "",
    ca_cert: str = "",
    insecure: bool = False,
) -> Any:
    """A TLS client context. `server_cert` pins one self-signed certificate (LXD's, the host may be an
    IP not in it: no name check); `ca_cert` trusts a CA and checks the server's name (libvirt's PKI);
    neither: the system's CAs and a name check. The client key is loaded from an anonymous in-memory
    file (memfd): it never touches a disk, and no `tempfile` import is paid."""
    import _ssl

    ctx = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _ssl.PROTO_TLSv1_2
    ctx.options |= _ssl.OP_NO_COMPRESSION
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    elif server_cert:
        ctx.check_hostname = False
        ctx.load_verify_locations(None, None, server_cert)
    elif ca_cert:
        ctx.load_verify_locations(None, None, ca_cert)
    else:
        ctx.set_default_verify_paths()
    if client_cert:
        fd = os.memfd_create("boshcpi-tls", 0)
        try:
            os.write(fd, (client_cert.rstrip("\n") + "\n" + client_key).encode())
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    return ctx


class TLSSocket:
    """A TLS session over a connected socket, with the recv/sendall/close the clients use."""

    def __init__(self, raw: Any, ctx: Any, hostname: str) -> None:
        import _ssl

        self.raw = raw
        # A pinned or skipped certificate needs no name check: no SNI, no IDNA codec import.
        self.tls = ctx._wrap_socket(raw, False, hostname if ctx.check_hostname else None)
        self.tls.do_handshake()
        self.closed_errors = (_ssl.SSLEOFError, _ssl.SSLZeroReturnError)

    def recv(self, n: int) -> bytes:
        try:
            return self.tls.read(n)
        except self.closed_errors:  # the server ended the session: an end of stream, as a socket gives
            return b""

    def sendall(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = self.tls.write(view)
            view = view[sent:]

    def settimeout(self, timeout: float | None) -> None:
        self.raw.settimeout(timeout)

    def close(self) -> None:
        self.raw.close()


def tls(host: str, port: int, ctx: Any, timeout: float = CONNECT_TIMEOUT) -> TLSSocket:
    raw = tcp(host, port, timeout)
    try:
        return TLSSocket(raw, ctx, host)
    except BaseException:
        raw.close()
        raise


def verify_failed(e: BaseException) -> bool:
    """A certificate that does not verify stays that way however often the call is retried."""
    return type(e).__name__ == "SSLCertVerificationError" or "CERTIFICATE_VERIFY_FAILED" in str(e)
