"""The LXD/Incus Cloud: stemcells, VMs and system containers, networks, agent settings, disks.

Instance kind follows the stemcell: a VM image makes a virtual machine (agent settings on a config
drive), a warden-style image makes a privileged system container (settings pushed as a file).
VMs made by the Go CPI (`config`/`ephemeral`/`persistent-N` devices) are read and changed in their own
layout.
"""

from __future__ import annotations

from boshcpi import ids, log
from boshcpi.cloud import Cloud, parse_vm_size
from boshcpi.drivers.lxd import STEMCELL_FORMATS, naming
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.drivers.lxd.host import LXDHost
from boshcpi.protocol import BoshError, CpiError, VMCreationFailed, VMNotFound

# Modules only some methods need are imported there: has_vm and info load as little as possible.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.cloud import DiskSpec, StemcellSpec, VMSpec
    from boshcpi.config import Config
    from boshcpi.protocol import Request


class LXDCloud(Cloud):
    stemcell_formats = STEMCELL_FORMATS

    def __init__(self, cfg: Config, request: Request | None = None) -> None:
        self.cfg = cfg
        self.request = request
        self.host = LXDHost(cfg)

    @property
    def client(self) -> Any:
        return self.host.client

    @property
    def pool(self) -> str:
        return self.host.pool

    def close(self) -> None:
        self.host.close()

    def recognises(self, kind: str, cid: str) -> bool:
        if kind == "vm":
            return ids.is_vm_cid(cid)
        if kind == "stemcell":
            return ids.has_uuid_after(cid, ids.STEMCELL_PREFIX)
        if kind == "disk":
            return naming.is_disk_cid(cid)
        if kind == "snapshot":
            return naming.split_snapshot_cid(cid) is not None
        return False

    # ---- stemcells -------------------------------------------------------------------------
    def create_stemcell(self, spec: StemcellSpec) -> str:
        from boshcpi.drivers.lxd import images, imageupload
        from boshcpi.faults import fail_point

        with mapped("create_stemcell"):
            fingerprint = imageupload.upload(self.client, spec, self.cfg.operation_timeout, self.cfg.max_stemcell_image)
            if self.cfg.server.predeploy_stemcell:
                images.predeploy(self.host, fingerprint)  # before the alias: a failure leaves no stemcell
            fail_point("alias")
            cid = images.create_alias(self.client, fingerprint, spec)
        log.info(f"stemcell {cid} -> image {fingerprint[:12]}")
        return cid

    def delete_stemcell(self, stemcell_cid: str) -> None:
        from boshcpi.drivers.lxd import images

        images.delete(self.client, stemcell_cid)

    # ---- instances -------------------------------------------------------------------------
    def instance(self, vm_cid: str, action: str) -> tuple[dict[str, Any], str]:
        return self.host.owned_instance(vm_cid, action)

    def has_vm(self, vm_cid: str) -> bool:
        with mapped("has_vm"):
            return self.host.is_owned(self.host.find_instance(vm_cid, "has_vm"))

    def create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        lock = self.cfg.server.create_vm_lock
        if lock.enabled:
            from boshcpi.config import parse_duration
            from boshcpi.throttle.filelock import FileLock

            with FileLock(lock.path, parse_duration(lock.timeout, "server.create_vm_lock.timeout")):
                return self._create_vm(spec)
        return self._create_vm(spec)

    def _create_vm(self, spec: VMSpec) -> tuple[str, dict[str, Any]]:
        """Read, plan, apply (vmfacts, vmplan, vmapply). Bad input is refused before the daemon
        hears of anything; a failure past that undoes what was made and is a VMCreationFailed."""
        from boshcpi.drivers.lxd import vmapply, vmfacts, vmplan

        size = parse_vm_size(spec.cloud_properties)
        vmfacts.check_input(self.host, spec)
        vm = vmfacts.stemcell(self.host, spec, size)
        try:
            facts = vmfacts.read(self.host, spec, vm)
            plan = vmplan.plan(self.cfg, spec, size, facts, ids.new_vm_cid(), ids.random_mac)
            vmapply.apply(self.host, plan)
        except (VMCreationFailed, CpiError):
            raise
        except BaseException as e:
            if isinstance(e, LXDError):
                e = to_bosh(e, "create_vm")
            if isinstance(e, BoshError):
                msg = e.message if e.message.startswith("create_vm") else f"create_vm: {e.message}"
                raise VMCreationFailed(msg, ok_to_retry=e.ok_to_retry) from None
            if isinstance(e, Exception):
                raise VMCreationFailed(f"create_vm: {type(e).__name__}: {e}", ok_to_retry=False) from None
            raise
        log.info(f"created {'VM' if plan.is_vm else 'container'} {plan.vm_cid} from {spec.stemcell_cid}")
        return plan.vm_cid, plan.networks

    def delete_vm(self, vm_cid: str) -> None:
        from boshcpi.drivers.lxd import instances

        with mapped(f"delete_vm {vm_cid}"):
            inst = self.host.find_instance(vm_cid)
            if inst is not None and not self.host.is_owned(inst):
                log.warn(f"delete_vm: {vm_cid} is not a VM made by boshcpi or the Go LXD CPI; leaving it alone")
                return
            if inst is None:
                log.info(f"VM {vm_cid} is already gone")
                instances.delete_owned(self.host, vm_cid, inst)
            else:
                # Ephemeral and config volumes go with the VM; persistent disks stay (only detached).
                # A killed delete_vm's stop may still run: its retry waits for it (delete_settled).
                instances.delete_settled(self.host, vm_cid, inst)
            if inst is not None and inst.get("type") == "virtual-machine":
                from boshcpi.drivers.lxd import settingsio

                settingsio.forget_go_filestore(self.host, vm_cid)

    def reboot_vm(self, vm_cid: str) -> None:
        inst, _ = self.instance(vm_cid, "reboot_vm")
        if inst.get("type") == "container" and inst.get("status") == "Running":
            from boshcpi.drivers.lxd import settingsio

            # A container made by an older boshcpi gets its boot hook now; the reboot goes on without.
            try:
                settingsio.write_boot_hook(self.host, vm_cid)
            except LXDError as e:
                log.warn(f"reboot_vm: cannot write the boot hook into {vm_cid}: {e.message}")
        with mapped("reboot_vm", not_found=VMNotFound(f"reboot_vm: VM {vm_cid} not found")):
            self.host.change_state(vm_cid, "restart")

    def set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        self.instance(vm_cid, "set_vm_metadata")  # VMNotFound before any lock
        with self.host.lock(vm_cid, "set_vm_metadata"):
            self._set_vm_metadata(vm_cid, metadata)

    def _set_vm_metadata(self, vm_cid: str, metadata: dict[str, str]) -> None:
        inst, etag = self.instance(vm_cid, "set_vm_metadata")
        config = dict(inst.get("config") or {})
        for key, value in metadata.items():
            config[naming.metadata_config_key(key)] = value
        inst["config"] = config
        parts = [metadata.get(k, "") for k in ("deployment", "job", "index")]
        if metadata.get("name"):
            inst["description"] = f"{metadata.get('deployment', '')}/{metadata['name']}".strip("/")[:255]
        elif any(parts):
            inst["description"] = "/".join(p for p in parts if p)[:255]
        self.host.put_instance(vm_cid, inst, etag, "set_vm_metadata")

    # ---- disks -----------------------------------------------------------------------------
    def create_disk(self, spec: DiskSpec) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.create(self.host, spec)

    def delete_disk(self, disk_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.delete(self.host, disk_cid)

    def has_disk(self, disk_cid: str) -> bool:
        from boshcpi.drivers.lxd import disks

        return disks.exists(self.host, disk_cid)

    def attach_disk(self, vm_cid: str, disk_cid: str) -> Any:
        from boshcpi.drivers.lxd import disks

        return disks.attach(self.host, vm_cid, disk_cid)

    def detach_disk(self, vm_cid: str, disk_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.detach(self.host, vm_cid, disk_cid)

    def get_disks(self, vm_cid: str) -> list[str]:
        from boshcpi.drivers.lxd import disks

        return disks.attached(self.host, vm_cid)

    def resize_disk(self, disk_cid: str, new_size_mb: int) -> None:
        from boshcpi.drivers.lxd import disks

        disks.resize(self.host, disk_cid, new_size_mb)

    def update_disk(self, disk_cid: str, new_size_mb: int, cloud_properties: dict[str, Any]) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.update(self.host, disk_cid, new_size_mb, cloud_properties)

    def snapshot_disk(self, disk_cid: str, metadata: dict[str, Any]) -> str:
        from boshcpi.drivers.lxd import disks

        return disks.snapshot(self.host, disk_cid, metadata)

    def delete_snapshot(self, snapshot_cid: str) -> None:
        from boshcpi.drivers.lxd import disks

        disks.delete_snapshot(self.host, snapshot_cid)

    def set_disk_metadata(self, disk_cid: str, metadata: dict[str, Any]) -> None:
        from boshcpi.drivers.lxd import disks

        disks.set_metadata(self.host, disk_cid, metadata)
