"""cpi.json -> frozen, validated settings.

The file mirrors the BOSH job properties (`server`, `agent`, `agent_config`, `throttle_config`,
`libvirt`). Every unknown key, wrong type or bad value is a CpiError naming its key path.
Property names follow the Go LXD CPI so an operator can switch releases with the same vars.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from boshcpi.protocol import CpiError

# Instance config by stemcell line: the anchor's defaults (jammy boots BIOS/CSM, others UEFI
# without secure boot). Keys are matched against the stemcell's os/name ("*" matches all).
DEFAULT_INSTANCE_CONFIG: dict[str, dict[str, str]] = {
    "jammy": {"security.csm": "true", "security.secureboot": "false"},
    "*": {"security.secureboot": "false"},
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(text: str | int | float, path: str) -> float:
    """'2m' -> 120.0 seconds; '30s', '1h', '500ms', or a bare number of seconds."""
    if isinstance(text, bool):
        raise CpiError(f"{path}: expected a duration like '2m' or '30s'")
    if isinstance(text, (int, float)):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise CpiError(f"{path}: expected a duration like '2m' or '30s', got {text!r}")
    value, unit = float(m.group(1)), m.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def _check_url(value: str, path: str) -> None:
    if not (value.startswith("https://") or value.startswith("unix://")):
        raise CpiError(f"{path}: expected https:// or unix:// URL, got {value!r}")


def _one_of(*choices: str):
    def check(value: str, path: str) -> None:
        if value not in choices:
            raise CpiError(f"{path}: expected one of {', '.join(choices)}, got {value!r}")

    return check


def _positive(value: int, path: str) -> None:
    if value <= 0:
        raise CpiError(f"{path}: must be positive, got {value}")


def _check(fn):
    return field(metadata={"check": fn})


@dataclass(frozen=True)
class ServerConfig:
    type: str = field(default="lxd", metadata={"check": _one_of("lxd", "incus")})
    url: str = field(default="", metadata={"check": _check_url})
    insecure_skip_verify: bool = False
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_cert: str = ""
    project_name: str = "default"
    profile_name: str = "default"
    network_name: str = "lxdbr0"
    storage_pool_name: str = "default"
    target: str = ""
    managed_network_assignment: str = field(default="static", metadata={"check": _one_of("static", "dhcp")})
    instance_config: dict[str, dict[str, str]] = field(default_factory=lambda: dict(DEFAULT_INSTANCE_CONFIG))
    predeploy_stemcell: bool = False
    bios_path: str = ""
    operation_timeout: str = "10m"
    container_privileged: bool = True


@dataclass(frozen=True)
class AgentOptions:
    mbus: str = ""
    ntp: list[str] = field(default_factory=list)
    blobstore: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentConfig:
    type: str = field(default="FAT32", metadata={"check": _one_of("FAT32", "CDROM")})
    label: str = "config-2"
    metadata_path: str = "ec2/latest/meta-data.json"
    userdata_path: str = "ec2/latest/user-data"
    filestore_path: str = "/var/vcap/store/agent-data"


@dataclass(frozen=True)
class ThrottleConfig:
    enabled: bool = False
    path: str = "/var/vcap/sys/run/lxd_cpi/throttle.sock"
    limit: int = field(default=4, metadata={"check": _positive})
    hold: str = "2m"


@dataclass(frozen=True)
class LibvirtConfig:
    uri: str = "qemu:///system"
    domain_type: str = field(default="kvm", metadata={"check": _one_of("kvm", "qemu")})
    storage_pool_name: str = "default"
    network_name: str = "default"
    bridge_name: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_ca_cert: str = ""
    domain_template: str = ""
    console_log_dir: str = "/var/log/boshcpi"
    machine_type: str = "pc"
    emulator: str = ""


@dataclass(frozen=True)
class Config:
    driver: str = field(default="lxd", metadata={"check": _one_of("lxd", "libvirt")})
    server: ServerConfig = field(default_factory=ServerConfig)
    agent: AgentOptions = field(default_factory=AgentOptions)
    agent_config: AgentConfig = field(default_factory=AgentConfig)
    throttle_config: ThrottleConfig = field(default_factory=ThrottleConfig)
    libvirt: LibvirtConfig = field(default_factory=LibvirtConfig)
    debug: bool = False

    @property
    def server_url(self) -> str:
        if self.server.url:
            return self.server.url
        return f"unix:///var/lib/{self.server.type}/unix.socket"

    @property
    def operation_timeout(self) -> float:
        return parse_duration(self.server.operation_timeout, "server.operation_timeout")

    @property
    def throttle_hold(self) -> float:
        return parse_duration(self.throttle_config.hold, "throttle_config.hold")


CONFIG_SECTIONS = ("driver", "server", "agent", "agent_config", "throttle_config", "libvirt", "debug")

# ---- building dataclasses from JSON with key-path errors ----------------------------------

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _coerce(annotation: str, value: Any, path: str) -> Any:
    """Check `value` against a (string) annotation of the forms used above."""
    ann = annotation.replace(" ", "")
    if ann == "str":
        if not isinstance(value, str):
            raise CpiError(f"{path}: expected a string, got {_kind(value)}")
        return value
    if ann == "bool":
        # BOSH properties rendered from ERB often arrive as "true"/"false" strings.
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise CpiError(f"{path}: expected a boolean, got {_kind(value)}")
        return value
    if ann == "int":
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise CpiError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if ann == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CpiError(f"{path}: expected a list of strings, got {_kind(value)}")
        return list(value)
    if ann == "dict[str,Any]":
        if not isinstance(value, dict):
            raise CpiError(f"{path}: expected an object, got {_kind(value)}")
        return dict(value)
    if ann == "dict[str,dict[str,str]]":
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
    raise AssertionError(f"unsupported annotation {annotation}")  # pragma: no cover


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def _build(cls: type, data: Any, path: str, base: Any = None) -> Any:
    if not isinstance(data, dict):
        raise CpiError(f"{path or 'config'}: expected an object, got {_kind(data)}")
    current = base if base is not None else cls()
    known = {f.name: f for f in fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if key not in known:
            raise CpiError(f"{key_path}: unknown key (known: {', '.join(sorted(known))})")
        f = known[key]
        default = getattr(current, key)
        if value is None:
            continue  # null means "use the default", as BOSH renders unset properties
        if is_dataclass(default):
            changes[key] = _build(type(default), value, key_path, base=default)
            continue
        value = _coerce(str(f.type), value, key_path)
        check = f.metadata.get("check")
        if check:
            check(value, key_path)
        changes[key] = value
    return replace(current, **changes)


def from_dict(data: Any, base: Config | None = None) -> Config:
    cfg = _build(Config, data, "", base=base)
    # Cross-field checks.
    if bool(cfg.server.tls_client_cert) != bool(cfg.server.tls_client_key):
        raise CpiError("server.tls_client_cert and server.tls_client_key must be given together")
    cfg.operation_timeout  # noqa: B018 - validates the duration
    cfg.throttle_hold  # noqa: B018
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
    try:
        data = json.loads(text)
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
    m = re.match(r"^[a-z][a-z0-9+.-]*://([^/@]*)@", url or "")
    if not m:
        return []
    userinfo = m.group(1)
    user, _, password = userinfo.partition(":")
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
