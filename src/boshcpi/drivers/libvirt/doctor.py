"""Doctor checks of a libvirt host (the driver's part of `boshcpi doctor`)."""

from __future__ import annotations

from boshcpi.drivers.libvirt.host import LibvirtHost
from boshcpi.protocol import BoshError
from boshcpi.report import FAIL, OK, Check

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.config import Config


def checks(cfg: Config) -> list[Check]:
    """Connection, storage pool, domain type, network."""

    cloud = LibvirtHost(cfg)
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
    cloud.close()
    return checks
