"""A small LXD/Incus REST client on the standard library: HTTP/1.1 over a unix socket or TLS.

It speaks the `/1.0` API both daemons share, waits on background operations with a timeout, and
raises `LXDError` (with the HTTP status) for every failure; the driver maps those to BOSH errors in
one place (`errors.py`).
"""

from __future__ import annotations

import time

from boshcpi import fastjson, log, transport

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(text: str, safe: str = "/") -> str:
    """Percent-encode a path segment or query value (urllib.parse costs ~10 ms of import)."""
    keep = _SAFE | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in str(text).encode())


def urlencode(params: dict[str, Any]) -> str:
    return "&".join(f"{quote(str(k), '')}={quote(str(v), '')}" for k, v in params.items())


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(text: str) -> float | None:
    """An HTTP `Date` (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the
    epoch, without `email.utils`/`calendar` (imports a call should not pay for)."""
    parts = text.replace(":", " ").split()
    if len(parts) != 8 or parts[7] != "GMT" or parts[2] not in _MONTHS:
        return None
    try:
        day, year, hh, mm, ss = int(parts[1]), int(parts[3]), int(parts[4]), int(parts[5]), int(parts[6])
    except ValueError:
        return None
    # Days from the civil date (Howard Hinnant's algorithm).
    m = _MONTHS.index(parts[2]) + 1
    y = year - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return float(days * 86400 + hh * 3600 + mm * 60 + ss)


