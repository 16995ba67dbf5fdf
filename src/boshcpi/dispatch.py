"""Method name -> Cloud method: argument checking, typed specs in, JSON-ready results out.

Every method of the contract is listed in METHODS with its arguments. Argument count and type
errors are the caller's fault and answer Bosh::Clouds::CpiError naming the method and argument.
"""

from __future__ import annotations

from boshcpi.protocol import (
    CpiError,
    DiskNotFound,
    NotImplementedByCpi,
    Request,
    VMCreationFailed,
    VMNotFound,
    shape_result,
)
from boshcpi.protocol import type_name as _type_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from boshcpi.cloud import Cloud


class Arg:
    """One argument of a method: its name, kind (str, int, dict, list), whether null is allowed, and
    for cids which kind of object it names (vm, disk, snapshot, stemcell)."""

    __slots__ = ("cid", "kind", "name", "nullable")

    def __init__(self, name: str, kind: str, nullable: bool = False, cid: str = "") -> None:
        self.name, self.kind, self.nullable, self.cid = name, kind, nullable, cid


# Strings: ids and cids are short and printable; paths a little longer. Anything else is refused
# before it reaches a driver (a control character in a cid could forge log lines or paths).
MAX_ID = 256
MAX_PATH = 4096
MAX_SIZE_MB = 1 << 30  # 1 PiB: above any pool; 1e300 or 2**53+1 is a typo or an attack
MAX_METADATA_VALUE = 4096
MAX_METADATA_KEYS = 256


# The contract table. Arguments that are nullable may also be left out at the end of the list.
METHODS: dict[str, tuple[Arg, ...]] = {
    "info": (),
    "create_stemcell": (Arg("image_path", "str"), Arg("cloud_properties", "dict", nullable=True)),
    "delete_stemcell": (Arg("stemcell_cid", "str", cid="stemcell"),),
    "create_vm": (
        Arg("agent_id", "str"),
        Arg("stemcell_cid", "str", cid="stemcell"),
        Arg("cloud_properties", "dict", nullable=True),
        Arg("networks", "dict", nullable=True),
        Arg("disk_cids", "list", nullable=True),
        Arg("environment", "dict", nullable=True),
    ),
    "delete_vm": (Arg("vm_cid", "str", cid="vm"),),
    "has_vm": (Arg("vm_cid", "str", cid="vm"),),
    "reboot_vm": (Arg("vm_cid", "str", cid="vm"),),
    "set_vm_metadata": (Arg("vm_cid", "str", cid="vm"), Arg("metadata", "dict", nullable=True)),
    "calculate_vm_cloud_properties": (Arg("vm_resources", "dict"),),
    "create_disk": (
        Arg("size", "int"),
        Arg("cloud_properties", "dict", nullable=True),
        Arg("vm_cid", "str", nullable=True, cid="vm"),
    ),
    "delete_disk": (Arg("disk_cid", "str", cid="disk"),),
    "has_disk": (Arg("disk_cid", "str", cid="disk"),),
    "attach_disk": (Arg("vm_cid", "str", cid="vm"), Arg("disk_cid", "str", cid="disk")),
    "detach_disk": (Arg("vm_cid", "str", cid="vm"), Arg("disk_cid", "str", cid="disk")),
    "get_disks": (Arg("vm_cid", "str", cid="vm"),),
    "resize_disk": (Arg("disk_cid", "str", cid="disk"), Arg("new_size", "int")),
    "update_disk": (
        Arg("disk_cid", "str", cid="disk"),
        Arg("new_size", "int"),
        Arg("cloud_properties", "dict", nullable=True),
    ),
    "snapshot_disk": (Arg("disk_cid", "str", cid="disk"), Arg("metadata", "dict", nullable=True)),
    "delete_snapshot": (Arg("snapshot_cid", "str", cid="snapshot"),),
    "set_disk_metadata": (Arg("disk_cid", "str", cid="disk"), Arg("metadata", "dict", nullable=True)),
}

# Calls that load the host (image copies, volume creation): these take a throttle lease.
HEAVY_METHODS = frozenset(
    {"create_stemcell", "create_vm", "delete_vm", "create_disk", "resize_disk", "snapshot_disk", "update_disk"}
)

_KIND_NAMES = {"str": "a string", "int": "an integer", "dict": "an object", "list": "a list"}


