"""Method name -> Cloud method: argument checking, typed specs in, JSON-ready results out.

Every method of the contract is listed in METHODS with its arguments. Argument count and type
errors are the caller's fault and answer Bosh::Clouds::CpiError naming the method and argument.
"""

from __future__ import annotations

from boshcpi.protocol import CpiError, NotImplementedByCpi, Request, shape_result
from boshcpi.protocol import type_name as _type_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.cloud import Cloud


class Arg:
    """One argument of a method: its name, kind (str, int, dict, list) and whether null is allowed."""

    __slots__ = ("kind", "name", "nullable")

    def __init__(self, name: str, kind: str, nullable: bool = False) -> None:
        self.name, self.kind, self.nullable = name, kind, nullable


# The contract table. Arguments that are nullable may also be left out at the end of the list.
METHODS: dict[str, tuple[Arg, ...]] = {
    "info": (),
    "create_stemcell": (Arg("image_path", "str"), Arg("cloud_properties", "dict", nullable=True)),
    "delete_stemcell": (Arg("stemcell_cid", "str"),),
    "create_vm": (
        Arg("agent_id", "str"),
        Arg("stemcell_cid", "str"),
        Arg("cloud_properties", "dict", nullable=True),
        Arg("networks", "dict", nullable=True),
        Arg("disk_cids", "list", nullable=True),
        Arg("environment", "dict", nullable=True),
    ),
    "delete_vm": (Arg("vm_cid", "str"),),
    "has_vm": (Arg("vm_cid", "str"),),
    "reboot_vm": (Arg("vm_cid", "str"),),
    "set_vm_metadata": (Arg("vm_cid", "str"), Arg("metadata", "dict", nullable=True)),
    "calculate_vm_cloud_properties": (Arg("vm_resources", "dict"),),
    "create_disk": (
        Arg("size", "int"),
        Arg("cloud_properties", "dict", nullable=True),
        Arg("vm_cid", "str", nullable=True),
    ),
    "delete_disk": (Arg("disk_cid", "str"),),
    "has_disk": (Arg("disk_cid", "str"),),
    "attach_disk": (Arg("vm_cid", "str"), Arg("disk_cid", "str")),
    "detach_disk": (Arg("vm_cid", "str"), Arg("disk_cid", "str")),
    "get_disks": (Arg("vm_cid", "str"),),
    "resize_disk": (Arg("disk_cid", "str"), Arg("new_size", "int")),
    "update_disk": (Arg("disk_cid", "str"), Arg("new_size", "int"), Arg("cloud_properties", "dict", nullable=True)),
    "snapshot_disk": (Arg("disk_cid", "str"), Arg("metadata", "dict", nullable=True)),
    "delete_snapshot": (Arg("snapshot_cid", "str"),),
    "set_disk_metadata": (Arg("disk_cid", "str"), Arg("metadata", "dict", nullable=True)),
}

# Calls that load the host (image copies, volume creation): these take a throttle lease.
HEAVY_METHODS = frozenset(
    {"create_stemcell", "create_vm", "delete_vm", "create_disk", "resize_disk", "snapshot_disk", "update_disk"}
)

_KIND_NAMES = {"str": "a string", "int": "an integer", "dict": "an object", "list": "a list"}


def _check(method: str, index: int, arg: Arg, value: Any) -> Any:
    where = f"{method}: argument {index + 1} ({arg.name})"
    if value is None:
        if arg.nullable:
            return None
        raise CpiError(f"{where} must be {_KIND_NAMES[arg.kind]}, got null")
    ok: bool
    if arg.kind == "str":
        ok = isinstance(value, str) and value != ""
        if isinstance(value, str) and value == "":
            raise CpiError(f"{where} must be a non-empty string")
    elif arg.kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if ok is False and isinstance(value, int) and not isinstance(value, bool):
            raise CpiError(f"{where} must be a positive integer, got {value}")
    elif arg.kind == "dict":
        ok = isinstance(value, dict)
    elif arg.kind == "list":
        ok = isinstance(value, list)
    else:  # pragma: no cover - table typo
        raise AssertionError(arg.kind)
    if not ok:
        raise CpiError(f"{where} must be {_KIND_NAMES[arg.kind]}, got {_type_name(value)}")
    return value


def check_arguments(method: str, arguments: list[Any]) -> list[Any]:
    """Validate a request's arguments against the contract table; return them normalised."""
    spec = METHODS[method]
    required = len(spec)
    while required and spec[required - 1].nullable:
        required -= 1
    if not (required <= len(arguments) <= len(spec)):
        names = ", ".join(a.name for a in spec) or "none"
        want = str(len(spec)) if required == len(spec) else f"{required} to {len(spec)}"
        raise CpiError(f"{method}: expected {want} arguments ({names}), got {len(arguments)}")
    values = list(arguments) + [None] * (len(spec) - len(arguments))
    return [_check(method, i, a, v) for i, (a, v) in enumerate(zip(spec, values, strict=True))]


