"""A cid or an input can only ever reach objects boshcpi made; every bad input is answered cleanly and
bounded. Each case goes through the real `boshcpi cpi` process against real LXD/Incus and then asks the
daemon what is left: nothing boshcpi did not make is ever deleted, nothing is written where it should
not be."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from boshcpi.dev import stemcells
from tests.helpers import ROOT, call
from tests.integration.test_lxd_containers import network

UUID = "dead0000-0000-4000-8000-00000000beef"


def foreign_volume(ctx, name: str, content: str = "filesystem") -> None:
    """A custom volume an operator made by hand, with no boshcpi marks."""
    args = ["storage", "volume", "create", "boshcpi-btrfs", name, "size=8MiB"]
    if content == "block":
        args.append("--type=block")
    ctx.cli_run(*args)


def test_cids_reach_only_what_boshcpi_made(daemon, lxd_stemcell_for):
    ctx = daemon
    sc = lxd_stemcell_for(ctx)
    # What an operator made by hand, with names close to boshcpi's.
    foreign = [f"vol-e-{UUID}", f"vol-c-{UUID}-abcdef", "vol-e-beef", "operator-data"]
    for name in foreign:
        foreign_volume(ctx, name)
    ctx.post("/1.0/storage-pools/boshcpi-btrfs/volumes/custom/operator-data/snapshots", '{"name": "keep"}')
    vm, _ = ctx.call("create_vm", "agent-s1", sc, {}, network(ctx, 81), [], {}).ok()
    ctx.post(f"/1.0/instances/{vm}/snapshots", '{"name": "s0"}')
    disk = ctx.call("create_disk", 16, {}, None).ok()
    snap = ctx.call("snapshot_disk", disk, {}).ok()
    snap_name = snap.split("@", 1)[1]
    try:
        volumes, instances = set(ctx.volumes()), set(ctx.instances())
        for cid in ("vm-dead", "vm-", f"vm-{UUID}", f"{vm}/state", f"{vm}/snapshots/s0", "../instances/" + vm):
            assert ctx.call("delete_vm", cid).ok() is None, cid
            assert ctx.call("has_vm", cid).ok() is (cid == vm), cid
        for cid in (f"{disk}/snapshots/{snap_name}", "operator-data", f"{disk}/../operator-data", "vol-p-dead"):
            assert ctx.call("delete_disk", cid).ok() is None, cid
            assert ctx.call("has_disk", cid).ok() is False, cid
        assert ctx.call("delete_snapshot", "operator-data@snap-000000000000").ok() is None
        assert ctx.call("delete_snapshot", "operator-data/keep").ok() is None
        assert ctx.call("delete_stemcell", "img-../../1.0").ok() is None
        # Lookups of such cids are typed NotFound, and reach nothing either.
        assert ctx.call("reboot_vm", f"{vm}/state").error_type == "Bosh::Clouds::VMNotFound"
        assert ctx.call("attach_disk", vm, "operator-data").error_type == "Bosh::Clouds::DiskNotFound"
        assert ctx.call("resize_disk", "operator-data", 64).error_type == "Bosh::Clouds::DiskNotFound"
        # Nothing was touched: every volume, instance, instance snapshot and volume snapshot is there.
        assert set(ctx.volumes()) == volumes and set(ctx.instances()) == instances
        assert [s.rsplit("/", 1)[-1].split("?")[0] for s in ctx.api(f"/1.0/instances/{vm}/snapshots")] == ["s0"]
        assert ctx.api(f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{disk}/snapshots/{snap_name}")
        assert ctx.api("/1.0/storage-pools/boshcpi-btrfs/volumes/custom/operator-data/snapshots/keep")
        assert ctx.api("/1.0/storage-pools/boshcpi-btrfs/volumes/custom/operator-data")["name"] == "operator-data"
    finally:
        ctx.call("delete_snapshot", snap)
        ctx.call("delete_disk", disk)
        ctx.cli_run("delete", "--force", vm, check=False)
        ctx.call("delete_vm", vm)
        for name in foreign:
            ctx.cli_run("storage", "volume", "delete", "boshcpi-btrfs", name, check=False)


def test_an_instance_boshcpi_did_not_make_is_left_alone(daemon):
    ctx = daemon
    name = f"vm-{UUID}"
    ctx.cli_run("init", "--empty", name, "-s", "boshcpi-btrfs")
    try:
        assert ctx.call("has_vm", name).ok() is False
        assert ctx.call("delete_vm", name).ok() is None
        assert ctx.call("set_vm_metadata", name, {"a": "b"}).error_type == "Bosh::Clouds::VMNotFound"
        assert name in ctx.instances()
    finally:
        ctx.cli_run("delete", "--force", name, check=False)


@pytest.fixture(scope="module")
def lxd_stemcell_for(test_stemcells):
    made: dict[str, tuple] = {}

    def get(ctx):
        if ctx.kind not in made:
            d = test_stemcells["warden"]
            made[ctx.kind] = (ctx, ctx.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok())
        return made[ctx.kind][1]

    yield get
    for ctx, cid in made.values():
        ctx.call("delete_stemcell", cid)


def test_raw_devices_and_config_need_the_opt_in(daemon, lxd_stemcell_for):
    ctx = daemon
    sc = lxd_stemcell_for(ctx)
    before = (set(ctx.instances()), set(ctx.volumes()))
    host_etc = {"hostetc": {"type": "disk", "source": "/etc", "path": "/mnt/hostetc"}}
    for props in (
        {"devices": host_etc},
        {"config": {"raw.lxc": "lxc.apparmor.profile=unconfined"}},
        {"config": {"security.privileged": "true"}},
        {"devices": {"p": {"type": "proxy"}}},
    ):
        resp = ctx.call("create_vm", "agent-raw", sc, props, network(ctx, 82), [], {})
        assert resp.error_type == "Bosh::Clouds::CpiError", props
        assert "allow_raw_" in resp.error["message"]
    assert (set(ctx.instances()), set(ctx.volumes())) == before
    # With the operator's opt-in the host path is mounted, read-only here.
    cfg = ctx.write_config(server={"allow_raw_devices": True})
    host_etc["hostetc"]["readonly"] = "true"
    vm, _ = call(cfg, "create_vm", "agent-raw", sc, {"devices": host_etc}, network(ctx, 83), [], {}).ok()
    try:
        assert "hostetc" in ctx.api(f"/1.0/instances/{vm}")["devices"]
    finally:
        call(cfg, "delete_vm", vm).ok()


def test_a_cloud_config_cannot_attach_another_vms_volumes(daemon, lxd_stemcell_for):
    """A `devices` entry `{type: disk, pool, source}` naming another VM's config drive (its agent's
    credentials), ephemeral or persistent disk, or any volume carrying BOSH marks, needs the operator's
    allow_raw_devices; an operator's own unmarked volume does not."""
    ctx = daemon
    sc = lxd_stemcell_for(ctx)
    victim, _ = ctx.call("create_vm", "agent-victim", sc, {"ephemeral_disk": 16}, network(ctx, 84), [], {}).ok()
    disk = ctx.call("create_disk", 16, {}, victim).ok()
    marked, plain = f"marked-{uuid.uuid4().hex[:6]}", f"plain-{uuid.uuid4().hex[:6]}"
    ctx.cli_run("storage", "volume", "create", "boshcpi-btrfs", marked, "size=8MiB", "user.bosh.kind=persistent")
    ctx.cli_run("storage", "volume", "create", "boshcpi-btrfs", plain, "size=8MiB")
    try:
        # A container's settings live in its filesystem; its ephemeral disk is a volume like a VM's
        # config drive (vol-c-, refused by the same rule).
        ephemeral = next(
            d["source"] for d in ctx.api(f"/1.0/instances/{victim}")["devices"].values()
            if d.get("type") == "disk" and str(d.get("source", "")).startswith("vol-e-")
        )  # fmt: skip
        before = (set(ctx.instances()), set(ctx.volumes()))
        for source in (ephemeral, disk, marked, f"vol-c-{victim[3:]}-abcdef"):
            dev = {"steal": {"type": "disk", "pool": "boshcpi-btrfs", "source": source, "path": "/mnt/x"}}
            resp = ctx.call("create_vm", "agent-thief", sc, {"devices": dev}, network(ctx, 85), [], {})
            assert resp.error_type == "Bosh::Clouds::CpiError", source
            assert "allow_raw_devices" in resp.error["message"]
        assert (set(ctx.instances()), set(ctx.volumes())) == before
        dev = {"share": {"type": "disk", "pool": "boshcpi-btrfs", "source": plain, "path": "/mnt/share"}}
        vm, _ = ctx.call("create_vm", "agent-share", sc, {"devices": dev}, network(ctx, 85), [], {}).ok()
        assert ctx.api(f"/1.0/instances/{vm}")["devices"]["share"]["source"] == plain
        ctx.call("delete_vm", vm).ok()
    finally:
        ctx.call("delete_vm", victim)
        ctx.call("delete_disk", disk)
        for name in (marked, plain):
            ctx.cli_run("storage", "volume", "delete", "boshcpi-btrfs", name, check=False)


