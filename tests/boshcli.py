"""The real bosh CLI in the tests: finding it, the releases it deploys, `bosh create-env` runs.

The CLI compiles the CPI release's packages on this machine (`bash -x packaging` with the BOSH_*
variables, cloudfoundry/bosh-cli installation/pkg/compiler.go) and keeps them in its installation
folder, `$HOME/.bosh/installations/<installation_id>`, which delete-env removes. So that one CPython
compile serves every create-env of a run (and of later runs with the same package fingerprints), the
runs share one installation id and its compiled-package store is kept aside between them. Nothing of
what the CLI does is replaced: it finds its own cache where it left it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from tests.helpers import ROOT, require_tool

STATE_ROOT = Path(os.environ.get("BOSHCPI_HOST_STATE", "/var/lib/boshcpi-dev"))
BOSH_HOME = STATE_ROOT / "bosh-home"
COMPILED = STATE_ROOT / "bosh-compiled"
INSTALLATION_ID = "b05c0001-0000-4000-8000-00000000e2e0"
TIMINGS: dict[str, float] = {}


def cli() -> Path:
    path = require_tool("bosh")
    return path


def env() -> dict[str, str]:
    BOSH_HOME.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "HOME": str(BOSH_HOME), "BOSH_NON_INTERACTIVE": "true"}


def run(*args: str, cwd: Path | None = None, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(cli()), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bosh {' '.join(args[:2])} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def timed(name: str, fn, *a, **kw):
    start = time.monotonic()
    try:
        return fn(*a, **kw)
    finally:
        TIMINGS[name] = round(time.monotonic() - start, 1)


_release_tarball: Path | None = None


def boshcpi_release() -> Path:
    """`make release`'s work (scripts/release.sh): the dev release tarball, built once per run."""
    global _release_tarball
    if _release_tarball is None:
        cli()
        out = ROOT / ".cache" / "release" / "boshcpi-test.tgz"
        proc = timed(
            "release build",
            subprocess.run,
            ["bash", str(ROOT / "scripts" / "release.sh")],
            env={**os.environ, "BOSH_CLI": str(cli()), "BOSHCPI_RELEASE_TARBALL": str(out)},
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, f"make release failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        _release_tarball = Path(proc.stdout.strip().splitlines()[-1])
    return _release_tarball


def dummy_release(tmp: Path) -> Path:
    """A release with one trivial job and no packages. Its pre-start writes a random token onto the
    persistent disk once, so a recreate can show the disk (and its data) came back."""
    d = tmp / "dummy-release"
    (d / "jobs" / "trivial" / "templates").mkdir(parents=True)
    (d / "config").mkdir()
    (d / "config" / "final.yml").write_text("name: e2e-dummy\n")
    (d / "config" / "blobs.yml").write_text("--- {}\n")
    (d / "jobs" / "trivial" / "spec").write_text(
        "---\nname: trivial\ntemplates:\n  pre-start.erb: bin/pre-start\npackages: []\n"
        "properties:\n  trivial.greeting: {default: hello}\n"
    )
    (d / "jobs" / "trivial" / "monit").write_text("")
    (d / "jobs" / "trivial" / "templates" / "pre-start.erb").write_text(
        "#!/bin/bash\nset -e\nmkdir -p /var/vcap/store/trivial\n"
        "[ -f /var/vcap/store/trivial/token ] || cat /proc/sys/kernel/random/uuid > /var/vcap/store/trivial/token\n"
        "echo '<%= p(\"trivial.greeting\") %>' > /var/vcap/data/trivial-greeting\n"
    )
    # The CLI reads the release folder through git (bosh-cli releasedir/git_repo.go).
    subprocess.run(["git", "init", "-q", str(d)], check=True)
    out = tmp / "e2e-dummy.tgz"
    run("create-release", "--dir", str(d), "--force", "--tarball", str(out))
    return out


def restore_compiled() -> None:
    """Put the compiled-package store of an earlier run where the CLI looks for it."""
    target = BOSH_HOME / ".bosh" / "installations" / INSTALLATION_ID
    if COMPILED.exists() and not (target / "compiled_packages.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(COMPILED / "compiled_packages.json", target / "compiled_packages.json")
        shutil.copytree(COMPILED / "blobs", target / "blobs", dirs_exist_ok=True)


def keep_compiled() -> None:
    target = BOSH_HOME / ".bosh" / "installations" / INSTALLATION_ID
    if (target / "compiled_packages.json").exists():
        tmp = COMPILED.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(target / "compiled_packages.json", tmp / "compiled_packages.json")
        shutil.copytree(target / "blobs", tmp / "blobs")
        shutil.rmtree(COMPILED, ignore_errors=True)
        os.replace(tmp, COMPILED)


def new_state(path: Path) -> None:
    """A state file naming the shared installation (the CLI fills in everything else)."""
    path.write_text(json.dumps({"director_id": "e2e-" + os.urandom(4).hex(), "installation_id": INSTALLATION_ID}))


def manifest(
    tmp: Path,
    name: str,
    releases: tuple[Path, Path],
    stemcell: Path,
    vm_properties: dict,
    subnet: str,
    ip: str,
    cpi_job: str,
    cpi_properties: dict,
    *,
    instance_jobs: list[dict] | None = None,
    variables: list[dict] | None = None,
) -> Path:
    """A create-env manifest as an operator writes one: the boshcpi release and the dummy release,
    one instance of the trivial job (or of `instance_jobs`, as bosh-deployment puts the CPI job on the
    director) with a persistent disk on a manual network, the mbus over HTTPS with a certificate the
    CLI generates, and the CPI job `cpi_job` with `cpi_properties`."""
    boshcpi, dummy = releases
    agent_mbus = "https://mbus:((mbus_bootstrap_password))@0.0.0.0:6868"
    doc = {
        "name": name,
        "releases": [{"name": "boshcpi", "url": f"file://{boshcpi}"}, {"name": "e2e-dummy", "url": f"file://{dummy}"}],
        "resource_pools": [
            {
                "name": "vms",
                "network": "default",
                "stemcell": {"url": f"file://{stemcell}"},
                "cloud_properties": vm_properties,
                "env": {
                    "bosh": {
                        "mbus": {"cert": "((mbus_bootstrap_ssl))"},
                        "blobstores": [
                            {"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}}
                        ],
                        "password": "*",
                    }
                },
            }
        ],
        "disk_pools": [{"name": "disks", "disk_size": 1024, "cloud_properties": {}}],
        "networks": [
            {
                "name": "default",
                "type": "manual",
                "subnets": [
                    {
                        "range": f"{subnet}.0/24",
                        "gateway": f"{subnet}.1",
                        "dns": [f"{subnet}.1"],
                        "static": [ip],
                        "cloud_properties": {},
                    }
                ],
            }
        ],
        "instance_groups": [
            {
                "name": "trivial",
                "instances": 1,
                "resource_pool": "vms",
                "persistent_disk_pool": "disks",
                "networks": [{"name": "default", "static_ips": [ip]}],
                "jobs": instance_jobs or [{"name": "trivial", "release": "e2e-dummy"}],
                "properties": {"trivial": {"greeting": "hello from create-env"}},
            }
        ],
        "cloud_provider": {
            "template": {"name": cpi_job, "release": "boshcpi"},
            "mbus": f"https://mbus:((mbus_bootstrap_password))@{ip}:6868",
            "cert": "((mbus_bootstrap_ssl))",
            "properties": {
                cpi_job: {**cpi_properties, "agent": {"mbus": agent_mbus}},
                "agent": {"mbus": agent_mbus},
                "blobstore": {"provider": "local", "path": "/var/vcap/micro_bosh/data/cache"},
            },
        },
        "variables": [
            {"name": "mbus_bootstrap_password", "type": "password"},
            {"name": "default_ca", "type": "certificate", "options": {"is_ca": True, "common_name": "ca"}},
            {
                "name": "mbus_bootstrap_ssl",
                "type": "certificate",
                "options": {"ca": "default_ca", "common_name": ip, "alternative_names": [ip]},
            },
            *(variables or []),
        ],
    }
    path = tmp / f"{name}.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def delete_env(label: str, manifest_path: Path, state: Path, creds: Path) -> subprocess.CompletedProcess:
    """`bosh delete-env`, timed; whatever it answers, the test then checks what is left."""
    args = ["delete-env", str(manifest_path), "--state", str(state), "--vars-store", str(creds)]
    return timed(f"delete-env ({label})", run, *args, check=False)
