"""`make bench`: boshcpi's costs as ratios against baselines measured in the same run, on real
LXD (or Incus: --daemon incus) with a btrfs pool. Prints a table; writes bench/results.json.

Rows:
  1. call overhead: `boshcpi cpi` info and has_vm vs bare `python -c pass` and vs one raw REST
     request with curl on the same socket;
  2. create_vm (container) end to end vs the same REST sequence issued directly by one process;
  3. create_stemcell of a 1 GiB image vs `lxc image import` of the same files, and the CPI's peak RSS;
  4. scale: 20 create_vm in parallel with throttle limits 2, 4, 8 and off; pool space per VM;
  5. delete_vm and attach_disk latency.
Every figure is a median over several runs with its spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from boshcpi.dev import stemcells  # noqa: E402
from boshcpi.drivers.lxd.client import LXDClient  # noqa: E402

PY = sys.executable
BOSHCPI = [str(Path(PY).parent / "boshcpi")]
DAEMONS = {
    "lxd": ("lxc", "/var/lib/lxd/unix.socket", "boshcpi-lxdbr0", "10.245.10"),
    "incus": ("incus", "/var/lib/incus/unix.socket", "boshcpi-incbr0", "10.245.20"),
}


def timed(fn, runs: int) -> dict:
    xs = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return {"median_ms": statistics.median(xs) * 1000, "min_ms": min(xs) * 1000, "max_ms": max(xs) * 1000, "runs": runs}


def cpi(config: Path, method: str, *args, env: dict | None = None) -> dict:
    req = json.dumps({"method": method, "arguments": list(args), "context": {}, "api_version": 2})
    out = subprocess.run(
        [*BOSHCPI, "cpi", "--config", str(config)],
        input=req.encode(),
        capture_output=True,
        env={**os.environ, **(env or {})},
    )
    doc = json.loads(out.stdout)
    if doc["error"]:
        raise RuntimeError(f"{method}: {doc['error']}")
    return doc["result"]


class Bench:
    def __init__(self, daemon: str, runs: int, quick: bool) -> None:
        self.daemon, self.runs, self.quick = daemon, runs, quick
        self.cli, self.socket, self.network, self.subnet = DAEMONS[daemon]
        self.project = f"boshcpi-bench-{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="boshcpi-bench-"))
        subprocess.run(
            [
                self.cli,
                "project",
                "create",
                self.project,
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
        self.config = self.write_config()
        self.rows: list[dict] = []
        self.stemcells = stemcells.build_all(Path("/var/tmp/boshcpi-stemcells"))

    def write_config(self, **throttle) -> Path:
        cfg = {
            "server": {
                "type": self.daemon,
                "url": f"unix://{self.socket}",
                "project_name": self.project,
                "network_name": self.network,
                "storage_pool_name": "boshcpi-btrfs",
            },
            "agent": {"mbus": "nats://bench:bench-password@10.245.0.11:4222"},
        }
        if throttle:
            cfg["throttle_config"] = {"enabled": True, "path": str(self.tmp / "throttle.sock"), **throttle}
        path = self.tmp / f"cpi-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(cfg))
        return path

    def row(self, name: str, value: dict, baseline: dict, target: str, note: str = "") -> None:
        ratio = value["median_ms"] / baseline["median_ms"] if baseline["median_ms"] else float("nan")
        self.rows.append(
            {
                "name": name,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "overhead_ms": value["median_ms"] - baseline["median_ms"],
                "target": target,
                "note": note,
            }
        )

    # 1 ---------------------------------------------------------------------------------------
    def call_overhead(self) -> None:
        subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "src")], check=True)
        info = self.tmp / "info.json"
        info.write_text('{"method":"info","arguments":[],"context":{},"api_version":2}')
        has_vm = self.tmp / "has_vm.json"
        has_vm.write_text('{"method":"has_vm","arguments":["vm-00000000-0000-4000-8000-000000000000"],"context":{}}')

        def run(cmd, stdin=None):
            with open(stdin) if stdin else open(os.devnull) as fh:
                subprocess.run(cmd, stdin=fh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        n = self.runs * 10
        bare = timed(lambda: run([PY, "-c", "pass"]), n)
        curl = timed(
            lambda: run(
                ["curl", "-s", "--unix-socket", self.socket, f"http://x/1.0/instances/vm-x?project={self.project}"]
            ),
            n,
        )
        t_info = timed(lambda: run([*BOSHCPI, "cpi", "--config", str(self.config)], info), n)
        t_has = timed(lambda: run([*BOSHCPI, "cpi", "--config", str(self.config)], has_vm), n)
        self.row("info vs python -c pass", t_info, bare, "overhead < 40 ms")
        self.row("has_vm vs python -c pass", t_has, bare, "overhead < 40 ms")
        self.row("has_vm vs curl (one raw REST request)", t_has, curl, "informational")

    # 2 ---------------------------------------------------------------------------------------
    def create_vm_vs_raw(self) -> None:
        d = self.stemcells["warden"]
        sc = cpi(self.config, "create_stemcell", str(d / "image"), stemcells.cloud_properties(d))
        fp = LXDClient(f"unix://{self.socket}", project=self.project).get(f"/1.0/images/aliases/{sc}")["target"]
        raw_script = self.tmp / "raw_create.py"
        raw_script.write_text(RAW_CREATE)
        names: list[str] = []
        vms: list[str] = []

        def raw():
            name = f"raw-{uuid.uuid4().hex[:8]}"
            names.append(name)
            subprocess.run([PY, str(raw_script), self.socket, self.project, fp, name, self.network], check=True)

        def ours():
            vm, _ = cpi(self.config, "create_vm", "bench-agent", sc, {"ephemeral_disk": 64}, {}, [], {})
            vms.append(vm)

        runs = max(3, self.runs)
        t_raw, t_ours = {"median_ms": 0}, {"median_ms": 0}
        # Interleave to share the daemon's state fairly.
        raws, ourss = [], []
        for _ in range(runs):
            raws.append(timed(raw, 1)["median_ms"])
            ourss.append(timed(ours, 1)["median_ms"])
        t_raw = {"median_ms": statistics.median(raws), "min_ms": min(raws), "max_ms": max(raws), "runs": runs}
        t_ours = {"median_ms": statistics.median(ourss), "min_ms": min(ourss), "max_ms": max(ourss), "runs": runs}
        self.row("create_vm (container) vs raw REST sequence", t_ours, t_raw, "ratio <= 1.15")
        client = LXDClient(f"unix://{self.socket}", project=self.project)
        for name in names:
            client.request("PUT", f"/1.0/instances/{name}/state", {"action": "stop", "force": True})
            client.request("DELETE", f"/1.0/instances/{name}")
            client.request("DELETE", f"/1.0/storage-pools/boshcpi-btrfs/volumes/custom/{name}-eph")
        # 5: delete_vm and attach_disk latency on the VMs we made.
        disk = cpi(self.config, "create_disk", 32, {}, vms[0])
        attach, detach = [], []
        for _ in range(runs):
            attach.append(timed(lambda: cpi(self.config, "attach_disk", vms[0], disk), 1)["median_ms"])
            detach.append(timed(lambda: cpi(self.config, "detach_disk", vms[0], disk), 1)["median_ms"])
        cpi(self.config, "delete_disk", disk)
        dels = [timed(lambda vm=vm: cpi(self.config, "delete_vm", vm), 1)["median_ms"] for vm in vms]
        self.rows.append({"name": "attach_disk latency", "value": _stats(attach), "target": "informational"})
        self.rows.append({"name": "detach_disk latency", "value": _stats(detach), "target": "informational"})
        self.rows.append({"name": "delete_vm latency", "value": _stats(dels), "target": "informational"})
        self.stemcell = sc

    # 3 ---------------------------------------------------------------------------------------
    def create_stemcell_1g(self) -> None:
        size = (128 if self.quick else 1024) << 20
        work = self.tmp / "big"
        work.mkdir()
        payload = work / "blob"
        with open(payload, "wb") as fh:  # incompressible, so no layer gets it cheaply
            for _ in range(size >> 20):
                fh.write(os.urandom(1 << 20))
        rootfs = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(work), "-cf", str(rootfs), "blob"], check=True)
        payload.unlink()
        from boshcpi import stemcell as st

        props = {
            "name": "bench",
            "version": "1",
            "infrastructure": "warden",
            "disk_format": "files",
            "architecture": "x86_64",
            "os_distro": "ubuntu-jammy",
        }
        meta_yaml = st.metadata_tarball("architecture: x86_64\ncreation_date: 946684800\nproperties:\n  bench: x\n")
        meta = work / "meta.tar"
        meta.write_bytes(meta_yaml)
        runs = 2 if self.quick else 3
        client = LXDClient(f"unix://{self.socket}", project=self.project)
        lxc_times, ours_times, rss = [], [], []
        for i in range(runs):
            start = time.perf_counter()
            out = subprocess.run(
                [
                    self.cli,
                    "--project",
                    self.project,
                    "image",
                    "import",
                    str(meta),
                    str(rootfs),
                    "--alias",
                    f"bench-{i}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            lxc_times.append((time.perf_counter() - start) * 1000)
            fp = client.get(f"/1.0/images/aliases/bench-{i}")["target"]
            client.request("DELETE", f"/1.0/images/{fp}")
            del out
            # Ours, in a fresh process whose peak RSS we read.
            req = json.dumps(
                {"method": "create_stemcell", "arguments": [str(rootfs), {**props, "version": str(i)}], "context": {}}
            )
            probe = (
                "import resource,subprocess,sys,json,time;t=time.perf_counter();"
                "p=subprocess.run(sys.argv[1:],input=sys.stdin.buffer.read(),capture_output=True);"
                "d=time.perf_counter()-t;"
                "print(json.dumps({'ms':d*1000,'rss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
                "'out':p.stdout.decode()}))"
            )
            res = subprocess.run(
                [PY, "-c", probe, *BOSHCPI, "cpi", "--config", str(self.config)],
                input=req.encode(),
                capture_output=True,
                check=True,
            )
            doc = json.loads(res.stdout)
            sc = json.loads(doc["out"])["result"]
            ours_times.append(doc["ms"])
            rss.append(doc["rss_kb"] / 1024)
            cpi(self.config, "delete_stemcell", sc)
        shutil.rmtree(work)
        mib = size >> 20
        self.row(
            f"create_stemcell {mib} MiB vs {self.cli} image import",
            _stats(ours_times),
            _stats(lxc_times),
            "ratio <= 1.2",
        )
        self.rows.append(
            {
                "name": "create_stemcell peak RSS (MB)",
                "value": {"median_ms": statistics.median(rss), "min_ms": min(rss), "max_ms": max(rss)},
                "target": "< 100 MB",
                "unit": "MB",
            }
        )

    # 4 ---------------------------------------------------------------------------------------
    def scale(self) -> None:
        client = LXDClient(f"unix://{self.socket}", project=self.project)

        def used() -> int:
            return client.get("/1.0/storage-pools/boshcpi-btrfs/resources", project=False)["space"]["used"]

        n = 10 if self.quick else 20
        for limit in (2, 4, 8, None):
            server = None
            if limit:
                config = self.write_config(limit=limit)
                sock = self.tmp / "throttle.sock"
                server = subprocess.Popen(
                    [*BOSHCPI, "throttle", "--path", str(sock), "--limit", str(limit)], stderr=subprocess.DEVNULL
                )
                while not sock.exists():
                    time.sleep(0.05)
            else:
                config = self.config
            before = used()
            failures = 0
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                futures = [
                    pool.submit(cpi, config, "create_vm", f"scale-{i}", self.stemcell, {}, {}, [], {}) for i in range(n)
                ]
                vms = []
                for f in futures:
                    try:
                        vms.append(f.result()[0])
                    except Exception:
                        failures += 1
            wall = (time.perf_counter() - start) * 1000
            time.sleep(1)
            per_vm = (used() - before) / max(1, len(vms)) / (1 << 20)
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda vm, c=config: cpi(c, "delete_vm", vm), vms))
            if server:
                server.terminate()
                server.wait()
            self.rows.append(
                {
                    "name": f"{n} parallel create_vm, throttle {limit or 'off'}",
                    "value": {"median_ms": wall, "min_ms": wall, "max_ms": wall},
                    "failures": failures,
                    "space_per_vm_mb": round(per_vm, 2),
                    "target": "no failures; < 50 MB per VM",
                }
            )

    def close(self) -> None:
        subprocess.run([PY, str(ROOT / "bench" / "teardown.py"), self.cli, self.project], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _stats(xs: list[float]) -> dict:
    return {"median_ms": statistics.median(xs), "min_ms": min(xs), "max_ms": max(xs), "runs": len(xs)}


RAW_CREATE = """
import sys
sys.path.insert(0, "%s")
from boshcpi.drivers.lxd.client import LXDClient
sock, project, fp, name, network = sys.argv[1:]
c = LXDClient("unix://" + sock, project=project)
c.request("POST", "/1.0/storage-pools/boshcpi-btrfs/volumes/custom",
          {"name": name + "-eph", "type": "custom", "content_type": "filesystem", "config": {"size": "64MiB"}})