def _image_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _qcow2(tmp: Path, *extra: str) -> bytes:
    out = tmp / f"q{len(extra)}.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", *extra, str(out), "64M"], check=True, capture_output=True)
    return out.read_bytes()


def test_stemcells_are_checked_before_anything_is_uploaded(daemon, tmp_path, test_stemcells):
    ctx = daemon
    images_before = set(ctx.images())
    tmpdir = tmp_path / "cpi-tmp"
    tmpdir.mkdir()
    env = {"BOSHCPI_TMPDIR": str(tmpdir)}
    vm_props = stemcells.cloud_properties(test_stemcells["vm-raw"])
    backing = tmp_path / "hostname.raw"
    backing.write_bytes(b"host secret\n")
    cases = {
        "architecture": (
            test_stemcells["warden"] / "image",
            {**stemcells.cloud_properties(test_stemcells["warden"]), "architecture": "x86_64\nproperties:\n  x: y"},
            "unsupported architecture",
        ),
        "backing file": (
            _image_tar(tmp_path / "b.tgz", {"root.img": _qcow2(tmp_path, "-b", str(backing), "-F", "raw")}),
            {**vm_props, "disk_format": "qcow2"},
            "backing file",
        ),
        "empty root.img": (_image_tar(tmp_path / "e.tgz", {"root.img": b""}), vm_props, "empty"),
        "no root.img, garbage": (
            _image_tar(tmp_path / "g.tgz", {"junk.bin": os.urandom(1024)}),
            {"name": "x", "disk_format": "?"},
            "neither a disk image",
        ),
        "not a tarball": (backing, vm_props, "not a readable tarball"),
    }
    for what, (image, props, needle) in cases.items():
        resp = call(ctx.config_path, "create_stemcell", str(image), props, env=env)
        assert resp.error_type == "Bosh::Clouds::CpiError", (what, resp.error)
        assert needle in resp.error["message"], (what, resp.error)
        assert "Traceback" not in resp.stderr, what
    assert set(ctx.images()) == images_before
    assert list(tmpdir.iterdir()) == []


