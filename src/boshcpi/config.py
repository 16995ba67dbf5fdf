"""cpi.json -> frozen, validated settings.

The file mirrors the BOSH job properties (`server`, `agent`, `agent_config`, `throttle_config`,
`libvirt`). Every unknown key, wrong type or bad value is a CpiError naming its key path.
Property names follow the Go LXD CPI so an operator can switch releases with the same vars.
"""

from __future__ import annotations

from boshcpi.protocol import CpiError
from boshcpi.protocol import type_name as _kind
from boshcpi.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Instance config by stemcell line: the Go CPI's defaults (jammy boots BIOS/CSM, others UEFI
# without secure boot). Keys are matched against the stemcell's image properties; `default` (the Go
# CPI's fallback key) or `*` applies when none matches.
DEFAULT_INSTANCE_CONFIG: dict[str, dict[str, str]] = {
    "jammy": {"security.csm": "true", "security.secureboot": "false"},
    "default": {"security.secureboot": "false"},
}

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | int | float, path: str) -> float:
    """'2m' -> 120.0 seconds; '30s', '1h', '500ms', or a bare number of seconds."""
    if isinstance(text, bool):
        raise CpiError(f"{path}: expected a duration like '2m' or '30s'")
    if isinstance(text, (int, float)):
        if text < 0 or text != text:
            raise CpiError(f"{path}: expected a duration like '2m' or '30s', got {text!r}")
        return float(text)
    raw = str(text).strip()
    unit = next((u for u in ("ms", "s", "m", "h") if raw.endswith(u)), "")
    try:
        value = float(raw[: len(raw) - len(unit)].strip())
    except ValueError:
        raise CpiError(f"{path}: expected a duration like '2m' or '30s', got {text!r}") from None
    if value < 0:
        raise CpiError(f"{path}: expected a duration like '2m' or '30s', got {text!r}")
    return value * _UNITS[unit or "s"]


def _check_url(value: str, path: str) -> None:
    """`https://host[:port]` or `unix:///absolute/path`: nothing else, and never credentials (a
    password in a URL would reach logs and error messages)."""
    if not value:
        return
    if value.startswith("unix://"):
        sock = value[len("unix://") :]
        if not sock.startswith("/") or any(c < " " for c in sock):
            raise CpiError(f"{path}: expected unix:///absolute/path/to/unix.socket")
        return
    if not value.startswith("https://"):
        raise CpiError(f"{path}: expected https:// or unix:// URL, got a {value.partition(':')[0][:10]!r} URL")
    rest = value[len("https://") :]
    hostport, _, tail = rest.partition("/")
    if tail or "?" in hostport or "#" in hostport:
        raise CpiError(f"{path}: expected https://host[:port] with nothing after it")
    if "@" in hostport:
        raise CpiError(f"{path}: credentials do not belong in the URL; use server.tls_client_cert and _key")
    if hostport.startswith("["):
        host, sep, port = hostport[1:].partition("]")
        if port and not port.startswith(":"):
            raise CpiError(f"{path}: expected https://[ipv6]:port")
        port = port[1:]
    else:
        host, sep, port = hostport.partition(":")
    if not host or any(not (c.isascii() and (c.isalnum() or c in ".-_:")) for c in host):
        raise CpiError(f"{path}: {host!r} is not a host name or address")
    if sep and port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise CpiError(f"{path}: port must be a number from 1 to 65535")