class LXDError(Exception):
    """The daemon answered with an error (or could not be reached: status 0)."""

    def __init__(
        self, status: int, message: str, permanent: bool = False, metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # A TLS verification failure stays one however often it is retried.
        self.permanent = permanent
        # A failed operation's metadata (an image upload refused as a duplicate names its fingerprint).
        self.metadata = metadata or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unreachable(self) -> bool:
        return self.status == 0 and not self.permanent


class _Connection:
    """One HTTP/1.1 keep-alive connection over a unix socket or TLS, with just the parsing LXD needs."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if not self._fill():
                raise ConnectionError("connection closed by the daemon")

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError("connection closed mid-response")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def request(
        self, method: str, target: str, headers: dict[str, str], body: Any, length: int | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        head = [f"{method} {target} HTTP/1.1", "Host: lxd", "User-Agent: boshcpi", "Accept: application/json"]
        chunked = False
        if body is None:
            if method in ("POST", "PUT", "PATCH"):
                head.append("Content-Length: 0")
        elif isinstance(body, (bytes, bytearray)):
            head.append(f"Content-Length: {len(body)}")
        elif length is not None:
            head.append(f"Content-Length: {length}")  # a streamed body of known size
        else:
            chunked = True
            head.append("Transfer-Encoding: chunked")
        head += [f"{k}: {v}" for k, v in headers.items()]
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if isinstance(body, (bytes, bytearray)):
            self.sock.sendall(data + body if len(body) < 65536 else data)
            if len(body) >= 65536:
                self.sock.sendall(body)
        else:
            self.sock.sendall(data)
            if chunked:
                for chunk in body:
                    if chunk:
                        self.sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                self.sock.sendall(b"0\r\n\r\n")
            elif body is not None:
                for chunk in body:
                    self.sock.sendall(chunk)
        # Response.
        status_line = self._line().decode("latin-1")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"bad status line {status_line!r}")
        status = int(parts[1])
        resp_headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            resp_headers[k.strip().lower()] = v.strip()
        if resp_headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():
                        pass
                    break
                out += self._exact(size)
                self._exact(2)
            payload = bytes(out)
        elif "content-length" in resp_headers:
            payload = self._exact(int(resp_headers["content-length"]))
        elif method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            payload = b""
        else:
            while self._fill():
                pass
            payload, self.buf = bytes(self.buf), bytearray()
            self.close()
        if resp_headers.get("connection", "").lower() == "close":
            self.close()
        return status, resp_headers, payload


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
        self._conn: _Connection | None = None
        self._server: dict[str, Any] | None = None
        # The daemon's clock: the `Date` of the last answer and when it came (monotonic).
        self.last_date: tuple[str, float] | None = None

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> _Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        if self.url.startswith("unix://"):
            sock = transport.unix(self.url[len("unix://") :])
        elif self.url.startswith("https://"):
            host, port = transport.split_hostport(self.url[len("https://") :].split("/", 1)[0], 8443)
            client_cert, client_key, server_cert, insecure = self._tls
            ctx = transport.tls_context(client_cert, client_key, server_cert=server_cert, insecure=insecure)
            sock = transport.tls(host, port, ctx)
        else:
            raise LXDError(0, f"unsupported URL {self.url!r}")
        self._conn = _Connection(sock)
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
        # The daemon's own word, not cpi.json's server.type: after `lxd-to-incus` the config may still
        # say lxd, and Incus reads only its own headers.
        return "X-Incus-" if self.server_type == "incus" else "X-LXD-"

    def has_extension(self, name: str) -> bool:
        return name in (self.server.get("api_extensions") or [])

    def daemon_time(self) -> float | None:
        """The daemon's clock now (seconds since the epoch), from the `Date` of its last answer and
        the time since on this process's monotonic clock; None before any answer."""
        if self.last_date is None:
            return None
        when = http_date(self.last_date[0])
        return None if when is None else when + (time.monotonic() - self.last_date[1])

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
        body: bytes | Iterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        project: bool = True,
        retry: bool = True,
        length: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        full = self._path(path, params, project)
        hdrs = dict(headers or {})
        for attempt in (1, 2):
            reused = self._conn is not None and not self._conn.closed
            try:
                conn = self._connect()
                answer = conn.request(method, full, hdrs, body, length)
                date = answer[1].get("date")
                if date:
                    self.last_date = (date, time.monotonic())
                return answer
            except OSError as e:  # ConnectionError, timeouts, ssl.SSLError are all OSError
                self.close()
                if transport.verify_failed(e):
                    raise LXDError(
                        0,
                        f"cannot reach {self.url}: the server's certificate does not verify ({e}); trust it with "
                        "server.tls_server_cert",
                        permanent=True,
                    ) from None
                # A kept-alive connection may have been closed by the daemon: retry once when
                # the body can be sent again.
                if attempt == 1 and reused and retry and (body is None or isinstance(body, (bytes, bytearray))):
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
            data = fastjson.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
        status, _, payload = self.raw(method, path, data, hdrs, params, project)
        return self.answer(status, payload, wait)

    def answer(self, status: int, payload: bytes, wait: bool) -> Any:
        try:
            doc = fastjson.loads(payload or b"{}")
        except ValueError:
            raise LXDError(status, f"invalid response ({status}): {payload[:200]!r}") from None
        if doc.get("type") == "error" or status >= 400:
            code = doc.get("error_code") or status
            msg = doc.get("error") or f"HTTP {status}"
            if code == 403 and self.url.startswith("https"):
                # LXD/Incus answer 403 "not authorized" to a client certificate they do not trust.
                msg += " (the server does not trust this client certificate: add it with `lxc config trust add`)"
            raise LXDError(code, msg)
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
            doc = fastjson.loads(payload or b"{}")
            if doc.get("type") == "error" or status >= 400:
                # Incus answers a failed operation's /wait with an error response and no operation;
                # the operation itself (kept a few seconds after it ends) still holds its metadata.
                raise LXDError(
                    doc.get("error_code") or status,
                    doc.get("error") or f"HTTP {status}",
                    metadata=self._failed_op_metadata(op_id) if status != 404 else None,
                )
            op = doc.get("metadata") or {}
            if op.get("status_code", 0) >= 400 or op.get("status") == "Failure":
                raise LXDError(400, op.get("err") or "operation failed", metadata=op.get("metadata"))
            if op.get("status") == "Success":
                return op.get("metadata") or {}
            if time.monotonic() >= deadline:
                raise LXDError(0, f"operation {op_id} did not finish within {timeout or self.timeout:.0f}s")
            if op.get("status") == "Running" and op.get("metadata"):
                log.debug(f"operation {op_id}: {op['metadata']}")

    def _failed_op_metadata(self, op_id: str) -> dict[str, Any] | None:
        try:
            status, _, payload = self.raw("GET", f"/1.0/operations/{op_id}", project=True)
            return (fastjson.loads(payload or b"{}").get("metadata") or {}).get("metadata") if status == 200 else None
        except (OSError, ValueError, LXDError):
            return None

    def delete(self, path: str, **kw: Any) -> bool:
        """DELETE that treats a missing object as done: True if it deleted, False if already gone."""
        try:
            self.request("DELETE", path, **kw)
            return True
        except LXDError as e:
            if e.not_found:
                return False
            raise

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_with_etag(self, path: str) -> tuple[Any, str]:
        status, headers, payload = self.raw("GET", path)
        return self.answer(status, payload, True), headers.get("etag", "")

    # ---- files -----------------------------------------------------------------------------
    def push_file(
        self, instance: str, path: str, content: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> None:
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
        self.answer(status, payload, True)

    def make_dir(self, instance: str, path: str, mode: int = 0o755) -> None:
        p = self.header_prefix
        headers = {f"{p}uid": "0", f"{p}gid": "0", f"{p}mode": f"{mode:04o}", f"{p}type": "directory"}
        status, _, payload = self.raw("POST", f"/1.0/instances/{quote(instance)}/files", b"", headers, {"path": path})
        try:
            self.answer(status, payload, True)
        except LXDError as e:
            if "exists" not in e.message.lower():
                raise

    # ---- commands in a container -------------------------------------------------------------
    def run(self, instance: str, argv: list[str], timeout: float = 60, output: bool = True) -> tuple[int, bytes, bytes]:
        """Run a command in a running instance and return (exit status, stdout, stderr).

        No websocket: with `wait-for-websocket: false` the daemon runs the command on its own; with
        `record-output` it writes the output to the instance's log files and names them in the
        operation's metadata (`output`: {"1": path, "2": path}, the path differs between LXD and
        Incus), which are read and then deleted. `output=False`: the exit status alone, in two
        requests."""
        body = {
            "command": argv,
            "environment": {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
            "record-output": output,
            "wait-for-websocket": False,
            "interactive": False,
        }
        op = self.request("POST", f"/1.0/instances/{quote(instance, '')}/exec", body, wait=False)
        meta = self.wait(op["id"], timeout) if isinstance(op, dict) and "id" in op else (op or {})
        outputs: list[bytes] = []
        for fd in ("1", "2"):
            path = str((meta.get("output") or {}).get(fd) or "")
            data = b""
            if path.startswith("/1.0/"):
                status, _, payload = self.raw("GET", path)
                data = payload if status < 400 else b""
                try:
                    self.request("DELETE", path)
                except LXDError as e:
                    log.debug(f"cannot delete the exec log {path}: {e.message}")
            outputs.append(data)
        return int(meta.get("return", -1)), outputs[0], outputs[1]

    def pull_file(self, instance: str, path: str) -> bytes:
        status, _, payload = self.raw("GET", f"/1.0/instances/{quote(instance)}/files", params={"path": path})
        if status >= 400:
            self.answer(status, payload, True)
        return payload