def test_a_small_stemcell_cannot_fill_the_disk(daemon, tmp_path):
    """A 2 MB stemcell holding a 2 GiB all-zero raw root.img: above the configured ceiling it is
    refused before anything is written; below it, it is written sparse (a few MiB on disk)."""
    ctx = daemon
    raw = tmp_path / "zero.img"
    with open(raw, "wb") as fh:
        fh.truncate(2 << 30)
    image = tmp_path / "image"
    with tarfile.open(image, "w:gz", compresslevel=9) as tf:
        tf.add(raw, arcname="root.img")
    raw.unlink()
    assert image.stat().st_size < 4 << 20
    props = {"name": "zero", "version": "1", "disk_format": "raw", "architecture": "x86_64"}
    tmpdir = tmp_path / "cpi-tmp"
    tmpdir.mkdir()
    cfg = ctx.write_config(server={"max_stemcell_image": "1GiB"})
    resp = call(cfg, "create_stemcell", str(image), props, env={"BOSHCPI_TMPDIR": str(tmpdir)})
    assert resp.error_type == "Bosh::Clouds::CpiError" and "above the limit" in resp.error["message"]
    assert list(tmpdir.iterdir()) == []
    # Below the ceiling: converted through a sparse temporary file, which is gone afterwards.
    sc = call(ctx.config_path, "create_stemcell", str(image), props, env={"BOSHCPI_TMPDIR": str(tmpdir)}).ok()
    assert list(tmpdir.iterdir()) == []
    ctx.call("delete_stemcell", sc).ok()


