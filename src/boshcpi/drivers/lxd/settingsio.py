"""Where an instance's agent settings live, and how they are read back and rewritten.

- Containers: the file `/var/vcap/bosh/warden-cpi-agent-env.json`, pushed before start (the warden
  stemcell's agent reads it through a `File` settings source).
- VMs: a config drive (`agent_config.type`: ISO9660 "CDROM" or FAT32, label `config-2`) attached as a
  disk device. Where the daemon has `iso` custom volumes (API extension `custom_volume_iso`: LXD 5.16+,
  Incus) a CDROM drive is one, so it is a SCSI CD-ROM in the guest and takes no sd letter. An `iso`
  volume cannot be backed up (so never read back through the API): boshcpi keeps a block copy of the
  same image, `<volume>-b`, unattached, for reading. Elsewhere the drive is a block volume imported
  through the custom-volume backup API and read back the same way.
- VMs made by the Go CPI: their `config` device is an `iso` volume and the Go CPI kept the settings in
  `<agent_config.filestore_path>/<vm cid>.json` on the director; that file is read as it is.
"""

from __future__ import annotations

import os

from boshcpi import fastjson, log
from boshcpi.agent import settings as agent_settings
from boshcpi.drivers.lxd import naming
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.drivers.lxd.host import META, instance_path, now
from boshcpi.protocol import CloudError, VMNotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.lxd.host import LXDHost

COPY_SUFFIX = "-b"


def config_device(inst: dict[str, Any]) -> str | None:
    """The name of a VM's config drive device (boshcpi's `metadata`, the Go CPI's `config`, boshcpi
    0.1's `cfg`)."""
    devices = inst.get("devices") or {}
    return next((n for n in naming.CONFIG_DEVICES if (devices.get(n) or {}).get("type") == "disk"), None)


def uses_iso(host: LXDHost) -> bool:
    return host.cfg.agent_config.type == "CDROM" and host.client.has_extension("custom_volume_iso")


def write_config_volume(host: LXDHost, vm_cid: str, settings: dict[str, Any], target: str = "", name: str = "") -> str:
    """Make a new config drive volume for a VM (and its readable copy where it is an `iso`), named
    `name` or else afresh (naming.config_volume)."""
    from boshcpi.agent import configdisk
    from boshcpi.drivers.lxd import volumes

    ac = host.cfg.agent_config
    image = configdisk.build(
        settings,
        kind=ac.type,
        label=ac.label,
        userdata_path=ac.userdata_path,
        metadata_path=ac.metadata_path,
        filename=ac.filename,
        public_key=ac.public_key,
    )
    name = name or naming.config_volume(vm_cid)
    marks = {META + "kind": "config", META + "vm": vm_cid, META + "created": now()}
    with mapped("write config volume"):
        if uses_iso(host):
            volumes.import_block(
                host.client, host.pool, name + COPY_SUFFIX, image, {**marks, META + "kind": "config-copy"}, target
            )
            try:
                volumes.import_iso(host.client, host.pool, name, image, f"boshcpi config drive of {vm_cid}", target)
            except BaseException:
                host.delete_volume(name + COPY_SUFFIX)
                raise
        else:
            volumes.import_block(host.client, host.pool, name, image, marks, target)
    return name


def config_drive_device(host: LXDHost, name: str) -> dict[str, str]:
    """The instance device of a config drive. A block drive (FAT32, or no `iso` volumes) is attached
    read-only: root in the guest could otherwise plant a drive that the next settings read chokes on
    (an `iso` volume is a CD-ROM, read-only by nature)."""
    return drive_device(host.pool, name, uses_iso(host))


def drive_device(pool: str, name: str, iso: bool) -> dict[str, str]:
    """config_drive_device, from what it depends on."""
    dev = {"type": "disk", "pool": pool, "source": name}
    if not iso:
        dev["readonly"] = "true"
    return dev


def delete_config_volume(host: LXDHost, name: str) -> bool:
    """Delete a config drive and its readable copy; False if the drive is still in use."""
    if not host.delete_volume(name):
        return host.find_volume(name) is None
    host.delete_volume(name + COPY_SUFFIX)
    return True


