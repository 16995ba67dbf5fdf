"""Helpers shared by the test suites: run the real `boshcpi cpi` process as the director does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BOSHCPI = [sys.executable, "-m", "boshcpi.cli"]


# Every secret the suites put into configs and requests. No CPI output may ever contain one: every
# call of every test checks its stdout and stderr.
SECRETS: set[str] = {"mbus-s3cret-pw", "blob-s3cret-pw", "env-s3cret-pw", "env-s3cret", "libvirt-s3cret", "unit-s3cret"}


def require_tool(name: str) -> Path:
    """A real BOSH binary from ../shared/tools (or $BOSH_CLI, PATH, ...); where there is none, the
    test reports itself as not run with that reason."""
    import pytest

    from boshcpi.dev.tools import find_tool, missing_reason

    path = find_tool(name)
    if path is None:
        pytest.skip(missing_reason(name))
    return path


def go_call(binary: Path, config: Path, method: str, *args: Any) -> Any:
    """One call of a real Go CPI (../shared/tools), as the director makes it; its error fails the test."""
    request = {"method": method, "arguments": list(args), "context": {"director_uuid": "go"}, "api_version": 2}
    proc = subprocess.run(
        [str(binary), "-configPath", str(config), "-logLevel", "ERROR"],
        input=json.dumps(request).encode(),
        capture_output=True,
        timeout=600,
    )
    doc = json.loads(proc.stdout)
    assert doc["error"] is None, f"Go CPI {method}: {doc['error']}\n{proc.stderr.decode()[-2000:]}"
    return doc["result"]


def manual_network(ip: str, gateway: str, default: bool = True, **extra: Any) -> dict[str, Any]:
    """A director's manual network entry (a /24), the default one for DNS and gateway or not."""
    entry = {
        "type": "manual",
        "ip": ip,
        "netmask": "255.255.255.0",
        "gateway": gateway,
        "dns": [gateway],
        "default": ["dns", "gateway"] if default else [],
        "cloud_properties": {},
    }
    return {**entry, **extra}


def libvirt_config(pool: str, console_dir: Path, agent_config_type: str, mbus: str) -> dict[str, Any]:
    """A libvirt CPI config for this host's test network, on this run's pool, software-emulated."""
    return {
        "driver": "libvirt",
        "libvirt": {
            "uri": "qemu:///system",
            "domain_type": "qemu",
            "storage_pool_name": pool,
            "network_name": "boshcpi-test-net",
            "console_log_dir": str(console_dir),
        },
        "agent": {"mbus": mbus},
        "agent_config": {"type": agent_config_type},
    }


@dataclass
class Response:
    result: Any
    error: dict[str, Any] | None
    log: str
    stderr: str
    stdout: str
    returncode: int

    @property
    def error_type(self) -> str | None:
        return self.error["type"] if self.error else None

    def ok(self) -> Any:
        assert self.error is None, f"CPI error: {self.error}\n{self.stderr}"
        return self.result


def cpi_process(config: Path | str, method: str, args: list, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A CPI call running in the background (to be watched, paused or killed), its request written:
    read its answer from stdout, its log from stderr."""
    proc = subprocess.Popen(
        [*BOSHCPI, "cpi", "--config", str(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    request = {"method": method, "arguments": args, "context": {}, "api_version": 2}
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(request).encode())
    proc.stdin.close()
    return proc


def raw_call(
    config: Path | str | None, payload: bytes | str, env: dict[str, str] | None = None, timeout: float = 600
) -> Response:
    args = [*BOSHCPI, "cpi"]
    if config:
        args += ["--config", str(config)]
    data = payload.encode() if isinstance(payload, str) else payload
    proc = subprocess.run(
        args, input=data, capture_output=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=ROOT
    )
    out = proc.stdout.decode()
    err = proc.stderr.decode()
    leaked = [s for s in SECRETS if s in out or s in err]
    assert not leaked, f"secret(s) {leaked} reached the CPI's output"
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one response line, got {out!r}\nstderr: {proc.stderr.decode()}"
    doc = json.loads(lines[0])
    assert set(doc) == {"result", "error", "log"}, doc
    assert isinstance(doc["log"], str)
    return Response(doc["result"], doc["error"], doc["log"], proc.stderr.decode(), out, proc.returncode)


def call(
    config: Path | str | None,
    method: str,
    *arguments: Any,
    api_version: int | None = 2,
    context: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Response:
    request: dict[str, Any] = {
        "method": method,
        "arguments": list(arguments),
        "context": context or {"director_uuid": "test-director", "request_id": "r1"},
    }
    if api_version is not None:
        request["api_version"] = api_version
    return raw_call(config, json.dumps(request), env=env)
