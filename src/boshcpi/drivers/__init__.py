"""Drivers: one package per IaaS, each holding everything about it (its Cloud, naming, orphan finder,
doctor checks, host set-up). This module is the only place that knows their names; it imports a
driver's module only when a command needs it.

A driver package provides:
- `cloud.py`: the Cloud (every CPI method);
- `cleanup.py`: `Cleaner(cfg)` with `find(older_than) -> [Orphan]`, `remove(orphan)`, `close()`;
- `doctor.py`: `checks(cfg) -> [Check]`;
- `hostinit.py` (optional): `add_arguments(parser)` and `run(cfg, args) -> (what, [Step])`.
"""

from __future__ import annotations

from boshcpi.cloud import Cloud

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

    from boshcpi.config import Config
    from boshcpi.protocol import Request

PACKAGES = {"lxd": "boshcpi.drivers.lxd", "libvirt": "boshcpi.drivers.libvirt"}


class InfoCloud(Cloud):
    """Answers `info` without touching the IaaS."""

    def __init__(self, formats: tuple[str, ...]) -> None:
        self.stemcell_formats = formats


def _part(cfg: Config, name: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"{PACKAGES[cfg.driver]}.{name}")


def make_cloud(cfg: Config, request: Request | None = None) -> Cloud:
    if request is not None and request.method == "info":
        # The Go libvirt CPI's `stemcell.formats` property names what info reports.
        custom = cfg.libvirt.stemcell_formats if cfg.driver == "libvirt" else []
        # Each driver declares its formats in its package's __init__, which imports nothing.
        driver = __import__(PACKAGES[cfg.driver], fromlist=["STEMCELL_FORMATS"])
        return InfoCloud(tuple(custom) or driver.STEMCELL_FORMATS)
    if cfg.driver == "libvirt":
        from boshcpi.drivers.libvirt.cloud import LibvirtCloud

        return LibvirtCloud(cfg, request)
    from boshcpi.drivers.lxd.cloud import LXDCloud

    return LXDCloud(cfg, request)


def make_cleaner(cfg: Config) -> Any:
    return _part(cfg, "cleanup").Cleaner(cfg)


def doctor_checks(cfg: Config) -> list[Any]:
    return _part(cfg, "doctor").checks(cfg)


def host_init(cfg: Config) -> ModuleType | None:
    try:
        return _part(cfg, "hostinit")
    except ModuleNotFoundError:
        return None


def connection_fix(config_path: str | None) -> str:
    where = config_path or "the config"
    return f"check the server/libvirt URL and credentials in {where} (boshcpi doctor --config {where})"
