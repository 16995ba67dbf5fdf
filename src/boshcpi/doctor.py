"""`boshcpi doctor --config PATH`: preflight checks of an LXD/Incus (or libvirt) host.

Prints a table of OK / WARN / FAIL, each not-OK row with a one-line fix; exits 1 on any FAIL.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote

OK, WARN, FAIL = "OK", "WARN", "FAIL"


class Check:
    def __init__(self, name: str, status: str, detail: str, fix: str = "") -> None:
        self.name, self.status, self.detail, self.fix = name, status, detail, fix

    def as_dict(self) -> dict[str, str]:
        return {"check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _http_date(text: str) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


def lxd_checks(cfg: Any, client: LXDClient) -> list[Check]:
    s = cfg.server
    checks: list[Check] = []
    try:
        _status, headers, _ = client.raw("GET", "/1.0", project=False)
        server = client.server
    except LXDError as e:
        return [Check("connection", FAIL, e.message, f"check server.url ({cfg.server_url}) and that the daemon runs")]
    auth = server.get("auth")
    if auth != "trusted":
        checks.append(
            Check(
                "connection",
                FAIL,
                f"connected to {cfg.server_url} but not trusted (auth: {auth})",
                "trust the client certificate: boshcpi init --trust-cert FILE (or lxc config trust add)",
            )
        )
        return checks
    checks.append(Check("connection", OK, f"{cfg.server_url}, trusted"))
    env = server.get("environment") or {}
    kind = client.server_type
    version = env.get("server_version", "?")
    if kind != s.type:
        checks.append(
            Check("server", WARN, f"{kind} {version}, but server.type is {s.type}", f"set server.type: {kind}")
        )
    else:
        checks.append(Check("server", OK, f"{kind} {version}"))

    def exists(path: str, project: bool = False) -> dict[str, Any] | None:
        try:
            return client.get(path, project=project)
        except LXDError as e:
            if e.not_found:
                return None
            raise

    proj = exists(f"/1.0/projects/{quote(s.project_name)}")
    checks.append(
        Check(
            "project",
            OK if proj else FAIL,
            s.project_name if proj else f"{s.project_name} is missing",
            "" if proj else "boshcpi init --config ... creates it",
        )
    )
    if proj:
        prof = exists(f"/1.0/profiles/{quote(s.profile_name)}", project=True)
        checks.append(
            Check(
                "profile",
                OK if prof else FAIL,
                s.profile_name if prof else f"{s.profile_name} is missing",
                "" if prof else "boshcpi init --config ... creates it",
            )
        )
    net = exists(f"/1.0/networks/{quote(s.network_name)}", project=True)
    if net is None:
        checks.append(Check("network", FAIL, f"{s.network_name} is missing", "boshcpi init --config ... creates it"))
    elif not net.get("managed"):
        checks.append(
            Check(
                "network",
                WARN,
                f"{s.network_name} is an unmanaged bridge",
                "use a managed bridge so manual networks get fixed addresses by DHCP",
            )
        )
    else:
        cidr = (net.get("config") or {}).get("ipv4.address", "")
        nat = (net.get("config") or {}).get("ipv4.nat", "")
        checks.append(Check("network", OK, f"{s.network_name} {cidr} NAT {nat or 'default'}"))
    pool = exists(f"/1.0/storage-pools/{quote(s.storage_pool_name)}")
    if pool is None:
        checks.append(
            Check("storage pool", FAIL, f"{s.storage_pool_name} is missing", "boshcpi init --config ... creates it")
        )
    else:
        driver = pool.get("driver", "?")
        if driver == "dir":
            checks.append(
                Check(
                    "pool driver",
                    WARN,
                    "dir: every VM copies its whole stemcell image",
                    "use a btrfs or zfs pool for copy-on-write clones",
                )
            )
        else:
            checks.append(Check("pool driver", OK, f"{driver}: copy-on-write clones"))
        try:
            res = client.get(f"/1.0/storage-pools/{quote(s.storage_pool_name)}/resources", project=False)
            space = res.get("space") or {}
            free = (space.get("total", 0) - space.get("used", 0)) / (1 << 30)
            status_ = OK if free >= 10 else WARN if free >= 1 else FAIL
            checks.append(
                Check(
                    "free space",
                    status_,
                    f"{free:.1f} GiB free in {s.storage_pool_name}",
                    "" if status_ == OK else "grow the pool or delete unused stemcells and disks",
                )
            )
        except LXDError as e:
            checks.append(Check("free space", WARN, f"cannot read pool resources: {e.message}"))
    types = instance_types(env)
    if "virtual-machine" in types:
        checks.append(Check("VM support", OK, "virtual machines available"))
        if cfg.server_url.startswith("unix://"):
            want = (
                ["/usr/share/seabios/bios-256k.bin"]
                if any("security.csm" in v for v in s.instance_config.values())
                else []
            )
            missing = [f for f in want if not os.path.exists(f)]
            checks.append(
                Check(
                    "firmware",
                    WARN if missing else OK,
                    f"missing {', '.join(missing)}" if missing else "BIOS/UEFI firmware present",
                    "install seabios (CSM boot for jammy stemcells)" if missing else "",
                )
            )
    else:
        checks.append(
            Check(
                "VM support",
                WARN,
                "no virtual-machine support (vhost_vsock or KVM missing)",
                "load vhost_vsock and kvm modules, or use container (warden) stemcells",
            )
        )
    if "container" not in types:
        checks.append(Check("container support", WARN, "no container support", "check the daemon's logs"))
    checks.extend(cluster_checks(client))
    if cfg.throttle_config.enabled:
        checks.append(throttle_check(cfg))
    date = _http_date(headers.get("date", ""))
    if date is None:
        checks.append(Check("clock", WARN, "server sent no Date header"))
    else:
        skew = time.time() - date
        checks.append(
            Check(
                "clock",
                OK if abs(skew) < 5 else WARN,
                f"skew {skew:+.1f}s",
                "" if abs(skew) < 5 else "sync the clocks (NTP): TLS and BOSH tasks need them",
            )
        )
    return checks


def instance_types(env: dict[str, Any]) -> list[str]:
    """What the server can run: `instance_types` where reported, else from `driver` (lxc | qemu)."""
    if env.get("instance_types"):
        return list(env["instance_types"])
    drivers = [d.strip() for d in str(env.get("driver", "")).split("|")]
    return [t for d, t in (("lxc", "container"), ("qemu", "virtual-machine")) if d in drivers]


def cluster_checks(client: LXDClient) -> list[Check]:
    try:
        cluster = client.get("/1.0/cluster", project=False) or {}
    except LXDError:
        return []
    if not cluster.get("enabled"):
        return [Check("cluster", OK, "standalone server")]
    members = client.get("/1.0/cluster/members", params={"recursion": 1}, project=False) or []
    out = []
    for m in members:
        groups = ",".join(m.get("groups") or []) or "-"
        st = m.get("status", "?")
        out.append(
            Check(
                f"member {m.get('server_name')}",
                OK if st == "Online" else FAIL,
                f"{st}, {m.get('url', '')}, groups {groups}",
                "" if st == "Online" else "bring the member back or evacuate it",
            )
        )
    return out


def throttle_check(cfg: Any) -> Check:
    import _socket

    path = cfg.throttle_config.path
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(2)
        sock.connect(path)
        sock.sendall(b'{"op": "status"}\n')
        reply = sock.recv(65536)
        return Check("throttle", OK, f"server at {path}: {reply.decode().strip()[:80]}")
    except OSError as e:
        return Check(
            "throttle",
            WARN,
            f"no server at {path} ({e.strerror or e})",
            "start `boshcpi throttle` (the job's process); CPIs fall back to flock slots meanwhile",
        )
    finally:
        sock.close()


def libvirt_checks(cfg: Any) -> list[Check]:
    from boshcpi.drivers.libvirt.cloud import LibvirtCloud
    from boshcpi.protocol import BoshError

    cloud = LibvirtCloud(cfg)
    checks = []
    try:
        conn = cloud.conn
        checks.append(Check("connection", OK, f"{cfg.libvirt.uri}: libvirt {conn.getLibVersion()}"))
    except BoshError as e:
        return [Check("connection", FAIL, e.message, "check libvirt.uri and that libvirtd runs")]
    try:
        pool = cloud.pool
        info = pool.info()
        free = info[3] / (1 << 30)
        checks.append(Check("storage pool", OK, f"{cfg.libvirt.storage_pool_name}: {free:.1f} GiB free"))
    except BoshError as e:
        checks.append(Check("storage pool", FAIL, e.message, "define and start the pool (virsh pool-define-as)"))
    try:
        caps = conn.getDomainCapabilities(None, "x86_64", None, cfg.libvirt.domain_type)
        checks.append(Check("domain type", OK, f"{cfg.libvirt.domain_type} available" if caps else "?"))
    except Exception as e:
        checks.append(
            Check(
                "domain type",
                FAIL,
                f"{cfg.libvirt.domain_type}: {e}",
                "use libvirt.domain_type: qemu where KVM is not available",
            )
        )
    if not cfg.libvirt.bridge_name:
        try:
            net = conn.networkLookupByName(cfg.libvirt.network_name)
            checks.append(
                Check(
                    "network",
                    OK if net.isActive() else FAIL,
                    cfg.libvirt.network_name,
                    "" if net.isActive() else f"virsh net-start {cfg.libvirt.network_name}",
                )
            )
        except Exception:
            checks.append(Check("network", FAIL, f"{cfg.libvirt.network_name} is missing", "define the network"))
    if cfg.throttle_config.enabled:
        checks.append(throttle_check(cfg))
    cloud.close()
    return checks


def table(checks: list[Check]) -> str:
    rows = [("CHECK", "STATUS", "DETAIL")] + [
        (c.name, c.status, c.detail + (f"  -> {c.fix}" if c.fix else "")) for c in checks
    ]
    w0 = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{w0}}  {r[1]:<6}  {r[2]}" for r in rows)


def main(argv: list[str]) -> int:
    import argparse
    import json

    from boshcpi import config as cfgmod
    from boshcpi.protocol import BoshError

    p = argparse.ArgumentParser(prog="boshcpi doctor", description=__doc__)
    p.add_argument("--config", default=os.environ.get("BOSHCPI_CONFIG"))
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        cfg = cfgmod.load(args.config)
        if cfg.driver == "libvirt":
            checks = libvirt_checks(cfg)
        else:
            s = cfg.server
            client = LXDClient(
                cfg.server_url,
                project=s.project_name,
                client_cert=s.tls_client_cert,
                client_key=s.tls_client_key,
                server_cert=s.tls_server_cert,
                insecure=s.insecure_skip_verify,
            )
            checks = lxd_checks(cfg, client)
    except BoshError as e:
        checks = [Check("config", FAIL, e.message, "fix the config file")]
    if args.json:
        sys.stdout.write(json.dumps([c.as_dict() for c in checks], indent=2) + "\n")
    else:
        sys.stdout.write(table(checks) + "\n")
    return 1 if any(c.status == FAIL for c in checks) else 0