def read(host: LXDHost, vm_cid: str, inst: dict[str, Any]) -> dict[str, Any]:
    """The settings the instance's agent reads now."""
    if inst.get("type") != "virtual-machine":
        with mapped("read agent settings", not_found=VMNotFound(f"VM {vm_cid} not found")):
            raw = host.client.pull_file(vm_cid, agent_settings.CONTAINER_SETTINGS_PATH)
        return fastjson.loads(raw)
    from boshcpi.agent import configdisk
    from boshcpi.drivers.lxd import volumes

    device = config_device(inst)
    if device is None:
        raise CloudError(f"VM {vm_cid} has no config drive device")
    dev = inst["devices"][device]
    pool, source = dev.get("pool") or host.pool, dev.get("source", "")
    with mapped("read config drive"):
        vol = host.find_volume(source, pool)
        if vol is None:
            raise CloudError(f"VM {vm_cid}: its config drive {source} is missing")
        readable = source
        if vol.get("content_type") == "iso":
            readable = source + COPY_SUFFIX
            if host.find_volume(readable, pool) is None:
                return _read_filestore(host, vm_cid, source)
        image = volumes.export_block(host.client, pool, readable)
    return configdisk.read_settings(image, userdata_path=host.cfg.agent_config.userdata_path)


def _read_filestore(host: LXDHost, vm_cid: str, source: str) -> dict[str, Any]:
    """A Go-CPI VM: its `iso` config drive cannot be read through the API; the Go CPI's own copy of the
    settings is `<filestore_path>/<vm cid>.json` (a2geek/bosh-lxd-cpi-release src/agentmgr
    agent_file_manager.go), on the director's persistent disk where this CPI now runs."""
    path = os.path.join(host.cfg.agent_config.filestore_path, vm_cid + ".json")
    try:
        with open(path, "rb") as fh:
            return fastjson.loads(fh.read())
    except OSError as e:
        raise CloudError(
            f"VM {vm_cid}: its config drive {source} is an iso volume, which the API cannot read back, and the "
            f"Go CPI's copy of its settings ({path}) cannot be read: {e.strerror}. Recreate the VM "
            "(bosh recreate) to move it to boshcpi's layout"
        ) from None
    except ValueError:
        raise CloudError(f"VM {vm_cid}: {path} holds no valid settings JSON") from None


def write(host: LXDHost, vm_cid: str, settings: dict[str, Any], kind: str = "") -> None:
    """Give a running or stopped instance new settings (a VM's agent reads them at its next boot).
    `kind` (the instance's type, when the caller just read it) saves a GET for a container."""
    if kind == "container":
        with mapped("write agent settings"):
            write_container_file(host, vm_cid, settings)
        return
    inst, etag = host.instance(vm_cid, "write settings")
    if inst.get("type") != "virtual-machine":
        with mapped("write agent settings"):
            write_container_file(host, vm_cid, settings)
        return
    device = config_device(inst) or naming.CONFIG_DEVICE
    old = (inst.get("devices") or {}).get(device, {}).get("source")
    new = write_config_volume(host, vm_cid, settings, target=_location(inst))
    try:
        inst.setdefault("devices", {})[device] = config_drive_device(host, new)
        host.put_instance(vm_cid, inst, etag, "write settings")
    except BaseException:
        delete_config_volume(host, new)
        raise
    if old and not delete_config_volume(host, old):
        # A running VM may keep the old drive busy until it reboots: `cleanup` removes it later.
        log.info(f"config drive {old} is still in use; cleanup removes it once it is free")
    forget_go_filestore(host, vm_cid)


def forget_go_filestore(host: LXDHost, vm_cid: str) -> None:
    """Once boshcpi wrote a VM's settings, the Go CPI's copy is stale: remove it so nothing reads it."""
    path = os.path.join(host.cfg.agent_config.filestore_path, vm_cid + ".json")
    try:
        os.unlink(path)
        log.info(f"removed the Go CPI's settings copy {path}: the VM's config drive holds them now")
    except OSError:
        pass


