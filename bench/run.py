"""`make bench`: boshcpi measured against baselines in the same run, on real LXD (or Incus:
`--daemon incus`) with a btrfs pool. Every pair is measured interleaved (A B A B ...), each figure is a
median with its min-max over at least 10 runs, and every row states its target and whether it met it.

Baselines:
- the minimal sequence an operator would script with the daemon's own client (`lxc`/`incus`) for the
  same result: same devices, network, ephemeral disk and settings file;
- the Go LXD CPI (../shared/tools/go-lxd-cpi) where it can do the same work here (it talks HTTPS only:
  boshcpi is measured over HTTPS beside it, and over the unix socket);
- `lxc image import` of the same image files for create_stemcell.

Results go to bench/results/<date>-<host>.json (committed); `bench/report.py` writes README's table
from the newest file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from boshcpi.dev import stemcells  # noqa: E402
from boshcpi.dev.tools import find_tool  # noqa: E402

PY = sys.executable
LIKE_FOR_LIKE = "both with the server certificate unverified, as the Go CPI runs against LXD"
BOSHCPI: list[str] = []  # set by packaged_launcher(): what the release's bin/cpi runs


def packaged_launcher(dest: Path) -> list[str]:
    """The boshcpi package built by its own packaging script (packages/boshcpi/packaging), run as the
    job's bin/cpi runs it, with this machine's Python 3.11 standing in for the release's python3
    package (the same CPython version, built by Debian instead of by BOSH): what operators run,
    rather than the development venv's launcher and its site-packages."""
    import sysconfig

    pkgs = dest / "packages"
    (pkgs / "python3" / "bin").mkdir(parents=True)
    real = Path(sysconfig.get_config_var("BINDIR") or "/usr/bin") / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    (pkgs / "python3" / "bin" / "python3").symlink_to(real)
    src = dest / "compile"
    shutil.copytree(ROOT / "src" / "boshcpi", src / "boshcpi", ignore=shutil.ignore_patterns("__pycache__", "dev"))
    env = {
        **os.environ,
        "BOSH_COMPILE_TARGET": str(src),
        "BOSH_INSTALL_TARGET": str(pkgs / "boshcpi"),
        "BOSH_PACKAGE_NAME": "boshcpi",
        "BOSH_PACKAGES_DIR": str(pkgs),
    }
    subprocess.run(
        ["bash", str(ROOT / "packages" / "boshcpi" / "packaging")], cwd=src, env=env, check=True, capture_output=True
    )
    os.environ["BOSH_PACKAGES_DIR"] = str(pkgs)  # as bosh create-env sets it for the CPI
    return [str(pkgs / "boshcpi" / "bin" / "boshcpi")]


POOL = "boshcpi-btrfs"
DAEMONS = {
    "lxd": ("lxc", "/var/lib/lxd/unix.socket", "boshcpi-lxdbr0", "10.245.10", "https://127.0.0.1:8443"),
    "incus": ("incus", "/var/lib/incus/unix.socket", "boshcpi-incbr0", "10.245.20", "https://127.0.0.1:8444"),
}


def stats(xs: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(xs) * 1000, 1),
        "min_ms": round(min(xs) * 1000, 1),
        "max_ms": round(max(xs) * 1000, 1),
        "runs": len(xs),
    }


def interleaved(a, b, runs: int, setup=None) -> tuple[dict, dict]:
    """Time a() and b() alternately, `runs` times each; the order flips every round so neither side
    always pays a first-call cost. `setup(i)` runs untimed before each pair."""
    xa, xb = [], []
    for i in range(runs):
        if setup:
            setup(i)
        order = ((a, xa), (b, xb)) if i % 2 == 0 else ((b, xb), (a, xa))
        for fn, xs in order:
            t = time.perf_counter()
            fn()
            xs.append(time.perf_counter() - t)
    return stats(xa), stats(xb)


