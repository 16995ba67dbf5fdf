"""Talking to a real bosh-agent over its HTTPS mbus, as the director and the CLI do
(cloudfoundry/bosh-agent mbus/https_handler.go: POST /agent with basic auth from the mbus URL,
`{"method", "arguments", "reply_to"}` in, `{"value"}` or `{"exception"}` out; long-running actions
answer `{"agent_task_id", "state": "running"}` and are polled with `get_task`)."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def mbus_cert(tmp: Path, ip: str) -> dict[str, str]:
    """A CA and a certificate for the agent's HTTPS listener (env.bosh.mbus.cert)."""
    ca_key, ca_crt = tmp / "ca.key", tmp / "ca.crt"
    key, csr, crt = tmp / "mbus.key", tmp / "mbus.csr", tmp / "mbus.crt"
    ext = tmp / "ext.cnf"
    ext.write_text(f"subjectAltName=IP:{ip}\n")

    def ssl_(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl_(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=e2e-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    ssl_("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}", "-keyout", str(key), "-out", str(csr))
    ssl_(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(crt),
    )
    return {"ca": ca_crt.read_text(), "certificate": crt.read_text(), "private_key": key.read_text()}


class Agent:
    def __init__(self, ip: str, password: str, ca: str, user: str = "mbus", port: int = 6868) -> None:
        self.url = f"https://{ip}:{port}/agent"
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.ctx = ssl.create_default_context(cadata=ca)
        self.ctx.check_hostname = False

    def _post(self, method: str, args: list[Any], timeout: float = 30) -> Any:
        body = json.dumps({"method": method, "arguments": args, "reply_to": "boshcpi-test"}).encode()
        req = urllib.request.Request(self.url, data=body, method="POST")
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as resp:
            doc = json.loads(resp.read())
        if doc.get("exception"):
            raise AgentError(f"{method}: {doc['exception'].get('message')}")
        return doc.get("value")

    def call(self, method: str, *args: Any, timeout: float = 600) -> Any:
        value = self._post(method, list(args))
        deadline = time.monotonic() + timeout
        while isinstance(value, dict) and value.get("agent_task_id") and value.get("state") == "running":
            if time.monotonic() > deadline:
                raise AgentError(f"{method}: still running after {timeout}s")
            time.sleep(0.5)
            value = self._post("get_task", [value["agent_task_id"]])
        return value

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds until the agent answers ping."""
        start = time.monotonic()
        last: Exception | None = None
        while time.monotonic() - start < timeout:
            try:
                if self._post("ping", [], timeout=5) == "pong":
                    return time.monotonic() - start
            except (OSError, urllib.error.URLError, AgentError, ValueError) as e:
                last = e
            time.sleep(1)
        raise AgentError(f"agent at {self.url} did not answer ping within {timeout}s (last: {last})")


class AgentError(Exception):
    pass