def _location(inst: dict[str, Any]) -> str:
    loc = inst.get("location") or ""
    return "" if loc == "none" else loc


def write_container_file(host: LXDHost, vm_cid: str, settings: dict[str, Any], attempts: int = 4) -> None:
    _push(host, vm_cid, agent_settings.CONTAINER_SETTINGS_PATH, agent_settings.dumps(settings), 0o600, attempts)


def write_boot_hook(host: LXDHost, vm_cid: str, attempts: int = 4) -> None:
    """The container's boot hook, run before its agent starts (boshcpi.agent.containerboot): the
    persistent disk back on /var/vcap/store, no lxcfs /proc/uptime for monit, and monit held back
    until the agent starts it. Only where systemd's unit folder exists: a stemcell without systemd
    keeps the agent's own behaviour. Raises LXDError."""
    from boshcpi.agent import containerboot

    try:
        host.client.make_dir(vm_cid, containerboot.AGENT_UNIT_DROPIN_DIR)
    except LXDError as e:
        if e.status not in (404, 500) or "forkfile" in e.message or e.unreachable:
            raise
        log.warn(f"{vm_cid} has no /etc/systemd/system: no boot hook (persistent disk remount, uptime)")
        return
    _push(host, vm_cid, containerboot.DROPIN_PATH, containerboot.DROPIN.encode(), 0o644, attempts)
    host.client.make_dir(vm_cid, containerboot.MONIT_DROPIN_DIR)
    _push(host, vm_cid, containerboot.MONIT_DROPIN_PATH, containerboot.MONIT_DROPIN.encode(), 0o644, attempts)


def _push(host: LXDHost, vm_cid: str, path: str, data: bytes, mode: int, attempts: int) -> None:
    for attempt in range(1, attempts + 1):
        try:
            try:
                host.client.push_file(vm_cid, path, data, mode=mode)
                return
            except LXDError as e:
                # Stemcells have /var/vcap/bosh; a bare root filesystem may not.
                if e.status not in (404, 500) or "forkfile" in e.message:
                    raise
            parent = ""
            for part in os.path.dirname(path).strip("/").split("/"):
                parent += "/" + part
                host.client.make_dir(vm_cid, parent)
            host.client.push_file(vm_cid, path, data, mode=mode)
            return
        except LXDError as e:
            transient = "forkfile" in e.message or e.unreachable
            if not transient or attempt == attempts:
                raise
            log.warn(f"write {path}: {e.message}; retrying")
            import time

            time.sleep(0.25 * attempt)


def settings_then_start(host: LXDHost, vm_cid: str, settings: dict[str, Any], start: Any) -> None:
    """Push the settings file into the stopped container, then start it. LXD 5.0's file API on stopped
    containers goes through a helper (forkfile) that fails now and then when many instances are created
    at once, and then keeps failing for that instance; the file API of a running container does not.
    So on that failure: start, push, and restart, so the agent still boots with its settings."""
    from boshcpi.faults import fail_point

    try:
        fail_point("forkfile", lambda: LXDError(500, "injected: dial unix forkfile.sock: no such file or directory"))
        write_container_file(host, vm_cid, settings, attempts=1)
        write_boot_hook(host, vm_cid, attempts=1)
    except LXDError as e:
        if "forkfile" not in e.message:
            raise to_bosh(e, "write agent settings") from None
        log.warn(f"write agent settings into the stopped container failed ({e.message}); writing it running")
        start(vm_cid)
        try:
            write_container_file(host, vm_cid, settings)
            write_boot_hook(host, vm_cid)
        except LXDError as e2:
            raise to_bosh(e2, "write agent settings") from None
        with mapped("restart after writing settings"):
            host.client.request(
                "PUT", instance_path(vm_cid) + "/state", {"action": "restart", "timeout": 30, "force": True}
            )
        return
    fail_point("start")
    start(vm_cid)
