"""One CPI call through the real `boshcpi cpi` process, printed with its duration (the demos)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def cpi(config: Path, method: str, *args: Any) -> Any:
    request = {"method": method, "arguments": list(args), "context": {"director_uuid": "demo"}, "api_version": 2}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "boshcpi.cli", "cpi", "--config", str(config)],
        input=json.dumps(request).encode(),
        capture_output=True,
    )
    took = (time.monotonic() - start) * 1000
    doc = json.loads(proc.stdout)
    shown = json.dumps(doc["result"] if doc["error"] is None else doc["error"])
    if len(shown) > 110:
        shown = shown[:107] + "..."
    arg_text = ", ".join(json.dumps(a)[:40] for a in args)
    print(f"{took:8.0f} ms  {method}({arg_text}) -> {shown}", flush=True)
    if doc["error"] is not None:
        raise SystemExit(f"demo: {method} failed: {doc['error']['message']}")
    return doc["result"]


def quiet(config: Path, method: str, *args: Any) -> None:
    try:
        cpi(config, method, *args)
    except SystemExit as e:
        print(e, file=sys.stderr)
