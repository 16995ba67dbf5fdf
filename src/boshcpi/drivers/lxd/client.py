"""A small LXD/Incus REST client on the standard library (http.client over a unix socket or HTTPS).

It speaks the `/1.0` API both daemons share, waits on background operations with a timeout, and
raises `LXDError` (with the HTTP status) for every failure; the driver maps those to BOSH errors in
one place (`errors.py`).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote, urlencode

from boshcpi import log


class LXDError(Exception):
    """The daemon answered with an error (or could not be reached: status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unreachable(self) -> bool:
        return self.status == 0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _ssl_context(client_cert: str, client_key: str, server_cert: str, insecure: bool):
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif server_cert:
        # LXD's certificate is self-signed: trust exactly it (hostname may be an IP not in the cert).
        ctx.load_verify_locations(cadata=server_cert)
        ctx.check_hostname = False
    else:
        ctx.load_default_certs()
    if client_cert:
        # ssl wants files; keep the key on disk only for the instant it takes to load it.
        with tempfile.TemporaryDirectory(prefix="boshcpi-tls-") as d:
            cert_path, key_path = os.path.join(d, "c.pem"), os.path.join(d, "k.pem")
            for path, text in ((cert_path, client_cert), (key_path, client_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
            ctx.load_cert_chain(cert_path, key_path)
    return ctx


class LXDClient:
    """One connection to one daemon, kept alive for the life of a CPI call."""

    def __init__(
        self,
        url: str,
        *,
        project: str = "default",
        client_cert: str = "",
        client_key: str = "",
        server_cert: str = "",
        insecure: bool = False,
        timeout: float = 600.0,
    ) -> None:
        self.url = url
        self.project = project
        self.timeout = timeout
        self._tls = (client_cert, client_key, server_cert, insecure)
        self._conn: http.client.HTTPConnection | None = None
        self._server: dict[str, Any] | None = None

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is not None:
            return self._conn
        if self.url.startswith("unix://"):
            self._conn = _UnixConnection(self.url[len("unix://") :], timeout=60)
        elif self.url.startswith("https://"):
            hostport = self.url[len("https://") :].rstrip("/")
            host, _, port = hostport.rpartition(":") if ":" in hostport.split("]")[-1] else (hostport, "", "8443")
            self._conn = http.client.HTTPSConnection(
                host.strip("[]"), int(port or 8443), timeout=60, context=_ssl_context(*self._tls)
            )
        else:
            raise LXDError(0, f"unsupported URL {self.url!r}")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def server(self) -> dict[str, Any]:
        if self._server is None:
            self._server = self.get("/1.0", project=False)
        return self._server

    @property
    def server_type(self) -> str:
        """'lxd' or 'incus' (GET /1.0 -> environment.server)."""
        env = self.server.get("environment") or {}
        return "incus" if env.get("server") == "incus" else "lxd"

    @property
    def header_prefix(self) -> str:
        return "X-Incus-" if self.server_type == "incus" else "X-LXD-"

    def has_extension(self, name: str) -> bool:
        return name in (self.server.get("api_extensions") or [])

    # ---- raw requests ----------------------------------------------------------------------
    def _path(self, path: str, params: dict[str, Any] | None, project: bool) -> str:
        query = dict(params or {})
        if project and self.project and "project" not in query:
            query["project"] = self.project
        query = {k: v for k, v in query.items() if v not in (None, "")}
        return path + ("?" + urlencode(query) if query else "")

    def raw(
        self,
        method: str,
        path: str,
        body: bytes | IO[bytes] | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        project: bool = True,
        retry: bool = True,
    ) -> tuple[int, dict[str, str], bytes]:
        full = self._path(path, params, project)
        hdrs = dict(headers or {})
        chunked = body is not None and not isinstance(body, (bytes, bytearray)) and not hasattr(body, "read")
        for attempt in (1, 2):
            conn = self._connect()
            try:
                conn.request(method, full, body=body, headers=hdrs, encode_chunked=chunked)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self.close()
                # A kept-alive connection may have been closed by the daemon; retry once when the
                # body can be sent again.
                if attempt == 1 and retry and (body is None or isinstance(body, (bytes, bytearray))):
                    continue
                raise LXDError(0, f"cannot reach {self.url}: {e}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        project: bool = True,
        wait: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """JSON request; waits for background operations; returns `metadata`."""
        data = None
        hdrs = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        status, _, payload = self.raw(method, path, data, hdrs, params, project)
        return self._result(status, payload, wait)

    def _result(self, status: int, payload: bytes, wait: bool) -> Any:
        try:
            doc = json.loads(payload or b"{}")
        except ValueError:
            raise LXDError(status, f"invalid response ({status}): {payload[:200]!r}") from None
        if doc.get("type") == "error" or status >= 400:
            raise LXDError(doc.get("error_code") or status, doc.get("error") or f"HTTP {status}")
        if doc.get("type") == "async":
            op = doc.get("metadata") or {}
            return self.wait(op["id"]) if wait else op
        return doc.get("metadata")

    def wait(self, op_id: str, timeout: float | None = None) -> Any:
        """Wait for an operation; raise LXDError on failure or timeout."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = max(1, int(deadline - time.monotonic()))
            status, _, payload = self.raw(
                "GET", f"/1.0/operations/{op_id}/wait", params={"timeout": min(left, 30)}, project=True
            )
            doc = json.loads(payload or b"{}")
            if doc.get("type") == "error" or status >= 400:
                raise LXDError(doc.get("error_code") or status, doc.get("error") or f"HTTP {status}")
            op = doc.get("metadata") or {}
            if op.get("status_code", 0) >= 400 or op.get("status") == "Failure":
                raise LXDError(400, op.get("err") or "operation failed")
            if op.get("status") == "Success":
                return op.get("metadata") or {}
            if time.monotonic() >= deadline:
                raise LXDError(0, f"operation {op_id} did not finish within {timeout or self.timeout:.0f}s")
            if op.get("status") == "Running" and op.get("metadata"):
                log.debug(f"operation {op_id}: {op['metadata']}")

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_with_etag(self, path: str) -> tuple[Any, str]:
        status, headers, payload = self.raw("GET", path)
        return self._result(status, payload, True), headers.get("etag", "")

    # ---- files -----------------------------------------------------------------------------
    def push_file(self, instance: str, path: str, content: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        p = self.header_prefix
        headers = {
            "Content-Type": "application/octet-stream",
            f"{p}uid": str(uid),
            f"{p}gid": str(gid),
            f"{p}mode": f"{mode:04o}",
            f"{p}type": "file",
            f"{p}write": "overwrite",
        }
        status, _, payload = self.raw(
            "POST", f"/1.0/instances/{quote(instance)}/files", content, headers, {"path": path}
        )
        self._result(status, payload, True)

    def make_dir(self, instance: str, path: str, mode: int = 0o755) -> None:
        p = self.header_prefix
        headers = {f"{p}uid": "0", f"{p}gid": "0", f"{p}mode": f"{mode:04o}", f"{p}type": "directory"}
        status, _, payload = self.raw("POST", f"/1.0/instances/{quote(instance)}/files", b"", headers, {"path": path})
        try:
            self._result(status, payload, True)
        except LXDError as e:
            if "exists" not in e.message.lower():
                raise

    def pull_file(self, instance: str, path: str) -> bytes:
        status, _, payload = self.raw("GET", f"/1.0/instances/{quote(instance)}/files", params={"path": path})
        if status >= 400:
            self._result(status, payload, True)
        return payload