def check_text(where: str, value: str, limit: int) -> None:
    """A string argument is printable Unicode of bounded length: no control characters (NUL, newlines:
    they would forge log lines or break paths) and no lone surrogates (not encodable at all)."""
    if len(value) > limit:
        raise CpiError(f"{where} is {len(value)} characters long; at most {limit} are allowed")
    for c in value:
        if c < " " or c == "\x7f" or "\ud800" <= c <= "\udfff":
            raise CpiError(f"{where} holds a control character or invalid Unicode ({ord(c):#x})")


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
        if ok:
            check_text(where, value, MAX_PATH if arg.name == "image_path" else MAX_ID)
    elif arg.kind == "int":
        if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if ok is False and isinstance(value, int) and not isinstance(value, bool):
            raise CpiError(f"{where} must be a positive integer, got {value}")
        if ok and value > MAX_SIZE_MB:
            raise CpiError(f"{where} is {value} MiB; at most {MAX_SIZE_MB} MiB is allowed")
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
    """BOSH metadata is a string map; numbers and booleans are stringified, nested values refused,
    keys printable, and every value bounded."""
    out: dict[str, str] = {}
    if value is not None and len(value) > MAX_METADATA_KEYS:
        raise CpiError(f"{method}: metadata has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    for k, v in (value or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (int, float)):
            v = str(v)
        elif v is None:
            v = ""
        if not isinstance(v, str):
            raise CpiError(f"{method}: metadata value of {k!r} must be a string, got {_type_name(v)}")
        check_text(f"{method}: metadata key {str(k)[:40]!r}", str(k), MAX_ID)
        if len(v) > MAX_METADATA_VALUE:
            raise CpiError(
                f"{method}: metadata value of {str(k)!r} is {len(v)} characters; at most {MAX_METADATA_VALUE}"
            )
        if "\x00" in v or any("\ud800" <= c <= "\udfff" for c in v):
            raise CpiError(f"{method}: metadata value of {str(k)!r} holds NUL or invalid Unicode")
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
        if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > MAX_SIZE_MB:
            shown = repr(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _type_name(v)
            raise CpiError(
                f"calculate_vm_cloud_properties: vm_resources.{key} must be an integer from 0 to {MAX_SIZE_MB}, "
                f"got {shown}"
            )
        return v

    return VMResources(cpu=num("cpu") or 1, ram_mb=num("ram") or 1, ephemeral_disk_mb=num("ephemeral_disk_size", False))


def _prepare(method: str, a: list[Any]) -> list[Any]:
    """The driver's arguments: typed specs built and every input checked, before any cid is looked
    at or the driver is even made (bad input is the caller's fault, whatever else is wrong)."""
    from boshcpi import cloud as c

    if method == "create_stemcell":
        return [c.StemcellSpec(image_path=a[0], cloud_properties=a[1] or {})]
    if method == "create_vm":
        disk_cids = _string_list(method, "disk_cids", a[4])
        for cid in disk_cids:
            check_text(f"{method}: disk_cids", cid, MAX_ID)
        spec = c.VMSpec(
            agent_id=a[0],
            stemcell_cid=a[1],
            cloud_properties=a[2] or {},
            networks=build_networks(method, a[3]),
            disk_cids=disk_cids,
            env=a[5] or {},
            raw_networks=a[3] or {},
        )
        c.parse_vm_size(spec.cloud_properties)
        return [spec]
    if method == "set_vm_metadata":
        return [a[0], _metadata(method, a[1])]
    if method == "calculate_vm_cloud_properties":
        return [_resources(a[0])]
    if method == "create_disk":
        return [c.DiskSpec(size_mb=a[0], cloud_properties=a[1] or {}, vm_cid=a[2])]
    if method == "update_disk":
        return [a[0], a[1], a[2] or {}]
    if method in ("snapshot_disk", "set_disk_metadata"):
        return [a[0], _metadata(method, a[1])]
    return list(a)


def _call(cloud: Cloud, method: str, p: list[Any]) -> Any:
    if method == "info":
        return cloud.info()
    fn: Callable[..., Any] = getattr(cloud, method)
    return fn(*p)


# What the contract answers for an object that does not exist (bosh-cpi-go apiv1 and the director's
# expectations: lookups false or a typed NotFound, deletes succeed).
def _missing(method: str, arg: Arg, value: str) -> tuple[bool, Any]:
    """(answered, result) for a cid that names nothing this driver could have made."""
    if method in ("has_vm", "has_disk"):
        return True, False
    if method in ("delete_vm", "delete_disk", "delete_snapshot", "delete_stemcell"):
        return True, None
    if method == "create_vm":
        raise VMCreationFailed(f"create_vm: stemcell {value!r} not found", ok_to_retry=False)
    if method == "create_disk":
        return False, None  # a locality hint that names nothing is ignored
    if arg.cid == "vm":
        raise VMNotFound(f"{method}: VM {value!r} not found")
    raise DiskNotFound(f"{method}: disk {value!r} not found")


def dispatch(cloud_factory: Callable[[], Cloud], request: Request, lease: Callable[[str], Any] | None = None) -> Any:
    """Run one request against a driver; return the JSON-ready result shaped for its API version.

    Every cid argument is first checked against the driver's own forms (`Cloud.recognises`): a cid it
    could never have made gets the contract's answer for a missing object without reaching the IaaS."""
    if request.method not in METHODS:
        raise NotImplementedByCpi(f"Must call implemented method: unknown method {request.method!r}")
    args = check_arguments(request.method, request.arguments)
    prepared = _prepare(request.method, args)
    cloud = cloud_factory()
    try:
        for i, arg in enumerate(METHODS[request.method]):
            if arg.cid and args[i] is not None and not cloud.recognises(arg.cid, args[i]):
                answered, result = _missing(request.method, arg, args[i])
                if answered:
                    return shape_result(request.method, request.api_version, result)
                if request.method == "create_disk":
                    prepared[0] = prepared[0].replace(vm_cid=None)
        if lease is not None and request.method in HEAVY_METHODS:
            with lease(request.method):
                value = _call(cloud, request.method, prepared)
        else:
            value = _call(cloud, request.method, prepared)
    finally:
        cloud.close()
    return shape_result(request.method, request.api_version, value)