def parse_size(text: str | int, path: str) -> int:
    """'100GiB' -> bytes; also MiB, TiB, and a bare number of bytes."""
    if isinstance(text, bool):
        raise CpiError(f"{path}: expected a size like '100GiB'")
    if isinstance(text, int):
        if text < 0:
            raise CpiError(f"{path}: expected a size like '100GiB', got {text!r}")
        return text
    raw = str(text).strip()
    for unit, mult in (("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40), ("B", 1), ("", 1)):
        if raw.endswith(unit) and raw[: len(raw) - len(unit)].strip().isdigit():
            return int(raw[: len(raw) - len(unit)]) * mult
    raise CpiError(f"{path}: expected a size like '100GiB', got {text!r}")


def _one_of(*choices: str) -> Callable[[str, str], None]:
    def check(value: str, path: str) -> None:
        if value not in choices:
            raise CpiError(f"{path}: expected one of {', '.join(choices)}, got {value!r}")

    return check


def _positive(value: int, path: str) -> None:
    if value <= 0:
        raise CpiError(f"{path}: must be positive, got {value}")


class Section(Record):
    """A config section: `_spec` maps each key to (kind, default, check)."""

    _spec: dict[str, tuple[str, Any, Callable[[Any, str], None] | None]] = {}

    def __init__(self, **values: Any) -> None:
        for name, (_k, default, _c) in self._spec.items():
            if name not in values:
                values[name] = default() if callable(default) else default
        super().__init__(**values)


def _section(name: str, spec: dict[str, tuple[str, Any, Any]], doc: str) -> type[Section]:
    return type(name, (Section,), {"__slots__": tuple(spec), "_spec": spec, "__doc__": doc})


CreateVMLock = _section(
    "CreateVMLock",
    {
        "enabled": ("bool", False, None),
        "timeout": ("duration", "10m", None),
        "path": ("str", "/var/vcap/sys/run/lxd_cpi/create-vm.lock", None),
    },
    "`server.create_vm_lock`: the Go CPI's file lock that lets one create_vm run at a time.",
)

ServerConfig = _section(
    "ServerConfig",
    {
        "type": ("str", "lxd", _one_of("lxd", "incus")),
        "url": ("str", "", _check_url),
        "insecure_skip_verify": ("bool", False, None),
        "tls_client_cert": ("str", "", None),
        "tls_client_key": ("str", "", None),
        "tls_server_cert": ("str", "", None),
        "project_name": ("str", "default", None),
        "profile_name": ("str", "default", None),
        "network_name": ("str", "lxdbr0", None),
        "storage_pool_name": ("str", "default", None),
        "target": ("str", "", None),
        "managed_network_assignment": ("str", "static", _one_of("static", "dhcp", "agent")),
        "instance_config": ("strmaps", lambda: {k: dict(v) for k, v in DEFAULT_INSTANCE_CONFIG.items()}, None),
        "predeploy_stemcell": ("bool", False, None),
        "bios_path": ("str", "", None),
        "operation_timeout": ("duration", "10m", None),
        "container_privileged": ("bool", True, None),
        "nested_containers": ("bool", False, None),
        "allow_raw_devices": ("bool", False, None),
        "allow_raw_config": ("bool", False, None),
        "max_stemcell_image": ("size", "100GiB", None),
        "create_vm_lock": ("section", CreateVMLock, None),
    },
    "`server`: the LXD/Incus endpoint and where the CPI puts things.",
)

AgentOptions = _section(
    "AgentOptions",
    {
        "mbus": ("str", "", None),
        "ntp": ("strlist", list, None),
        "blobstore": ("object", dict, None),
    },
    "`agent`: what every agent's settings carry.",
)

AgentConfig = _section(
    "AgentConfig",
    {
        "type": ("str", "CDROM", _one_of("FAT32", "CDROM")),
        "label": ("str", "config-2", None),
        "metadata_path": ("str", "ec2/latest/meta-data.json", None),
        "userdata_path": ("str", "ec2/latest/user-data", None),
        "filestore_path": ("str", "/var/vcap/store/agent-data", None),
        # The Go libvirt CPI's CDROM type (vSphere-style): one settings file of this name on an ISO.
        "filename": ("str", "", None),
        # An SSH key for the agent's meta-data `public-keys` (the Go libvirt CPI's vm_ssh_key).
        "public_key": ("str", "", None),
    },
    "`agent_config`: the VM config drive.",
)

ThrottleConfig = _section(
    "ThrottleConfig",
    {
        "enabled": ("bool", False, None),
        "path": ("str", "/var/vcap/sys/run/lxd_cpi/throttle.sock", None),
        "limit": ("int", 4, _positive),
        "hold": ("duration", "2m", None),
    },
    "`throttle_config`: leases around heavy calls.",
)

LibvirtConfig = _section(
    "LibvirtConfig",
    {
        "uri": ("str", "qemu:///system", None),
        "domain_type": ("str", "kvm", _one_of("kvm", "qemu")),
        "storage_pool_name": ("str", "default", None),
        "network_name": ("str", "default", None),
        "bridge_name": ("str", "", None),
        "tls_client_cert": ("str", "", None),
        "tls_client_key": ("str", "", None),
        "tls_ca_cert": ("str", "", None),
        "domain_template": ("str", "", None),
        "console_log_dir": ("str", "/var/log/libvirt/qemu", None),
        "machine_type": ("str", "pc", None),
        "emulator": ("str", "", None),
        "stemcell_formats": ("strlist", list, None),
    },
    "`libvirt`: the libvirt connection and where domains and volumes go.",
)


class Config(Section):
    """The whole cpi.json."""

    __slots__ = ("agent", "agent_config", "debug", "driver", "libvirt", "server", "throttle_config")
    _spec = {
        "driver": ("str", "lxd", _one_of("lxd", "libvirt")),
        "server": ("section", ServerConfig, None),
        "agent": ("section", AgentOptions, None),
        "agent_config": ("section", AgentConfig, None),
        "throttle_config": ("section", ThrottleConfig, None),
        "libvirt": ("section", LibvirtConfig, None),
        "debug": ("bool", False, None),
    }
    driver: str
    server: Any
    agent: Any
    agent_config: Any
    throttle_config: Any
    libvirt: Any
    debug: bool

    @property
    def server_url(self) -> str:
        if self.server.url:
            return self.server.url
        return f"unix:///var/lib/{self.server.type}/unix.socket"

    @property
    def operation_timeout(self) -> float:
        return parse_duration(self.server.operation_timeout, "server.operation_timeout")

    @property
    def max_stemcell_image(self) -> int:
        return parse_size(self.server.max_stemcell_image, "server.max_stemcell_image")

    @property
    def throttle_hold(self) -> float:
        return parse_duration(self.throttle_config.hold, "throttle_config.hold")


CONFIG_SECTIONS = ("driver", "server", "agent", "agent_config", "throttle_config", "libvirt", "debug")

# ---- building sections from JSON with key-path errors -------------------------------------


def _coerce(kind: str, value: Any, path: str) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise CpiError(f"{path}: expected a string, got {_kind(value)}")
        return value
    if kind in ("duration", "size"):
        # '10m' / '100GiB' as the job specs write them, or a bare number (seconds, bytes), as the Go
        # CPI's spec and YAML manifests often give them (`operation_timeout: 600`, `hold: 120`).
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise CpiError(f"{path}: expected a {kind} string or number, got {_kind(value)}")
        if kind == "size" and isinstance(value, float):
            if not value.is_integer():
                raise CpiError(f"{path}: expected a whole number of bytes, got {value}")
            value = int(value)
        return value
    if kind == "bool":
        # BOSH properties rendered from ERB often arrive as "true"/"false" strings.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise CpiError(f"{path}: expected a boolean, got {_kind(value)}")
        return value
    if kind == "int":
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CpiError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if kind == "strlist":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CpiError(f"{path}: expected a list of strings, got {_kind(value)}")
        return list(value)
    if kind == "object":
        if not isinstance(value, dict):
            raise CpiError(f"{path}: expected an object, got {_kind(value)}")
        return dict(value)
    if kind == "strmaps":
        if not isinstance(value, dict):
            raise CpiError(f"{path}: expected an object, got {_kind(value)}")
        out: dict[str, dict[str, str]] = {}
        for k, v in value.items():
            if not isinstance(v, dict):
                raise CpiError(f"{path}.{k}: expected an object of strings, got {_kind(v)}")
            inner = {}
            for ik, iv in v.items():
                if isinstance(iv, bool):
                    iv = "true" if iv else "false"
                elif isinstance(iv, (int, float)):
                    iv = str(iv)
                if not isinstance(iv, str):
                    raise CpiError(f"{path}.{k}.{ik}: expected a string, got {_kind(iv)}")
                inner[ik] = iv
            out[k] = inner
        return out
    raise AssertionError(f"unsupported kind {kind}")  # pragma: no cover


def _build(cls: type[Section], data: Any, path: str, base: Section | None = None) -> Any:
    if not isinstance(data, dict):
        raise CpiError(f"{path or 'config'}: expected an object, got {_kind(data)}")
    current = base if base is not None else cls()
    spec = cls._spec
    changes: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in spec:
            raise CpiError(f"{key_path}: unknown key (known: {', '.join(sorted(spec))})")
        if value is None:
            continue  # null means "use the default", as BOSH renders unset properties
        kind, default, check = spec[key]
        if kind == "section":
            changes[key] = _build(default, value, key_path, base=getattr(current, key))
            continue
        value = _coerce(kind, value, key_path)
        if check:
            check(value, key_path)
        changes[key] = value
    return current.replace(**changes) if changes else current


def from_dict(data: Any, base: Config | None = None) -> Config:
    cfg = _build(Config, data, "", base=base)
    # Cross-field checks.
    if bool(cfg.server.tls_client_cert) != bool(cfg.server.tls_client_key):
        raise CpiError("server.tls_client_cert and server.tls_client_key must be given together")
    cfg.operation_timeout  # noqa: B018 - validates the duration
    cfg.throttle_hold  # noqa: B018
    cfg.max_stemcell_image  # noqa: B018
    parse_duration(cfg.server.create_vm_lock.timeout, "server.create_vm_lock.timeout")
    return cfg


def load(path: str | None) -> Config:
    """Load a config file; a missing path gives the defaults."""
    if not path:
        return Config()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise CpiError(f"config {path}: cannot read: {e.strerror}") from None
    from boshcpi import fastjson

    try:
        data = fastjson.loads(text)
    except ValueError as e:
        raise CpiError(f"config {path}: invalid JSON: {e}") from None
    return from_dict(data)


def with_context(cfg: Config, context: dict[str, Any]) -> Config:
    """Apply CPI properties a director passes in the request context (cpi-config)."""
    overrides = {k: v for k, v in context.items() if k in CONFIG_SECTIONS}
    if not overrides:
        return cfg
    try:
        return from_dict(overrides, base=cfg)
    except CpiError as e:
        raise CpiError(f"context: {e.message}") from None


def secrets_of(cfg: Config) -> list[str]:
    """Strings that must never be logged: TLS keys, mbus and blobstore credentials."""
    out = [cfg.server.tls_client_key, cfg.libvirt.tls_client_key]
    out += url_credentials(cfg.agent.mbus)
    out += nested_secrets(cfg.agent.blobstore)
    return [s for s in out if s]


def url_credentials(url: str) -> list[str]:
    """['password', 'user:password'] of a URL like nats://user:password@host:4222."""
    scheme, sep, rest = (url or "").partition("://")
    if not sep or not scheme or "@" not in rest.split("/", 1)[0]:
        return []
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    _user, _, password = userinfo.partition(":")
    return [password, userinfo] if password else [userinfo]


_SECRET_KEYS = ("password", "secret", "private_key", "key", "token", "credentials")


def nested_secrets(value: Any, key: str = "") -> list[str]:
    """Values under keys that look secret, anywhere in a JSON-like structure."""
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            found += nested_secrets(v, str(k))
    elif isinstance(value, list):
        for v in value:
            found += nested_secrets(v, key)
    elif isinstance(value, str):
        lowered = key.lower()
        if any(word in lowered for word in _SECRET_KEYS) and not lowered.endswith("_path"):
            found.append(value)
        found += url_credentials(value)
    return found
