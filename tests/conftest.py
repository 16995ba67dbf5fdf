"""Fixtures: one per daemon (LXD, Incus, libvirt), each yielding a connected, run-unique context that
removes everything it made. LXD and Incus runs live in a project of their own, `boshcpi-t<hex>`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from boshcpi.dev import stemcells
from tests.helpers import Response, call

CACHE = Path(__file__).resolve().parent / ".cache"
RUN_ID = uuid.uuid4().hex[:6]
# The reliability and failure tests inject faults; the switch enables the hooks (see boshcpi.faults).
os.environ["BOSHCPI_TEST_FAULTS"] = "1"

DAEMONS = {
    "lxd": {"cli": "lxc", "socket": "/var/lib/lxd/unix.socket", "network": "boshcpi-lxdbr0", "subnet": "10.245.10"},
    "incus": {
        "cli": "incus",
        "socket": "/var/lib/incus/unix.socket",
        "network": "boshcpi-incbr0",
        "subnet": "10.245.20",
    },
}
POOL = "boshcpi-btrfs"


@dataclass
class LXDContext:
    kind: str
    project: str
    config_path: Path
    config: dict[str, Any]
    cli: str
    subnet: str
    tmp: Path

    def call(self, method: str, *args: Any, **kw: Any) -> Response:
        return call(self.config_path, method, *args, **kw)

    def cli_run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([self.cli, "--project", self.project, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.cli} {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def api(self, path: str, missing_ok: bool = False) -> Any:
        """GET through the daemon's own client. A failed query raises (a check of what is left must
        never pass because the query itself failed); a missing object is None only when asked."""
        sep = "&" if "?" in path else "?"
        proc = subprocess.run([self.cli, "query", f"{path}{sep}project={self.project}"], capture_output=True, text=True)
        if proc.returncode != 0:
            if missing_ok and "not found" in proc.stderr.lower():
                return None
            raise AssertionError(f"{self.cli} query {path} failed: {proc.stderr.strip()}")
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def post(self, path: str, body: str) -> None:
        """POST through the daemon's own client (`query` takes no --project: the path carries it)."""
        sep = "&" if "?" in path else "?"
        proc = subprocess.run(
            [self.cli, "query", "-X", "POST", "-d", body, f"{path}{sep}project={self.project}"],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{self.cli} query -X POST {path} failed: {proc.stderr.strip()}")

    def instances(self) -> list[str]:
        return [i["name"] for i in self.api("/1.0/instances?recursion=1")]

    def volumes(self) -> list[str]:
        vols = self.api(f"/1.0/storage-pools/{POOL}/volumes/custom?recursion=1")
        return [v["name"] for v in vols if "/" not in v["name"]]  # snapshots are listed as disk/snap

    def images(self) -> list[str]:
        return [i["fingerprint"] for i in self.api("/1.0/images?recursion=1")]

    def write_config(self, **overrides: Any) -> Path:
        cfg = json.loads(json.dumps(self.config))
        for section, values in overrides.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        path = self.tmp / f"cpi-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(cfg))
        return path


def _daemon_up(kind: str) -> bool:
    return os.path.exists(DAEMONS[kind]["socket"]) and shutil.which(DAEMONS[kind]["cli"]) is not None


def _project_teardown(cli: str, project: str) -> None:
    def q(path: str) -> Any:
        proc = subprocess.run([cli, "query", path], capture_output=True, text=True)
        return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []

    for inst in q(f"/1.0/instances?project={project}&recursion=1") or []:
        subprocess.run([cli, "--project", project, "delete", "--force", inst["name"]], capture_output=True)
    for img in q(f"/1.0/images?project={project}&recursion=1") or []:
        subprocess.run([cli, "--project", project, "image", "delete", img["fingerprint"]], capture_output=True)
    for vol in q(f"/1.0/storage-pools/{POOL}/volumes/custom?project={project}&recursion=1") or []:
        for snap in q(f"/1.0/storage-pools/{POOL}/volumes/custom/{vol['name']}/snapshots?project={project}") or []:
            name = snap.rsplit("/", 1)[-1].split("?")[0]
            subprocess.run(
                [cli, "--project", project, "storage", "volume", "delete", POOL, f"{vol['name']}/{name}"],
                capture_output=True,
            )
        subprocess.run(
            [cli, "--project", project, "storage", "volume", "delete", POOL, vol["name"]], capture_output=True
        )
    for prof in q(f"/1.0/profiles?project={project}") or []:
        name = prof.rsplit("/", 1)[-1].split("?")[0]
        if name.startswith("boshcpi-lock-"):  # a lock a test's killed call held (else the project stays)
            subprocess.run([cli, "--project", project, "profile", "delete", name], capture_output=True)
    subprocess.run([cli, "project", "delete", project], capture_output=True)


def _lxd_context(kind: str, tmp_path_factory: pytest.TempPathFactory):
    if not _daemon_up(kind):
        pytest.fail(f"{kind} is not running: run `make host` (make test does it)")
    d = DAEMONS[kind]
    project = f"boshcpi-t{RUN_ID}"
    subprocess.run(
        [
            d["cli"],
            "project",
            "create",
            project,
            "-c",
            "features.images=true",
            "-c",
            "features.profiles=true",
            "-c",
            "features.storage.volumes=true",
        ],
        check=True,
        capture_output=True,
    )
    tmp = tmp_path_factory.mktemp(f"{kind}-ctx")
    config = {
        "server": {
            "type": kind,
            "url": f"unix://{d['socket']}",
            "project_name": project,
            "profile_name": "default",
            "network_name": d["network"],
            "storage_pool_name": POOL,
        },
        "agent": {
            "mbus": "nats://nats-user:mbus-s3cret-pw@10.245.0.11:4222",
            "ntp": ["10.245.0.1"],
            "blobstore": {
                "provider": "dav",
                "options": {"endpoint": "http://10.245.0.11:25250", "user": "agent", "password": "blob-s3cret-pw"},
            },
        },
    }
    config_path = tmp / "cpi.json"
    config_path.write_text(json.dumps(config))
    ctx = LXDContext(kind, project, config_path, config, d["cli"], d["subnet"], tmp)
    try:
        yield ctx
    finally:
        _project_teardown(d["cli"], project)


def extra_pool(ctx: LXDContext, tag: str):
    """A second storage pool (btrfs on a 1 GiB loop file) named with this run's prefix; on teardown
    this project's volumes in it (snapshots first) and then the pool go."""
    name = f"{ctx.project}-{tag}"
    subprocess.run([ctx.cli, "storage", "create", name, "btrfs", "size=1GiB"], check=True, capture_output=True)
    try:
        yield name
    finally:
        vols = ctx.api(f"/1.0/storage-pools/{name}/volumes/custom?recursion=1", missing_ok=True) or []
        for vol in sorted(vols, key=lambda v: "/" not in v["name"]):
            subprocess.run(
                [ctx.cli, "--project", ctx.project, "storage", "volume", "delete", name, vol["name"]],
                capture_output=True,
            )
        subprocess.run([ctx.cli, "storage", "delete", name], capture_output=True)


@pytest.fixture(scope="session")
def lxd(tmp_path_factory):
    yield from _lxd_context("lxd", tmp_path_factory)


@pytest.fixture(scope="session")
def incus(tmp_path_factory):
    yield from _lxd_context("incus", tmp_path_factory)


@pytest.fixture(scope="session", params=["lxd", "incus"])
def daemon(request):
    """The same test against LXD and against Incus."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def test_stemcells() -> dict[str, Path]:
    return stemcells.build_all(CACHE / "stemcells")


@pytest.fixture(scope="module")
def lxd_stemcell(lxd, test_stemcells):
    """A warden-style stemcell uploaded to LXD for one test module."""
    d = test_stemcells["warden"]
    cid = lxd.call("create_stemcell", str(d / "image"), stemcells.cloud_properties(d)).ok()
    yield cid
    lxd.call("delete_stemcell", cid)


LIBVIRT_POOLS = Path("/var/lib/boshcpi-dev/libvirt-pools")


def in_pool(dom, pool: str) -> bool:
    """Whether a domain is this run's: its disks live in the run's own pool (libvirt domains are
    global, and the CPI names them vm-<uuid>, not after the run). A domain deleted since it was
    listed (a concurrent call's) is nobody's."""
    from boshcpi.drivers.libvirt import remote

    try:
        return f"{LIBVIRT_POOLS / pool}/" in dom.XMLDesc(0)
    except remote.libvirtError as e:
        if e.get_error_code() == remote.VIR_ERR_NO_DOMAIN:
            return False
        raise


@pytest.fixture(scope="session")
def libvirt_pool():
    """A libvirt storage pool of this run's own (a dir pool), so every "nothing left" check counts
    only what this run made; at the end, domains using it and its volumes go with it."""
    from boshcpi.drivers.libvirt import remote as libvirt

    conn = libvirt.open("qemu:///system")
    name = f"boshcpi-t{RUN_ID}"
    path = LIBVIRT_POOLS / name
    path.mkdir(parents=True, exist_ok=True)
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>", 0
    )
    pool.create(0)
    try:
        yield name
    finally:
        for dom in conn.listAllDomains(0):
            if in_pool(dom, name):
                try:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError:
                    pass
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        pool.undefine()
        shutil.rmtree(path, ignore_errors=True)
        conn.close()