def test_inputs_are_bounded_and_typed(daemon, lxd_stemcell_for):
    ctx = daemon
    sc = lxd_stemcell_for(ctx)
    before = (set(ctx.instances()), set(ctx.volumes()))

    def cpi_error(method, *args, needle=""):
        resp = ctx.call(method, *args)
        assert resp.error_type == "Bosh::Clouds::CpiError", (method, resp.error)
        assert needle in resp.error["message"], (method, resp.error)
        assert resp.error["ok_to_retry"] is False
        return resp

    start = time.monotonic()
    cpi_error("has_vm", "vm-" + "x" * (10 << 20), needle="at most")
    cpi_error("has_vm", "vm-" + "x" * (20 << 20), needle="larger than")
    assert time.monotonic() - start < 30
    cpi_error("has_vm", "vm-\ud800", needle="invalid Unicode")
    cpi_error("create_vm", "agent\x00id", sc, {}, {}, [], {}, needle="control character")
    cpi_error("create_disk", 1e300, {}, None, needle="must be an integer")
    cpi_error("create_disk", 2**53 + 1, {}, None, needle="at most")
    cpi_error("create_disk", 16 << 20, {}, None, needle="does not fit")  # 16 TiB on a 12 GiB pool
    cpi_error("calculate_vm_cloud_properties", {"cpu": 1, "ram": -1}, needle="got -1")
    vm, _ = ctx.call("create_vm", "agent-b", sc, {}, network(ctx, 84), [], {}).ok()
    try:
        cpi_error("set_vm_metadata", vm, {"k": "v" * (5 << 20)}, needle="at most")
        cpi_error("set_vm_metadata", vm, {"k\nx": "v"}, needle="control character")
        assert len(ctx.api(f"/1.0/instances/{vm}")["description"]) < 256
    finally:
        ctx.call("delete_vm", vm).ok()
    cpi_error("create_vm", "agent-b", sc, {"instance_type": "c1-m512"}, network(ctx, 85), [], {}, needle="host has")
    assert (set(ctx.instances()), set(ctx.volumes())) == before


def test_urls_with_credentials_or_bad_ports_are_refused_without_echoing_them(tmp_path):
    for url, needle in (
        ("https://u:PW-s3cret@h:8443", "credentials"),
        ("https://h:8443x", "port"),
        ("https://h:99999", "port"),
        ("http://h", "https://"),
    ):
        path = tmp_path / "cpi.json"
        path.write_text(json.dumps({"server": {"url": url}}))
        resp = call(path, "info")
        assert resp.error_type == "Bosh::Clouds::CpiError" and needle in resp.error["message"], url
        assert "PW-s3cret" not in resp.stdout + resp.stderr
        proc = subprocess.run(
            [sys.executable, "-m", "boshcpi.cli", "check-config", "--config", str(path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1 and "PW-s3cret" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("command", ["cleanup", "doctor"])
def test_commands_report_an_unreachable_server_in_one_line(tmp_path, command):
    path = tmp_path / "cpi.json"
    path.write_text(json.dumps({"server": {"url": "unix:///nonexistent/boshcpi.sock"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "boshcpi.cli", command, "--config", str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode in (1, 2)
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "nonexistent" in out
    assert len(out.strip().splitlines()) <= 3


def _throttle(tmp_path):
    sock = tmp_path / "t.sock"
    log = open(tmp_path / "throttle.log", "w")  # noqa: SIM115 - the server writes to it until killed
    server = subprocess.Popen(
        [sys.executable, "-m", "boshcpi.cli", "throttle", "--path", str(sock), "--limit", "1", "--hold", "30s"],
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.05)
    return server, sock


def _ask(sock: Path, payload: bytes, timeout: float = 10) -> bytes:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock))
    s.sendall(payload)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data


def test_throttle_server_answers_every_malformed_request_and_closes_idle_ones(tmp_path):
    server, sock = _throttle(tmp_path)
    try:
        for bad in (
            b"[1,2,3]\n",
            b'"acquire"\n',
            b"null\n",
            b"x" * 70000 + b"\n",
            b"[" * 100000 + b"]" * 100000 + b"\n",
        ):
            reply = json.loads(_ask(sock, bad))
            assert reply["granted"] is False and reply["error"], bad[:20]
        # A connection that never sends its request is closed within the first-line timeout.
        idle = socket.socket(socket.AF_UNIX)
        idle.settimeout(15)
        idle.connect(str(sock))
        start = time.monotonic()
        assert b"no request" in idle.recv(4096)
        assert idle.recv(4096) == b"" and time.monotonic() - start < 10
        idle.close()
        # An id with newlines cannot forge log lines.
        held = socket.socket(socket.AF_UNIX)
        held.connect(str(sock))
        held.sendall(b'{"op": "acquire", "id": "x\\n2026-01-01 throttle: granted L9 to root"}\n')
        assert json.loads(held.recv(4096))["granted"] is True
        held.close()
        time.sleep(0.5)
        status = json.loads(_ask(sock, b'{"op": "status"}\n'))
        assert status["active"] == []
    finally:
        server.terminate()
        server.wait(timeout=30)
    log = (tmp_path / "throttle.log").read_text()
    assert "Traceback" not in log and "Unhandled exception" not in log
    assert not any(line.startswith("2026-01-01 throttle: granted L9") for line in log.splitlines())
