"""The agent settings model: what a BOSH agent reads at boot (bosh-cpi-go's AgentEnv, as JSON).

Shared by every driver. The settings hold secrets (mbus and blobstore credentials): they go only
into the config disk or the container's settings file, never into instance config keys.
"""

from __future__ import annotations

from boshcpi import fastjson

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import VMSpec
    from boshcpi.config import Config


def _clone(value: Any) -> Any:
    return fastjson.loads(fastjson.dumps(value))


# Where warden-style stemcells' agents read their settings, and where persistent disks appear.
CONTAINER_SETTINGS_PATH = "/var/vcap/bosh/warden-cpi-agent-env.json"
CONTAINER_DISK_ROOT = "/warden-cpi-dev"


def build(
    *,
    agent_id: str,
    vm_cid: str,
    networks: dict[str, dict[str, Any]],
    env: dict[str, Any],
    mbus: str,
    ntp: list[str],
    blobstore: dict[str, Any] | None,
    system_disk: Any,
    ephemeral_disk: Any,
    persistent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "agent_id": agent_id,
        "vm": {"name": vm_cid, "id": vm_cid},
        "mbus": mbus,
        "ntp": list(ntp),
        "networks": networks,
        "disks": {"system": system_disk, "ephemeral": ephemeral_disk, "persistent": dict(persistent or {})},
        "env": env,
    }
    if blobstore:
        settings["blobstore"] = blobstore
    return settings


def for_new_vm(
    cfg: Config, spec: VMSpec, vm_cid: str, networks: dict[str, dict[str, Any]], system_disk: Any, ephemeral_disk: Any
) -> dict[str, Any]:
    """The settings of a VM create_vm makes: the request's agent and env, cpi.json's mbus, NTP and
    blobstore, no persistent disk yet."""
    return build(
        agent_id=spec.agent_id,
        vm_cid=vm_cid,
        networks=networks,
        env=spec.env,
        mbus=cfg.agent.mbus,
        ntp=cfg.agent.ntp,
        blobstore=cfg.agent.blobstore,
        system_disk=system_disk,
        ephemeral_disk=ephemeral_disk,
    )


def network_entry(raw: dict[str, Any], mac: str, preconfigured: bool) -> dict[str, Any]:
    """The director's network entry plus the MAC the CPI chose, in the agent's shape."""
    entry = _clone(raw)
    entry.setdefault("type", "manual")
    entry.setdefault("default", [])
    entry.setdefault("dns", [])
    entry.setdefault("routes", [])
    entry["mac"] = mac
    entry["preconfigured"] = preconfigured
    return entry


def persistent(settings: dict[str, Any]) -> dict[str, Any]:
    """The persistent disk hints (the Go CPIs write `"persistent": null` when there are none)."""
    return (settings.get("disks") or {}).get("persistent") or {}


def _with_persistent(settings: dict[str, Any]) -> dict[str, Any]:
    out = _clone(settings)
    disks = out.get("disks") or {}
    disks["persistent"] = dict(disks.get("persistent") or {})
    out["disks"] = disks
    return out


def attach_persistent(settings: dict[str, Any], disk_cid: str, hint: Any) -> dict[str, Any]:
    out = _with_persistent(settings)
    out["disks"]["persistent"][disk_cid] = hint
    return out


def detach_persistent(settings: dict[str, Any], disk_cid: str) -> dict[str, Any]:
    out = _with_persistent(settings)
    out["disks"]["persistent"].pop(disk_cid, None)
    return out


def dumps(settings: dict[str, Any]) -> bytes:
    return fastjson.dumps(settings, sort_keys=True, separators=(",", ":")).encode()


def metadata(vm_cid: str, public_key: str = "") -> bytes:
    """The small meta-data document that sits beside user-data on the config drive; an SSH key goes
    where the agent's config drive source reads it (`public-keys.0.openssh-key`)."""
    keys = {"0": {"openssh-key": public_key}} if public_key else {}
    return fastjson.dumps({"instance-id": vm_cid, "hostname": vm_cid, "public-keys": keys}, sort_keys=True).encode()