def _string_list(method: str, name: str, value: list[Any] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    for item in value:
        if not isinstance(item, str):
            raise CpiError(f"{method}: {name} must be a list of strings, got an item {_type_name(item)}")
    return tuple(value)


def _metadata(method: str, value: dict[str, Any] | None) -> dict[str, str]:
    """BOSH metadata is a string map; numbers and booleans are stringified, nested values refused."""
    out: dict[str, str] = {}
    for k, v in (value or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        elif v is None:
            v = ""
        if not isinstance(v, str):
            raise CpiError(f"{method}: metadata value of {k!r} must be a string, got {_type_name(v)}")
        out[str(k)] = v
    return out


def build_networks(method: str, networks: dict[str, Any] | None):
    from boshcpi.cloud import NetworkSpec

    out: dict[str, NetworkSpec] = {}
    for name, net in (networks or {}).items():
        if not isinstance(net, dict):
            raise CpiError(f"{method}: networks.{name} must be an object, got {_type_name(net)}")
        ntype = net.get("type") or "manual"
        if ntype not in ("manual", "dynamic", "vip"):
            raise CpiError(f"{method}: networks.{name}.type must be manual, dynamic or vip, got {ntype!r}")
        for key in ("ip", "netmask", "gateway", "mac"):
            if net.get(key) is not None and not isinstance(net.get(key), str):
                raise CpiError(f"{method}: networks.{name}.{key} must be a string")
        if ntype == "manual" and not net.get("ip"):
            raise CpiError(f"{method}: networks.{name} is manual but has no ip")
        cp = net.get("cloud_properties") or {}
        if not isinstance(cp, dict):
            raise CpiError(f"{method}: networks.{name}.cloud_properties must be an object")
        out[name] = NetworkSpec(
            name=name,
            type=ntype,
            ip=net.get("ip") or "",
            netmask=net.get("netmask") or "",
            gateway=net.get("gateway") or "",
            dns=_string_list(method, f"networks.{name}.dns", net.get("dns")),
            default=_string_list(method, f"networks.{name}.default", net.get("default")),
            mac=net.get("mac") or "",
            cloud_properties=cp,
            raw=net,
        )
    return out


def _resources(value: dict[str, Any]):
    from boshcpi.cloud import VMResources

    def num(key: str, required: bool = True) -> int:
        v = value.get(key)
        if v is None and not required:
            return 0
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CpiError(
                f"calculate_vm_cloud_properties: vm_resources.{key} must be a non-negative integer, got {_type_name(v)}"
            )
        return v

    return VMResources(cpu=num("cpu") or 1, ram_mb=num("ram") or 1, ephemeral_disk_mb=num("ephemeral_disk_size", False))


def _call(cloud: Cloud, method: str, a: list[Any]) -> Any:
    from boshcpi import cloud as c

    if method == "info":
        return cloud.info()
    if method == "create_stemcell":
        return cloud.create_stemcell(c.StemcellSpec(image_path=a[0], cloud_properties=a[1] or {}))
    if method == "create_vm":
        spec = c.VMSpec(
            agent_id=a[0],
            stemcell_cid=a[1],
            cloud_properties=a[2] or {},
            networks=build_networks(method, a[3]),
            disk_cids=_string_list(method, "disk_cids", a[4]),
            env=a[5] or {},
            raw_networks=a[3] or {},
        )
        return cloud.create_vm(spec)
    if method == "set_vm_metadata":
        return cloud.set_vm_metadata(a[0], _metadata(method, a[1]))
    if method == "calculate_vm_cloud_properties":
        return cloud.calculate_vm_cloud_properties(_resources(a[0]))
    if method == "create_disk":
        return cloud.create_disk(c.DiskSpec(size_mb=a[0], cloud_properties=a[1] or {}, vm_cid=a[2]))
    if method == "update_disk":
        return cloud.update_disk(a[0], a[1], a[2] or {})
    if method in ("snapshot_disk", "set_disk_metadata"):
        fn: Callable[..., Any] = getattr(cloud, method)
        return fn(a[0], _metadata(method, a[1]))
    fn = getattr(cloud, method)
    return fn(*a)


def dispatch(cloud_factory: Callable[[], Cloud], request: Request, lease: Callable[[str], Any] | None = None) -> Any:
    """Run one request against a driver; return the JSON-ready result shaped for its API version."""
    if request.method not in METHODS:
        raise NotImplementedByCpi(f"Must call implemented method: unknown method {request.method!r}")
    args = check_arguments(request.method, request.arguments)
    cloud = cloud_factory()
    try:
        if lease is not None and request.method in HEAVY_METHODS:
            with lease(request.method):
                value = _call(cloud, request.method, args)
        else:
            value = _call(cloud, request.method, args)
    finally:
        cloud.close()
    return shape_result(request.method, request.api_version, value)