devices = {"root": {"type": "disk", "path": "/", "pool": "boshcpi-btrfs"},
           "eph": {"type": "disk", "pool": "boshcpi-btrfs", "source": name + "-eph", "path": "/var/vcap/data"}}
c.request("POST", "/1.0/instances", {"name": name, "type": "container",
          "source": {"type": "image", "fingerprint": fp}, "devices": devices,
          "config": {"security.privileged": "true", "security.nesting": "true"}, "profiles": ["default"]})
for d in ("/var", "/var/vcap", "/var/vcap/bosh"):
    c.make_dir(name, d)
c.push_file(name, "/var/vcap/bosh/warden-cpi-agent-env.json", b"{}" * 300, mode=0o600)
c.request("PUT", "/1.0/instances/" + name + "/state", {"action": "start", "timeout": 60})
""" % (ROOT / "src")


def table(rows: list[dict]) -> str:
    lines = [f"{'benchmark':<52} {'median':>10} {'spread':>19} {'baseline':>10} {'ratio':>6} {'over':>8}  target"]
    for r in rows:
        v = r["value"]
        unit = r.get("unit", "ms")
        spread = f"{v['min_ms']:.0f}-{v['max_ms']:.0f} {unit}"
        base = f"{r['baseline']['median_ms']:.0f} ms" if "baseline" in r else ""
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else ""
        over = f"{r['overhead_ms']:+.0f} ms" if "overhead_ms" in r else ""
        extra = ""
        if "failures" in r:
            extra = f" failures={r['failures']} space/VM={r['space_per_vm_mb']} MB"
        lines.append(
            f"{r['name']:<52} {v['median_ms']:>7.0f} {unit:<2} {spread:>19} {base:>10} {ratio:>6} {over:>8}"
            f"  {r['target']}{extra}"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--daemon", choices=list(DAEMONS), default="lxd")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="smaller image and scale (for a smoke run)")
    args = p.parse_args()
    bench = Bench(args.daemon, args.runs, args.quick)
    started = time.time()
    try:
        bench.call_overhead()
        bench.create_vm_vs_raw()
        bench.create_stemcell_1g()
        bench.scale()
    finally:
        bench.close()
    text = table(bench.rows)
    print(f"\nboshcpi benchmarks on {args.daemon} (btrfs pool), {time.time() - started:.0f}s\n")
    print(text)
    out = {"daemon": args.daemon, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": bench.rows}
    (ROOT / "bench" / "results.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
