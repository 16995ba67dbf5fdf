"""Doctor checks of an LXD/Incus host (the driver's part of `boshcpi doctor`)."""

from __future__ import annotations

import os
import time

from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote
from boshcpi.drivers.lxd.host import connect
from boshcpi.report import FAIL, OK, WARN, Check

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.config import Config


def _http_date(text: str) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


def checks(cfg: Config) -> list[Check]:
    """Connection and trust, server type and version, project/profile/network/pool, pool driver and
    space, VM support and firmware, cluster members, clock skew."""
    client = connect(cfg)
    try:
        return _checks(cfg, client)
    finally:
        client.close()


def _checks(cfg: Config, client: LXDClient) -> list[Check]:
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
            checks.append(firmware_check(s.instance_config))
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


# Where Debian's and Ubuntu's packages put the VM firmware LXD and Incus load (ovmf, seabios).
UEFI_FIRMWARE = ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/qemu/OVMF.fd")
BIOS_FIRMWARE = ("/usr/share/seabios/bios-256k.bin", "/usr/share/qemu/bios-256k.bin")


def firmware_check(instance_config: dict[str, dict[str, str]]) -> Check:
    """The firmware files the configured boot modes need, looked up on this (the daemon's) host:
    UEFI for every stemcell line, SeaBIOS for lines booted with CSM (jammy)."""
    csm = any(v.get("security.csm") == "true" or v.get("boot.mode") == "bios" for v in instance_config.values())
    uefi = next((f for f in UEFI_FIRMWARE if os.path.exists(f)), None)
    bios = next((f for f in BIOS_FIRMWARE if os.path.exists(f)), None)
    missing = []
    if uefi is None:
        missing.append("UEFI (ovmf: " + " or ".join(UEFI_FIRMWARE) + ")")
    if csm and bios is None:
        missing.append("SeaBIOS for CSM boot (seabios: " + " or ".join(BIOS_FIRMWARE) + ")")
    if missing:
        return Check("firmware", WARN, "missing " + "; ".join(missing), "install the ovmf and seabios packages")
    found = ", ".join(f for f in (uefi, bios if csm else None) if f)
    return Check("firmware", OK, f"found {found}")


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
