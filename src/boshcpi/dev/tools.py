"""The real BOSH binaries the tests, benchmarks and demos use (never shipped with boshcpi): found
through an environment variable, then PATH, then `../shared/tools/` beside the project (or beside the
clone's origin, for a fresh clone made elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

TOOLS = {
    "bosh": "BOSH_CLI",
    "bosh-agent": "BOSH_AGENT_BIN",
    "go-lxd-cpi": "GO_LXD_CPI",
    "go-libvirt-cpi": "GO_LIBVIRT_CPI",
}


def _origin() -> Path | None:
    try:
        url = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return None
    if url.startswith("file://"):
        url = url[len("file://") :]
    return Path(url) if url.startswith("/") else None


def find_tool(name: str) -> Path | None:
    var = TOOLS[name]
    if os.environ.get(var):
        path = Path(os.environ[var])
        return path if path.is_file() and os.access(path, os.X_OK) else None
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    for base in (ROOT, _origin()):
        if base is None:
            continue
        candidate = base.parent / "shared" / "tools" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_reason(name: str) -> str:
    return f"not run: no {name} (set {TOOLS[name]}, put it on PATH, or ../shared/tools/{name})"
