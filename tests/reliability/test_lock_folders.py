"""`bosh create-env` runs bin/cpi on the operator's machine as whoever runs the CLI (cloudfoundry/bosh-cli
cloud/cpi_cmd_runner.go), where the job's lock folders under /var/vcap/sys/run cannot be made. With
the Go CPIs' throttles switched on (the Go libvirt CPI's vars set `throttle.name: file-lock`), every
heavy call must still work: the CPI, run here as an unprivileged user, takes its throttle slots and its
create_vm lock in a private folder of that user's, and never trusts such a folder that another user
planted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, SECRETS

NOBODY = 65534
STEMCELL = "img-00000000-0000-4000-8000-000000000000"  # a cid form boshcpi makes: it reaches the driver
PYTHON = "/usr/bin/python3"  # an interpreter the unprivileged user can run (the venv's lives under /root)


@pytest.fixture
def world(tmp_path):
    if os.getuid() != 0:
        pytest.skip("not run: running the CPI as another user needs root")
    if not (shutil.which("setpriv") and os.access(PYTHON, os.X_OK)):
        pytest.skip(f"not run: needs setpriv and {PYTHON}")
    # Everything the unprivileged CPI reads, in a folder it may read; its XDG_RUNTIME_DIR, sticky.
    top = Path(tempfile.mkdtemp(prefix="boshcpi-lockdirs-", dir="/tmp"))
    try:
        shutil.copytree(ROOT / "src" / "boshcpi", top / "src" / "boshcpi", ignore=shutil.ignore_patterns("__pycache__"))
        runtime = top / "run"
        runtime.mkdir()
        runtime.chmod(0o1777)
        config = top / "cpi.json"
        config.write_text(
            json.dumps(
                {
                    "driver": "lxd",
                    "server": {
                        "url": f"unix://{top}/no-daemon.sock",
                        "create_vm_lock": {"enabled": True, "path": "/var/vcap/sys/run/lxd_cpi/create-vm.lock"},
                    },
                    "agent": {"mbus": "nats://nats:mbus-s3cret-pw@10.245.0.11:4222"},
                    "throttle_config": {"enabled": True, "path": "/var/vcap/sys/run/lxd_cpi/throttle.sock", "limit": 2},
                }
            )
        )
        subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
        yield top, runtime, config
    finally:
        shutil.rmtree(top, ignore_errors=True)


def as_nobody(top: Path, runtime: Path, config: Path, method: str, *args) -> tuple[dict, str]:
    assert not Path("/var/vcap").exists(), "this host has /var/vcap: the test would not show the fallback"
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            PYTHON,
            "-I",
            "-c",
            "import sys; sys.path[:0] = [sys.argv.pop(1)]; from boshcpi.cli import main; sys.exit(main())",
            str(top / "src"),
            "cpi",
            "--config",
            str(config),
        ],
        input=json.dumps({"method": method, "arguments": list(args), "context": {}}).encode(),
        capture_output=True,
        env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin"},
        cwd="/",
    )
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert not [s for s in SECRETS if s in out + err]
    return json.loads(out), err


def test_heavy_calls_lock_in_a_private_folder_where_the_jobs_cannot_be_made(world):
    top, runtime, config = world
    private = runtime / f"boshcpi-locks-{NOBODY}"
    # create_stemcell is a heavy call: it takes a throttle slot before it looks at its image.
    doc, err = as_nobody(top, runtime, config, "create_stemcell", "/nonexistent/image", {})
    assert doc["error"]["type"] == "Bosh::Clouds::CpiError", doc
    assert "does not exist" in doc["error"]["message"], doc
    slots = private / "var%vcap%sys%run%lxd_cpi%throttle.sock.slots"
    assert slots.is_dir() and (slots / "slot-0").exists(), err
    assert "slots in" in err
    st = private.stat()
    assert st.st_uid == NOBODY and st.st_mode & 0o777 == 0o700
    # create_vm takes the Go CPI's create_vm lock first, then finds no daemon: a daemon error, not a lock one.
    doc, err = as_nobody(top, runtime, config, "create_vm", "agent", STEMCELL, {}, {}, [], {})
    assert doc["error"] is not None and "/var/vcap" not in doc["error"]["message"], doc
    assert "Permission" not in doc["error"]["message"], doc
    assert (private / "var%vcap%sys%run%lxd_cpi" / "create-vm.lock").exists(), err


def test_a_folder_another_user_planted_is_never_used(world):
    top, runtime, config = world
    planted = runtime / f"boshcpi-locks-{NOBODY}"
    planted.mkdir(mode=0o777)  # made by root, open to all: not the user's own
    planted.chmod(0o777)
    doc, _ = as_nobody(top, runtime, config, "create_stemcell", "/nonexistent/image", {})
    assert doc["error"] is not None and "not a private folder" in doc["error"]["message"], doc
    assert list(planted.iterdir()) == []
