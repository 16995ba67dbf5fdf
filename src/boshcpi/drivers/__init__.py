"""Drivers: one package per IaaS. `make_cloud` picks one from the config without importing the others."""

from __future__ import annotations

from boshcpi.cloud import Cloud

TYPE_CHECKING = False
if TYPE_CHECKING:
    from boshcpi.config import Config
    from boshcpi.protocol import Request

STEMCELL_FORMATS = {
    # VM stemcells (OpenStack-style root.img) and warden-style root filesystem tarballs.
    "lxd": ("openstack-qcow2", "openstack-raw", "warden-tgz", "general-tar"),
    "libvirt": ("openstack-qcow2", "openstack-raw"),
}


class InfoCloud(Cloud):
    """Answers `info` without touching the IaaS."""

    def __init__(self, formats: tuple[str, ...]) -> None:
        self.stemcell_formats = formats


def make_cloud(cfg: Config, request: Request | None = None) -> Cloud:
    if request is not None and request.method == "info":
        return InfoCloud(STEMCELL_FORMATS[cfg.driver])
    if cfg.driver == "libvirt":
        from boshcpi.drivers.libvirt.cloud import LibvirtCloud

        return LibvirtCloud(cfg, request)
    from boshcpi.drivers.lxd.cloud import LXDCloud

    return LXDCloud(cfg, request)
