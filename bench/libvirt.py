"""`make bench DRIVER=libvirt`: boshcpi's libvirt driver, with its own RPC client (no libvirt C
library), measured against `virsh` and against the Go libvirt CPI (../shared/tools/go-libvirt-cpi,
digitalocean/go-libvirt underneath) on the same libvirtd, in the same run. Every pair is interleaved;
each figure is a median with its min-max over at least 10 runs.

Rows: `info`, `has_vm` (a VM that does not exist: one lookup), `create_disk` (16 MiB), and a 1 GiB
stemcell upload (raw root.img in the stemcell's gzipped image tarball). boshcpi runs as the job's
bin/cpi runs it (the package built by its own packaging script). `virsh` is the operator's one-line
equivalent: `virsh version`, `virsh domstate`, `virsh vol-create-as`, and `tar -xzf` + `vol-create-as`
+ `vol-upload`. Over the unix socket, as the Go CPI's socket connection; has_vm also over TCP.

Also the RPC client's own cost: what importing it adds to a call, where libvirt-python's import was.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import run as common  # noqa: E402

from boshcpi.dev.tools import GoLibvirtCPI, find_tool  # noqa: E402

ROOT = common.ROOT
GHOST = "vm-00000000-0000-4000-8000-000000000000"
TCP = "qemu+tcp://10.245.10.1/system"


class LibvirtBench(common.Bench):
    """The LXD bench's row/fact bookkeeping, on libvirt."""

    def __init__(self, runs: int, image_mib: int, stemcell_runs: int) -> None:
        self.daemon, self.runs, self.image_mib, self.stemcell_runs = "libvirt", runs, image_mib, stemcell_runs
        self.rows, self.notes = [], []
        self.tmp = Path(tempfile.mkdtemp(prefix="boshcpi-bench-libvirt-"))
        self.pool = f"boshcpi-bench-{uuid.uuid4().hex[:6]}"
        path = self.tmp / "pool"
        path.mkdir()
        self.virsh("pool-create-as", self.pool, "dir", "--target", str(path))
        self.config = self._config("qemu:///system")
        self.tcp_config = self._config(TCP)
        go = find_tool("go-libvirt-cpi")
        self.go = GoLibvirtCPI(go, self.pool, self.tmp) if go else None
        if not self.go:
            self.notes.append("The Go libvirt CPI was not found: its rows are not run.")

    def _config(self, uri: str) -> Path:
        cfg = {
            "driver": "libvirt",
            "libvirt": {
                "uri": uri,
                "domain_type": "qemu",
                "storage_pool_name": self.pool,
                "network_name": "boshcpi-test-net",
            },
            "agent": {"mbus": "nats://n:bench-s3cret@10.245.30.11:4222"},
        }
        path = self.tmp / f"cpi-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(cfg))
        return path

    def virsh(self, *args: str, uri: str = "qemu:///system", check: bool = True) -> str:
        proc = subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {proc.stderr}")
        return proc.stdout

    def go_call(self, method: str, *args) -> dict:
        assert self.go is not None
        req = json.dumps({"method": method, "arguments": list(args), "context": {"director_uuid": "b"}}).encode()
        out = subprocess.run(self.go.command(), input=req, capture_output=True)
        doc = json.loads(out.stdout)
        if doc.get("error") and method != "has_vm":
            raise RuntimeError(f"Go libvirt CPI {method}: {doc['error']}")
        return doc

    def volumes(self) -> list[str]:
        return [line.split()[0] for line in self.virsh("vol-list", self.pool).splitlines() if line.strip()]

    def wipe(self, _: int = 0) -> None:
        for name in self.volumes():
            self.virsh("vol-delete", name, "--pool", self.pool, check=False)

    # ---- rows -------------------------------------------------------------------------------------
    def calls(self) -> None:
        r = self.runs
        ours, base = common.interleaved(lambda: self.cpi("info"), lambda: self.virsh("version"), r)
        self.row("info vs virsh version", ours, base, "virsh version", 1.0)
        if self.go:
            ours, base = common.interleaved(lambda: self.cpi("info"), lambda: self.go_call("info"), r)
            self.row("info vs Go", ours, base, "Go libvirt CPI", 1.0)
        ghost = lambda: self.virsh("domstate", GHOST, check=False)  # noqa: E731
        ours, base = common.interleaved(lambda: self.cpi("has_vm", GHOST), ghost, r)
        self.row("has_vm (unix socket) vs virsh domstate", ours, base, "virsh domstate", 1.0)
        tcp_ghost = lambda: self.virsh("domstate", GHOST, uri=TCP, check=False)  # noqa: E731
        ours, base = common.interleaved(lambda: self.cpi("has_vm", GHOST, config=self.tcp_config), tcp_ghost, r)
        self.row("has_vm (TCP) vs virsh domstate", ours, base, "virsh -c qemu+tcp domstate", 1.0)
        if self.go:
            ours, base = common.interleaved(lambda: self.cpi("has_vm", GHOST), lambda: self.go_call("has_vm", GHOST), r)
            self.row("has_vm vs Go", ours, base, "Go libvirt CPI", 1.0)

    def disks(self) -> None:
        r = self.runs
        ours = lambda: self.cpi("create_disk", 16, {}, None)  # noqa: E731

        def op() -> None:
            self.virsh("vol-create-as", self.pool, f"op-{uuid.uuid4().hex[:8]}", "16M", "--format", "raw")

        a, b = common.interleaved(ours, op, r, setup=self.wipe)
        self.row("create_disk 16 MiB vs virsh vol-create-as", a, b, "virsh vol-create-as", 1.0)
        if self.go:
            a, b = common.interleaved(ours, lambda: self.go_call("create_disk", 16, {}, None), r, setup=self.wipe)
            self.row("create_disk 16 MiB vs Go", a, b, "Go libvirt CPI", 1.0)
        self.wipe()

    def _stemcell_image(self) -> tuple[Path, dict]:
        """A raw root.img of image_mib MiB of incompressible data in a gzipped image tarball."""
        raw = self.tmp / "root.img"
        with open(raw, "wb") as fh:
            for _ in range(self.image_mib):
                fh.write(os.urandom(1 << 20))
        image = self.tmp / "image"
        with tarfile.open(image, "w:gz", compresslevel=1) as tf:
            tf.add(raw, arcname="root.img")
        raw.unlink()
        props = {"name": "bench", "version": "1", "infrastructure": "openstack", "disk_format": "raw",
                 "os_distro": "ubuntu", "architecture": "x86_64", "disk": self.image_mib}  # fmt: skip
        return image, props

    def stemcell(self) -> None:
        image, props = self._stemcell_image()
        runs = self.stemcell_runs
        ours = lambda: self.cpi("create_stemcell", str(image), {**props, "version": uuid.uuid4().hex[:6]})  # noqa: E731

        def op() -> None:
            out = self.tmp / "extract"
            out.mkdir(exist_ok=True)
            subprocess.run(["tar", "-xzf", str(image), "-C", str(out), "root.img"], check=True)
            name = f"op-{uuid.uuid4().hex[:8]}"
            size = (out / "root.img").stat().st_size
            self.virsh("vol-create-as", self.pool, name, str(size), "--format", "raw")
            self.virsh("vol-upload", name, str(out / "root.img"), "--pool", self.pool)
            (out / "root.img").unlink()

        a, b = common.interleaved(ours, op, runs, setup=self.wipe)
        label = f"create_stemcell {self.image_mib} MiB raw"
        self.row(f"{label} vs tar -xzf + virsh vol-upload", a, b, "tar -xzf + virsh vol-create-as + vol-upload", 1.05)
        if self.go:
            go = lambda: self.go_call("create_stemcell", str(image), props)  # noqa: E731
            a, b = common.interleaved(ours, go, runs, setup=self.wipe)
            self.row(f"{label} vs Go", a, b, "Go libvirt CPI", 1.0)
        self.wipe()

    def import_cost(self) -> None:
        """What the RPC client adds to a call's start, from `-X importtime` (cumulative, microseconds)."""
        # As the launcher runs it: isolated, no site; the package's modules first on the path. The
        # median of 15 runs (one run is at the mercy of the machine).
        code = "import sys; sys.path.insert(0, sys.argv[1]); import boshcpi.drivers.libvirt.remote"
        samples = []
        for _ in range(15):
            proc = subprocess.run(
                [sys.executable, "-I", "-S", "-X", "importtime", "-c", code, str(ROOT / "src")],
                capture_output=True,
                text=True,
            )
            for line in proc.stderr.splitlines():
                if line.rstrip().endswith("boshcpi.drivers.libvirt.remote"):
                    samples.append(int(line.split("|")[1]))
        cumulative = sorted(samples)[len(samples) // 2] if samples else 0
        self.fact("import of the libvirt RPC client (remote, rpc, xdr, transport)", round(cumulative / 1000, 2), "ms",
                  None, "what replaced libvirt-python's import")  # fmt: skip

    def close(self) -> None:
        self.wipe()
        self.virsh("pool-destroy", self.pool, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--stemcell-runs", type=int, default=10)
    p.add_argument("--image-mib", type=int, default=1024)
    p.add_argument("--only", help="comma-separated parts: calls,disks,stemcell,imports (default: all)")
    p.add_argument("--out")
    args = p.parse_args()
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    pkg_dir = Path(tempfile.mkdtemp(prefix="boshcpi-bench-pkg-"))
    common.BOSHCPI[:] = common.packaged_launcher(pkg_dir)
    bench = LibvirtBench(max(args.runs, 10), args.image_mib, max(args.stemcell_runs, 10))
    parts = {"calls": bench.calls, "disks": bench.disks, "stemcell": bench.stemcell, "imports": bench.import_cost}
    out = common.run_parts(parts, args.only, bench, pkg_dir, args.out, "libvirt")
    version = subprocess.run(["virsh", "-c", "qemu:///system", "version", "--daemon"], capture_output=True, text=True)
    daemon_line = next((line for line in version.stdout.splitlines() if "daemon" in line.lower()), "")
    common.write_results(out, "libvirt", daemon_line, bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
