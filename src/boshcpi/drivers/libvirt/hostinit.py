"""The libvirt driver's part of `boshcpi init`: set up a libvirt host for the CPI, idempotently.

Makes what the config names and is missing: the storage pool (a folder pool, built, started and
autostarted); the network the VMs' NICs join, unless `libvirt.bridge_name` puts them on a host
bridge (isolated unless --nat, and without DHCP: the agent sets the address the director gives);
and the console log folder where libvirtd is local. A pool or network that exists but is stopped is
started. Each step says `created`, `updated` or `unchanged`; a second run changes nothing.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from boshcpi.drivers.libvirt.host import LibvirtHost
from boshcpi.drivers.libvirt.xmltree import escape, quoteattr
from boshcpi.protocol import CpiError
from boshcpi.report import Step

DEFAULT_POOL_ROOT = "/var/lib/boshcpi/pools"


def add_arguments(p: Any) -> None:
    p.add_argument(
        "--pool-path", help=f"folder of a new storage pool (default: {DEFAULT_POOL_ROOT}/<storage_pool_name>)"
    )
    p.add_argument(
        "--network-cidr", default="10.246.0.1/24", help="the host's address on a new network (the VMs' gateway)/prefix"
    )
    p.add_argument("--nat", action="store_true", help="NAT a new network to the host's uplink (default: isolated)")


def network_xml(name: str, cidr: str, nat: bool) -> str:
    """A libvirt network for BOSH VMs: the host's address on it (the VMs' gateway), no DHCP, and a
    NAT'd forward only when asked."""
    try:
        iface = ipaddress.ip_interface(cidr)
    except ValueError:
        raise CpiError(f"init: --network-cidr {cidr!r} is not an address/prefix (e.g. 10.245.0.1/24)") from None
    if iface.version != 4 or iface.ip == iface.network.network_address:
        raise CpiError(f"init: --network-cidr {cidr!r}: give the host's IPv4 address on it, e.g. 10.245.0.1/24")
    forward = "<forward mode='nat'/>" if nat else ""
    return (
        f"<network><name>{escape(name)}</name>{forward}<bridge stp='on' delay='0'/>"
        f"<ip address={quoteattr(str(iface.ip))} netmask={quoteattr(str(iface.netmask))}/></network>"
    )


def pool_xml(name: str, path: str) -> str:
    return f"<pool type='dir'><name>{escape(name)}</name><target><path>{escape(path)}</path></target></pool>"


class HostInit:
    def __init__(self, cfg: Any, host: LibvirtHost) -> None:
        self.cfg, self.host, self.lc = cfg, host, cfg.libvirt
        self.lv = host.lv
        self.steps: list[Step] = []

    def _ensure(self, what: str, lookup: Any, missing: int, define: Any, start: Any, running: Any, made: str) -> None:
        """A pool or network: defined, started and autostarted where missing (`created`), started where
        stopped (`updated`), else `unchanged`."""
        try:
            obj = lookup()
        except self.lv.libvirtError as e:
            if e.get_error_code() != missing:
                raise
            obj = define()
            start(obj)
            obj.setAutostart(1)
            self.steps.append(Step(what, "created", f"{made}, autostart"))
            return
        if running(obj):
            self.steps.append(Step(what, "unchanged"))
            return
        start(obj)
        obj.setAutostart(1)
        self.steps.append(Step(what, "updated", "started, autostart"))

    def pool(self, path: str | None) -> None:
        name = self.lc.storage_pool_name
        folder = path or os.path.join(DEFAULT_POOL_ROOT, name)
        conn, lv = self.host.conn, self.lv
        self._ensure(
            f"storage pool {name}",
            lambda: conn.storagePoolLookupByName(name),
            lv.VIR_ERR_NO_STORAGE_POOL,
            lambda: conn.storagePoolDefineXML(pool_xml(name, folder), 0),
            lambda p: p.create(lv.VIR_STORAGE_POOL_CREATE_WITH_BUILD),
            lambda p: p.info()[0] == lv.VIR_STORAGE_POOL_RUNNING,
            f"folder {folder}",
        )

    def network(self, cidr: str, nat: bool) -> None:
        if self.lc.bridge_name:
            self.steps.append(
                Step(f"bridge {self.lc.bridge_name}", "unchanged", "the host's own (libvirt.bridge_name)")
            )
            return
        name = self.lc.network_name
        conn = self.host.conn
        self._ensure(
            f"network {name}",
            lambda: conn.networkLookupByName(name),
            self.lv.VIR_ERR_NO_NETWORK,
            lambda: conn.networkDefineXML(network_xml(name, cidr, nat)),
            lambda n: n.create(),
            lambda n: n.isActive(),
            f"{cidr}, {'NAT' if nat else 'no NAT'}",
        )

    def console_folder(self) -> None:
        folder = self.lc.console_log_dir
        what = f"console log folder {folder}"
        if not self.host.is_local:
            self.steps.append(Step(what, "unchanged", "libvirtd is remote: its host keeps the folder"))
            return
        if os.path.isdir(folder):
            self.steps.append(Step(what, "unchanged"))
            return
        os.makedirs(folder, exist_ok=True)
        self.steps.append(Step(what, "created"))


def run(cfg: Any, args: Any) -> tuple[str, list[Step]]:
    """Every step, in order; (what was set up, the steps). libvirt errors and BoshError propagate."""
    host = LibvirtHost(cfg)
    try:
        version = host.conn.getLibVersion()
        major, minor, micro = version // 1_000_000, version // 1000 % 1000, version % 1000
        init = HostInit(cfg, host)
        network_xml(cfg.libvirt.network_name, args.network_cidr, args.nat)  # bad input before any change
        init.pool(args.pool_path)
        init.network(args.network_cidr, args.nat)
        init.console_folder()
        return f"libvirt {major}.{minor}.{micro} at {cfg.libvirt.uri}", init.steps
    finally:
        host.close()