def peak_rss(cmd: list[str], stdin: bytes) -> tuple[float, int, bytes]:
    """Wall seconds, peak RSS (KiB) and stdout of one child, measured by GNU time's %M."""
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], input=stdin, capture_output=True)
    elapsed = time.perf_counter() - t
    rss = int(proc.stderr.decode().strip().splitlines()[-1])
    return elapsed, rss, proc.stdout


class Bench:
    def __init__(self, daemon: str, runs: int, image_mib: int, stemcell_runs: int) -> None:
        self.daemon, self.runs, self.image_mib, self.stemcell_runs = daemon, runs, image_mib, stemcell_runs
        self.cli, self.socket, self.network, self.subnet, self.https = DAEMONS[daemon]
        self.project = f"boshcpi-bench-{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="boshcpi-bench-"))
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.lxc(
            "project",
            "create",
            self.project,
            "-c",
            "features.images=true",
            "-c",
            "features.profiles=true",
            "-c",
            "features.storage.volumes=true",
            project=False,
        )
        self.stemcells = stemcells.build_all(Path("/var/tmp/boshcpi-stemcells"))
        self.config = self.write_config()
        self.trusted = ""
        self.go = find_tool("go-lxd-cpi")
        self.https_config = self.go_config = None
        self._setup_https()

    # ---- plumbing ---------------------------------------------------------------------------------
    def lxc(self, *args: str, project: bool = True, stdin: bytes | None = None, check: bool = True) -> str:
        cmd = [self.cli, *(["--project", self.project] if project else []), *args]
        proc = subprocess.run(cmd, input=stdin, capture_output=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.decode()}")
        return proc.stdout.decode()

    def write_config(self, **extra) -> Path:
        cfg = {
            "server": {
                "type": self.daemon,
                "url": f"unix://{self.socket}",
                "project_name": self.project,
                "network_name": self.network,
                "storage_pool_name": POOL,
            },
            "agent": {"mbus": "nats://bench:bench-password@10.245.0.11:4222"},
        }
        for section, values in extra.items():
            cfg.setdefault(section, {}).update(values)
        path = self.tmp / f"cpi-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(cfg))
        return path

    def _setup_https(self) -> None:
        from boshcpi.drivers.lxd.hostinit import generate_cert

        crt, key = generate_cert(str(self.tmp / "tls"), name="boshcpi-bench")
        args = ["config", "trust", "add", crt] if self.daemon == "lxd" else ["config", "trust", "add-certificate", crt]
        self.lxc(*args, project=False)
        out = subprocess.run(["openssl", "x509", "-in", crt, "-noout", "-fingerprint", "-sha256"], capture_output=True)
        self.trusted = out.stdout.decode().split("=", 1)[1].strip().replace(":", "").lower()
        crt_text, key_text = Path(crt).read_text(), Path(key).read_text()
        server_cert = json.loads(self.lxc("query", "/1.0", project=False))["environment"]["certificate"]
        # Two HTTPS configs: the server certificate pinned (what boshcpi recommends), and not verified,
        # which is how the Go CPI must run against LXD's self-signed certificate (it has no setting
        # to pin one): the like-for-like comparison with it.
        self.pinned_config = self.write_config(
            server={
                "url": self.https,
                "tls_client_cert": crt_text,
                "tls_client_key": key_text,
                "tls_server_cert": server_cert,
            }
        )
        self.https_config = self.write_config(
            server={
                "url": self.https,
                "tls_client_cert": crt_text,
                "tls_client_key": key_text,
                "insecure_skip_verify": True,
            }
        )
        if self.go:
            self.go_config = self.tmp / "go.json"
            self.go_config.write_text(
                json.dumps(
                    {
                        "Server": {
                            "Type": self.daemon,
                            "URL": self.https,
                            "TLSClientCert": crt_text,
                            "TLSClientKey": key_text,
                            "InsecureSkipVerify": True,
                            "Project": self.project,
                            "Profile": "default",
                            "Network": self.network,
                            "StoragePool": POOL,
                            "InstanceConfig": {"default": {"security.secureboot": "false"}},
                            "CreateVMLock": {"Enabled": False, "Timeout": "10m", "Path": str(self.tmp / "l.lock")},
                        },
                        "Agent": {"Mbus": "nats://bench:bench-password@10.245.0.11:4222", "NTP": []},
                        "AgentConfig": {"SourceType": "CDROM", "Label": "config-2", "FileStorePath": str(self.tmp)},
                        "ThrottleConfig": {"Enabled": False},
                    }
                )
            )
        else:
            self.notes.append("Go LXD CPI not found (GO_LXD_CPI, PATH, ../shared/tools): its rows are not run")

    def cpi(self, method: str, *args, config: Path | None = None, env: dict | None = None):
        req = json.dumps(
            {"method": method, "arguments": list(args), "context": {"director_uuid": "b"}, "api_version": 2}
        )
        out = subprocess.run(
            [*BOSHCPI, "cpi", "--config", str(config or self.config)],
            input=req.encode(),
            capture_output=True,
            env={**os.environ, **(env or {})},
        )
        doc = json.loads(out.stdout)
        if doc["error"]:
            raise RuntimeError(f"{method}: {doc['error']}")
        return doc["result"]

    def go_cpi(self, method: str, *args):
        req = json.dumps(
            {"method": method, "arguments": list(args), "context": {"director_uuid": "b"}, "api_version": 2}
        )
        out = subprocess.run(
            [str(self.go), "-configPath", str(self.go_config), "-logLevel", "ERROR"],
            input=req.encode(),
            capture_output=True,
        )
        if not out.stdout.strip():
            raise RuntimeError(f"Go CPI {method}: no answer (exit {out.returncode}): {out.stderr.decode()[-2000:]}")
        return json.loads(out.stdout)

    def row(
        self,
        name: str,
        value: dict,
        baseline: dict,
        baseline_name: str,
        target: float | None,
        what: str = "ratio",
        note: str = "",
    ) -> None:
        """A timed pair. `target` None: context only (stated as such, never counted as met)."""
        ratio = value["median_ms"] / baseline["median_ms"] if baseline["median_ms"] else float("nan")
        met = None if target is None else ratio <= target
        self.rows.append(
            {
                "name": name,
                "value": value,
                "baseline": baseline,
                "baseline_name": baseline_name,
                "ratio": round(ratio, 3),
                "target": f"{what} <= {target}" if target is not None else "none (context)",
                "met": met,
                "note": note,
            }
        )
        verdict = "no target" if met is None else f"target <= {target}: {'met' if met else 'MISSED'}"
        print(
            f"{name}: {value['median_ms']} ms vs {baseline_name} {baseline['median_ms']} ms = {ratio:.2f} ({verdict})",
            flush=True,
        )

    def fact(self, name: str, value: float, unit: str, target: float | None, note: str = "") -> None:
        met = None if target is None else value <= target
        self.rows.append(
            {
                "name": name,
                "value": {"value": value, "unit": unit},
                "target": (f"<= {target} {unit}" if target is not None else ""),
                "met": met,
                "note": note,
            }
        )
        print(
            f"{name}: {value} {unit}" + (f" (target <= {target}: {'met' if met else 'MISSED'})" if target else ""),
            flush=True,
        )

    # ---- rows -------------------------------------------------------------------------------------
    def calls(self) -> None:
        ghost = "vm-00000000-0000-4000-8000-000000000000"
        # The operator's own one-call check, through the daemon's client over the unix socket.
        ours, op = interleaved(
            lambda: self.cpi("has_vm", ghost),
            lambda: self.lxc("query", f"/1.0/instances/{ghost}", check=False),
            max(self.runs, 15),
        )
        self.row(
            "has_vm over the unix socket",
            ours,
            op,
            f"{self.cli} query (unix socket)",
            None,
            note="context: one Go binary's request; a bare Python start (`python -c pass`) is most of it",
        )
        if not self.go:
            return
        # The Go LXD CPI's Incus adapter dereferences a nil instance on has_vm of a missing VM (a panic,
        # no answer): there, both answer has_vm for an instance that exists (an empty one, same GET).
        probe = _try(self.go_cpi, "has_vm", ghost)
        if isinstance(probe, RuntimeError):
            ghost = f"vm-{uuid.uuid4()}"
            self.lxc("init", "--empty", ghost, "-s", POOL)
            self.notes.append(
                f"The Go LXD CPI on {self.daemon} crashes on has_vm of a missing VM ({str(probe).splitlines()[0]});"
                " boshcpi answers false. The has_vm rows against it use an instance that exists instead."
            )
        for method, args in (("info", []), ("has_vm", [ghost])):
            ours, go = interleaved(
                lambda m=method, a=args: self.cpi(m, *a, config=self.https_config),
                lambda m=method, a=args: self.go_cpi(m, *a),
                max(self.runs, 15),
            )
            self.row(f"{method} over HTTPS", ours, go, "Go LXD CPI (HTTPS)", 1.0, note=LIKE_FOR_LIKE)
            if method == "has_vm":
                ours, go = interleaved(
                    lambda a=args: self.cpi("has_vm", *a, config=self.pinned_config),
                    lambda a=args: self.go_cpi("has_vm", *a),
                    max(self.runs, 15),
                )
                self.row(
                    "has_vm over HTTPS, server certificate pinned",
                    ours,
                    go,
                    "Go LXD CPI (HTTPS, not verified)",
                    None,
                    note="context: boshcpi verifies the server's certificate, which the Go CPI cannot",
                )
            ours, go = interleaved(
                lambda m=method, a=args: self.cpi(m, *a),
                lambda m=method, a=args: self.go_cpi(m, *a),
                max(self.runs, 15),
            )
            self.row(
                f"{method} over the unix socket",
                ours,
                go,
                "Go LXD CPI (HTTPS)",
                1.0,
                note="the Go CPI speaks HTTPS only",
            )

    def _warden(self) -> str:
        d = self.stemcells["warden"]
        return self.cpi("create_stemcell", str(d / "image"), stemcells.cloud_properties(d))

    def create_delete_vm(self) -> None:
        sc = self._warden()
        ip = iter(range(50, 250))
        made: list[tuple[str, str]] = []

        def net(n: int) -> dict:
            return {
                "default": {
                    "type": "manual",
                    "ip": f"{self.subnet}.{n}",
                    "netmask": "255.255.255.0",
                    "gateway": f"{self.subnet}.1",
                    "dns": [f"{self.subnet}.1"],
                    "default": ["dns", "gateway"],
                    "cloud_properties": {},
                }
            }

        def ours() -> None:
            vm, _ = self.cpi("create_vm", "bench", sc, {"ephemeral_disk": 64}, net(next(ip)), [], {})
            made.append(("cpi", vm))

        settings = json.dumps({"agent_id": "bench", "networks": {}, "disks": {}}).encode()

        def operator() -> None:
            # The same container the CPI makes, in the fewest commands: the ephemeral volume, the
            # instance with every device from YAML on stdin, the settings file, start.
            name = f"op-{uuid.uuid4().hex[:8]}"
            vol = f"eph-{name}"
            self.lxc("storage", "volume", "create", POOL, vol, "size=64MiB")
            yaml_doc = (
                "config:\n  limits.cpu: '1'\n  limits.memory: 1024MiB\n  security.privileged: 'true'\n"
                "  security.nesting: 'true'\ndevices:\n"
                f"  root: {{type: disk, path: /, pool: {POOL}}}\n"
                f"  eth0: {{type: nic, name: eth0, network: {self.network}, hwaddr: '{mac()}',"
                f" ipv4.address: {self.subnet}.{next(ip)}}}\n"
                f"  ephemeral: {{type: disk, pool: {POOL}, source: {vol}, path: /var/vcap/data}}\n"
            )
            self.lxc("init", sc, name, stdin=yaml_doc.encode())
            self.lxc(
                "file", "push", "-", f"{name}/var/vcap/bosh/warden-cpi-agent-env.json", "--mode", "0600", stdin=settings
            )
            self.lxc("start", name)
            made.append(("op", name))

        a, b = interleaved(ours, operator, self.runs)
        self.row(
            "create_vm (container, NIC, ephemeral disk, settings)", a, b, f"the same with {self.cli} (4 commands)", 1.05
        )
        # delete_vm: the CPI's vs the operator's delete of the same kind of container.
        ours_vms = [n for k, n in made if k == "cpi"]
        op_vms = [n for k, n in made if k == "op"]

        def del_ours() -> None:
            self.cpi("delete_vm", ours_vms.pop())

        def del_op() -> None:
            name = op_vms.pop()
            self.lxc("delete", "--force", name)
            self.lxc("storage", "volume", "delete", POOL, f"eph-{name}")

        a, b = interleaved(del_ours, del_op, min(len(ours_vms), len(op_vms)))
        self.row("delete_vm", a, b, f"{self.cli} delete --force + storage volume delete", 1.10)
        self.attach_detach(sc, net(next(ip)))
        self.cpi("delete_stemcell", sc)

    def attach_detach(self, sc: str, net: dict) -> None:
        vm, _ = self.cpi("create_vm", "bench-disk", sc, {}, net, [], {})
        disks = [self.cpi("create_disk", 16, {}, vm) for _ in range(self.runs)]
        op_vols = []
        for i in range(self.runs):
            name = f"opdisk-{i}-{uuid.uuid4().hex[:6]}"
            self.lxc("storage", "volume", "create", POOL, name, "size=16MiB")
            op_vols.append(name)
        settings = json.dumps({"agent_id": "bench", "disks": {"persistent": {}}}).encode()

        def ours_attach() -> None:
            d = disks[len(ours_done)]
            self.cpi("attach_disk", vm, d)
            self.cpi("detach_disk", vm, d)
            ours_done.append(d)

        def op_attach() -> None:
            v = op_vols[len(op_done)]
            self.lxc(
                "config", "device", "add", vm, v, "disk", f"pool={POOL}", f"source={v}", f"path=/warden-cpi-dev/{v}"
            )
            self.lxc("file", "push", "-", f"{vm}/var/vcap/bosh/warden-cpi-agent-env.json", stdin=settings)
            self.lxc("config", "device", "remove", vm, v)
            self.lxc("file", "push", "-", f"{vm}/var/vcap/bosh/warden-cpi-agent-env.json", stdin=settings)
            op_done.append(v)

        ours_done: list[str] = []
        op_done: list[str] = []
        a, b = interleaved(ours_attach, op_attach, self.runs)
        self.row("attach_disk + detach_disk (container)", a, b, f"{self.cli} device add/remove + settings pushes", 1.10)
        for d in disks:
            self.cpi("delete_disk", d)
        for v in op_vols:
            self.lxc("storage", "volume", "delete", POOL, v)
        self.cpi("delete_vm", vm)

    def _images(self) -> tuple[Path, Path, Path, Path]:
        """A container rootfs tarball and a qcow2 VM root.img of image_mib MiB of incompressible-ish
        data, the stemcell `image` tarballs holding them, and the metadata tarball lxc imports."""
        mib = self.image_mib
        rootfs = self.tmp / "rootfs.tar"
        if not rootfs.exists():
            blob = self.tmp / "blob"
            with open(blob, "wb") as fh:
                for _ in range(mib):
                    fh.write(os.urandom(1 << 20))
            subprocess.run(["tar", "-C", str(self.tmp), "-cf", str(rootfs), "blob"], check=True)
            raw = self.tmp / "root.raw"
            os.replace(blob, raw)
            subprocess.run(
                ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(self.tmp / "root.img")], check=True
            )
            raw.unlink()
            with tarfile.open(self.tmp / "vm-image", "w:gz", compresslevel=1) as tf:
                tf.add(self.tmp / "root.img", arcname="root.img")
        meta = self.tmp / "meta.tar"
        with tarfile.open(meta, "w") as tf:
            data = b"architecture: x86_64\ncreation_date: 946684800\nproperties: {os: bench}\n"
            info = tarfile.TarInfo("metadata.yaml")
            info.size = len(data)
            import io

            tf.addfile(info, io.BytesIO(data))
        return rootfs, self.tmp / "vm-image", self.tmp / "root.img", meta

    def create_stemcell(self) -> None:
        rootfs, vm_image, root_img, meta = self._images()
        runs = self.stemcell_runs
        for kind, image, props, lxc_args in (
            (
                "container",
                rootfs,
                {"name": "bench", "version": "1", "infrastructure": "warden", "disk_format": "files"},
                [str(meta), str(rootfs)],
            ),
            (
                "VM (qcow2 root.img)",
                vm_image,
                {"name": "bench-vm", "version": "1", "infrastructure": "openstack", "disk_format": "qcow2"},
                [str(meta), str(root_img)],
            ),
        ):
            rss: list[int] = []
            made: list[str] = []

            def ours(image=image, props=props, rss=rss, made=made) -> None:
                req = json.dumps(
                    {
                        "method": "create_stemcell",
                        "arguments": [str(image), {**props, "version": uuid.uuid4().hex[:6]}],
                        "context": {},
                    }
                ).encode()
                _, kib, out = peak_rss([*BOSHCPI, "cpi", "--config", str(self.config)], req)
                rss.append(kib)
                made.append(json.loads(out)["result"])

            def clean(i: int, made=made) -> None:
                # Both sides upload a fresh image: drop what the last round left (untimed).
                for cid in made:
                    self.cpi("delete_stemcell", cid)
                made.clear()
                for img in json.loads(self.lxc("query", f"/1.0/images?project={self.project}", project=False)):
                    self.lxc("image", "delete", img.rsplit("/", 1)[-1].split("?")[0], check=False)

            def lxc_import(args=lxc_args, image=image, kind=kind) -> None:
                if kind == "container":
                    self.lxc("image", "import", *args)
                    return
                # The operator holds the same stemcell image tarball: root.img comes out of it first.
                out = self.tmp / "extract"
                out.mkdir(exist_ok=True)
                subprocess.run(["tar", "-xzf", str(image), "-C", str(out), "root.img"], check=True)
                self.lxc("image", "import", args[0], str(out / "root.img"))
                (out / "root.img").unlink()

            a, b = interleaved(ours, lxc_import, runs, setup=clean)
            clean(0)
            baseline = (
                f"{self.cli} image import" if kind == "container" else f"tar -xzf root.img + {self.cli} image import"
            )
            self.row(f"create_stemcell {kind}, {self.image_mib} MiB", a, b, baseline, 1.05)
            self.fact(f"create_stemcell {kind} peak RSS", round(max(rss) / 1024, 1), "MB", 64)
        if self.go:
            made = []

            def ours_vm() -> None:
                made.append(
                    self.cpi(
                        "create_stemcell",
                        str(vm_image),
                        {
                            "name": "b",
                            "version": uuid.uuid4().hex[:6],
                            "infrastructure": "openstack",
                            "disk_format": "qcow2",
                        },
                        config=self.https_config,
                    )
                )

            def go_vm() -> None:
                doc = self.go_cpi(
                    "create_stemcell",
                    str(vm_image),
                    {
                        "name": "b",
                        "version": uuid.uuid4().hex[:6],
                        "os_distro": "ubuntu",
                        "architecture": "x86_64",
                        "disk": 3072,
                    },
                )
                assert doc["error"] is None, doc
                made.append(doc["result"])

            def clean(i: int) -> None:
                for img in json.loads(self.lxc("query", f"/1.0/images?project={self.project}", project=False)):
                    self.lxc("image", "delete", img.rsplit("/", 1)[-1].split("?")[0], check=False)

            a, b = interleaved(ours_vm, go_vm, runs, setup=clean)
            clean(0)
            self.row(f"create_stemcell VM {self.image_mib} MiB over HTTPS", a, b, "Go LXD CPI", 1.0, note=LIKE_FOR_LIKE)

    def go_disks(self) -> None:
        if not self.go:
            return
        holder = f"vm-{uuid.uuid4()}"
        self.lxc("init", "--empty", holder, "-s", POOL)
        made: list[tuple[str, str]] = []

        a, b = interleaved(
            lambda: made.append(("o", self.cpi("create_disk", 16, {}, holder, config=self.https_config))),
            lambda: made.append(("g", self.go_cpi("create_disk", 16, {}, holder)["result"])),
            self.runs,
        )
        self.row("create_disk over HTTPS", a, b, "Go LXD CPI", 1.0, note=LIKE_FOR_LIKE)
        ours = [d for k, d in made if k == "o"]
        gos = [d for k, d in made if k == "g"]
        a, b = interleaved(
            lambda: self.cpi("snapshot_disk", ours[0], {}, config=self.https_config),
            lambda: self.go_cpi("snapshot_disk", gos[0], {}),
            self.runs,
        )
        self.row("snapshot_disk over HTTPS", a, b, "Go LXD CPI", 1.0, note=LIKE_FOR_LIKE)
        self.lxc("delete", "--force", holder)
        for _, d in made:
            for snap in json.loads(
                self.lxc(
                    "query",
                    f"/1.0/storage-pools/{POOL}/volumes/custom/{d}/snapshots?project={self.project}",
                    project=False,
                )
            ):
                self.lxc(
                    "storage", "volume", "delete", POOL, f"{d}/{snap.rsplit('/', 1)[-1].split('?')[0]}", check=False
                )
            self.lxc("storage", "volume", "delete", POOL, d, check=False)

    def scale(self) -> None:
        sc = self._warden()
        pool_dir = f"/var/lib/{self.daemon}/storage-pools/{POOL}"

        def used() -> int:
            out = subprocess.run(["btrfs", "filesystem", "usage", "-b", pool_dir], capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.strip().startswith("Used:")), "")
            return int(line.split()[-1]) if line else 0

        for limit in (None, 4):
            server = None
            if limit:
                # As the job runs it: the lease server, started here and stopped by its PID.
                sock = self.tmp / "t.sock"
                cfg = self.write_config(throttle_config={"enabled": True, "limit": limit, "path": str(sock)})
                server = subprocess.Popen([*BOSHCPI, "throttle", "--config", str(cfg)], stderr=subprocess.DEVNULL)
                for _ in range(100):
                    if sock.exists():
                        break
                    time.sleep(0.05)
            else:
                cfg = self.write_config()
            base = 100 if limit else 150

            def one(i: int, cfg=cfg, base=base) -> str:
                net = {
                    "default": {
                        "type": "manual",
                        "ip": f"{self.subnet}.{base + i}",
                        "netmask": "255.255.255.0",
                        "gateway": f"{self.subnet}.1",
                        "cloud_properties": {},
                    }
                }
                return self.cpi("create_vm", f"s{i}", sc, {"ephemeral_disk": 64}, net, [], {}, config=cfg)[0]

            subprocess.run(["sync"])
            before = used()
            t = time.perf_counter()
            with ThreadPoolExecutor(20) as ex:
                results = list(ex.map(lambda i: _try(one, i), range(20)))
            elapsed = time.perf_counter() - t
            vms = [r for r in results if isinstance(r, str)]
            failures = len(results) - len(vms)
            subprocess.run(["sync"])
            time.sleep(1)
            per_vm = (used() - before) / max(len(vms), 1) / 1e6
            label = f"throttle {limit}" if limit else "no throttle"
            self.fact(
                f"20 parallel create_vm ({label}): wall", round(elapsed, 2), "s", None, note=f"{failures} failures"
            )
            self.fact(f"20 parallel create_vm ({label}): failures", failures, "", 0)
            if not limit:
                self.fact("pool space per VM (btrfs, NIC + 64 MiB ephemeral disk)", round(per_vm, 2), "MB", 1.0)
            for vm in vms:
                self.cpi("delete_vm", vm)
            if server:
                server.terminate()
                server.wait(30)
        self.cpi("delete_stemcell", sc)

    def close(self) -> None:
        subprocess.run([PY, str(ROOT / "bench/teardown.py"), self.cli, self.project], check=False)
        if self.trusted:
            self.lxc("config", "trust", "remove", self.trusted, project=False, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_parts(parts: dict, only: str | None, bench: Bench, pkg_dir: Path, out: str | None, daemon: str) -> Path:
    """Run the chosen parts (all by default), always tidying up; the results file's path."""
    try:
        for name in only.split(",") if only else list(parts):
            parts[name]()
    finally:
        bench.close()
        shutil.rmtree(pkg_dir, ignore_errors=True)
    if out:
        return Path(out)
    return ROOT / "bench" / "results" / f"{time.strftime('%Y-%m-%d')}-{platform.node()}-{daemon}.json"


def write_results(out: Path, daemon: str, version: str, bench: Bench) -> None:
    """The run's rows and notes as bench/results/*.json (report.py makes README's tables of them)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"name": platform.node(), "cpus": os.cpu_count(), "kernel": platform.release()},
        "daemon": daemon,
        "daemon_version": version,
        "rows": bench.rows,
        "notes": bench.notes,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    missed = [r["name"] for r in bench.rows if r.get("met") is False]
    print(
        f"{len(bench.rows) - len(missed)} of {len(bench.rows)} rows met their target"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )


def mac() -> str:
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in os.urandom(3))


def _try(fn, *a):
    try:
        return fn(*a)
    except Exception as e:
        return e


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--daemon", choices=sorted(DAEMONS), default="lxd")
    p.add_argument("--runs", type=int, default=10, help="pairs per row (at least 10)")
    p.add_argument("--stemcell-runs", type=int, default=10)
    p.add_argument("--image-mib", type=int, default=1024)
    p.add_argument("--out", help="results file (default: bench/results/<date>-<host>-<daemon>.json)")
    p.add_argument("--only", help="comma-separated parts: calls,vm,disks,stemcell,scale (default: all)")
    args = p.parse_args()
    # Bytecode first: where PYTHONDONTWRITEBYTECODE is set a stale .pyc is recompiled on every call,
    # which would charge boshcpi ~10 ms per edited module (make bench compiles too).
    import compileall

    compileall.compile_dir(str(ROOT / "src"), quiet=1)
    pkg_dir = Path(tempfile.mkdtemp(prefix="boshcpi-bench-pkg-"))
    BOSHCPI[:] = packaged_launcher(pkg_dir)
    bench = Bench(args.daemon, max(args.runs, 10), args.image_mib, args.stemcell_runs)
    parts = {
        "calls": bench.calls,
        "vm": bench.create_delete_vm,
        "disks": bench.go_disks,
        "stemcell": bench.create_stemcell,
        "scale": bench.scale,
    }
    out = run_parts(parts, args.only, bench, pkg_dir, args.out, args.daemon)
    write_results(out, args.daemon, bench.lxc("version", project=False).strip().splitlines()[-1], bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
