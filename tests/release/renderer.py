"""The bosh CLI's own ERB renderer, for rendering a job's templates with many property sets quickly.

The CLI embeds `erb_renderer.rb` (cloudfoundry/bosh-cli templatescompiler/erbrenderer, `//go:embed`)
and runs `ruby erb_renderer.rb <context.json> <template> <output>` for every template and the monit
file. That script is taken out of the real CLI binary here, byte for byte, and run the same way: the
property lookup, the defaults, the strictness (`Can't find property`), the ERB mode and the Ruby it
loads (rubygems, json, erb, yaml: nothing more) are the CLI's. The context JSON is built as the CLI
builds it for a CPI job (installation/job_renderer.go: cloud_provider.properties as the cluster
properties, the job spec's defaults as default_properties, no job-level properties).

`bosh create-env` itself renders the lxd_cpi job in tests/e2e/test_create_env.py.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import yaml

END = b"renderer.render(erb_template_path, rendered_template_path)\nend\n"
START = b"# Based on common/properties/template_evaluation_context.rb"


def extract(bosh: Path, dest: Path) -> Path:
    data = bosh.read_bytes()
    end = data.find(END)
    start = data.rfind(START, 0, end)
    assert end > 0 and start > 0, f"no ERB renderer found inside {bosh}"
    script = data[start : end + len(END)]
    assert b"Shellwords" not in script and b'require "json"' in script
    dest.write_bytes(script)
    return dest


def context(job_dir: Path, properties: dict) -> dict:
    spec = yaml.safe_load((job_dir / "spec").read_text())
    defaults = {name: (d or {}).get("default") for name, d in (spec.get("properties") or {}).items()}
    name = spec["name"]
    return {
        "index": 0,
        "id": str(uuid.uuid4()),
        "az": "unknown",
        "bootstrap": True,
        "name": name,
        "job": {"name": name},
        "deployment": "bosh",
        "address": "",
        "ip": "",
        "networks": {"default": {"ip": ""}},
        "global_properties": {},
        "cluster_properties": properties,
        "job_properties": None,
        "default_properties": defaults,
        "job_template_name": name,
        "links": {},
    }


def render(script: Path, job_dir: Path, properties: dict, out: Path) -> dict[str, Path]:
    """Every template of the job plus its monit file, rendered into `out`; returns dest -> path.
    Raises AssertionError with the renderer's message when a template fails."""
    spec = yaml.safe_load((job_dir / "spec").read_text())
    ctx = out / "erb-context.json"
    out.mkdir(parents=True, exist_ok=True)
    ctx.write_text(json.dumps(context(job_dir, properties)))
    rendered: dict[str, Path] = {}
    jobs = [(job_dir / "monit", "monit")] + [(job_dir / "templates" / s, d) for s, d in spec["templates"].items()]
    for src, dest in jobs:
        target = out / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["ruby", str(script), str(ctx), str(src), str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            raise AssertionError(next((line for line in lines if "Error filling in template" in line), proc.stderr))
        rendered[dest] = target
    return rendered
