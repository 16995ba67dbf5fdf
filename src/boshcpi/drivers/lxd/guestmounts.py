"""A container's mounts of a persistent disk other than the daemon's own, taken down before the disk
is detached.

Why. In a container the agent mounts a disk by bind-mounting the disk device's folder
(`/warden-cpi-dev/<cid>`) onto /var/vcap/store (bosh-agent `platform/linux_platform.go:1458`
MountPersistentDisk with `BindMountPersistentDisk`, `platform/disk/linux_bind_mounter.go:11-25`), but
on `unmount_disk` it unmounts the *source* path (`linux_platform.go:1509-1524` UnmountPersistentDisk
hands `/warden-cpi-dev/<cid>` to `platform/disk/linux_mounter.go:118-132` Unmount, which runs
`umount /warden-cpi-dev/<cid>`). The bind on /var/vcap/store outlives the director's `detach_disk`
(cloudfoundry/bosh `disk_manager.rb:72-75`: unmount_disk, then detach). After a native resize or a
pool move (`disk_manager.rb:256-271` resize_disk: detach, resize, attach, mount) the agent's next
`mount_disk` finds the store taken and mounts the disk on /var/vcap/store_migration_target instead
(`linux_platform.go:1467-1479`); a second change then fails ("Device ... is already mounted to
/var/vcap/store_migration_target", `linux_mounter.go:165-180` shouldMount), and after a pool move the
store shows the deleted old volume.

What. Before the daemon removes the device, a script run in the container (POSIX sh, no tool beyond
`umount`) reads /proc/self/mountinfo and unmounts, deepest first, every mount of the disk's volume
except the daemon's own device mount (the daemon takes that down itself):
- while the device mount is still there, a mount of the same filesystem (`major:minor`) and the same
  root within it is a mount of the volume, on any storage driver;
- after the agent's `unmount_disk` it is not, and the volume is known by the name the daemon gives it
  on the host, `<project>_<volume>` under `custom` (LXD `lxd/storage/drivers/utils.go`
  GetVolumeMountPath, `lxd/project/project.go` StorageVolume; Incus the same): the mount's root ends
  in `/custom/<project>_<cid>` (btrfs subvolumes, dir pools) or its source does (ZFS datasets), or the
  source names the logical volume `custom_<project>_<cid>` (LVM, `-` doubled). A ceph RBD device
  names no volume: there only the first rule applies.
`umount` without `-l` never takes a filesystem a process still uses: the script reports such a mount
and the processes using it, and the call refuses (nothing is detached, no process is touched, no data
moves); where the agent had already unmounted the device's folder, the disk is bound back there, so
the agent sees it mounted as before its `unmount_disk` (`list_disk`, linux_platform.go:1612
IsPersistentDiskMounted). A retry once the processes are stopped succeeds.
"""

from __future__ import annotations

from boshcpi import log
from boshcpi.agent.settings import CONTAINER_DISK_ROOT
from boshcpi.drivers.lxd.client import LXDError
from boshcpi.protocol import CloudError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from boshcpi.drivers.lxd.host import LXDHost

# $1: the device's path in the container; $2, $3: the volume name and its LVM spelling.
# Output, a line per mount taken down or left: `unmounted <path>` / `busy <path> <pid>:<comm> ...`
# (and `restored <device path>` where a refusal binds the disk back where its device mounts it). It
# exits 3 where a mount is still in use.
# Mount points are as mountinfo writes them (octal escapes for blanks), and umount takes them so.
SCRIPT = r"""dev=$1 vol=$2 lvol=$3
set -f
busy=
ident=
while read -r id parent majmin root mp rest; do
  [ "$mp" = "$dev" ] && ident="$majmin $root"
done < /proc/self/mountinfo
found=
while read -r id parent majmin root mp rest; do
  [ "$mp" = "$dev" ] && continue
  src=${rest#* - }; src=${src#* }; src=${src%% *}
  hit=
  [ -n "$ident" ] && [ "$majmin $root" = "$ident" ] && hit=1
  case "$root" in */custom/*_"$vol") hit=1;; esac
  case "$src" in */custom/*_"$vol"|*custom_*_"$lvol") hit=1;; esac
  [ -n "$hit" ] && found="$mp $found"
done < /proc/self/mountinfo
for mp in $found; do
  path=$mp
  case "$mp" in *\\*) path=$(printf '%b' "$(echo "$mp" | sed 's/\\\([0-7][0-7][0-7]\)/\\0\1/g')");; esac
  if umount "$path" 2>/dev/null; then
    echo "unmounted $mp"
  else
    users=
    set +f
    for p in /proc/[0-9]*; do
      for f in "$p/cwd" "$p/root" "$p"/fd/*; do
        l=$(readlink "$f" 2>/dev/null) || continue
        case "$l" in "$path"|"$path"/*) users="$users ${p#/proc/}:$(cat "$p/comm" 2>/dev/null)"; break;; esac
      done
    done
    set -f
    echo "busy $mp$users"
    # The agent unmounted the device's folder already: bind the disk back there, so that the agent
    # (list_disk, a later unmount_disk) sees the disk as it was before the refused detach.
    if [ -z "$ident" ] && [ -d "$dev" ]; then
      mount --bind "$path" "$dev" && ident=restored && echo "restored $dev"
    fi
    busy=1
  fi
done
[ -z "$busy" ] || exit 3
"""


def release(host: LXDHost, vm_cid: str, inst: dict[str, Any], disk_cid: str, action: str) -> list[str]:
    """Take down a running container's own mounts of a disk's volume before the disk is detached
    (return: those the script reported, which it does only when one is in use). A mount still in use
    is a retryable CloudError, with the disk still attached. A container that is not running has no
    mounts; one whose shell cannot run the script keeps them (logged), as before this existed."""
    if inst.get("type") == "virtual-machine" or inst.get("status") != "Running":
        return []
    vol = disk_cid
    argv = ["sh", "-c", SCRIPT, "boshcpi-release", f"{CONTAINER_DISK_ROOT}/{disk_cid}", vol, vol.replace("-", "--")]
    try:
        # The exit status alone first (two requests): almost always nothing is in use. Where something
        # is, again with its report (the script takes down nothing twice).
        rc, out, err = host.client.run(vm_cid, argv, timeout=120, output=False)
        if rc != 0:
            rc, out, err = host.client.run(vm_cid, argv, timeout=120)
    except LXDError as e:
        log.warn(f"{action}: cannot look for mounts of {disk_cid} inside {vm_cid}: {e.message}")
        return []
    if rc not in (0, 3):
        log.warn(f"{action}: the mount check inside {vm_cid} ended with {rc}: {err.decode(errors='replace')[-300:]}")
    done, busy = [], []
    for line in out.decode(errors="replace").splitlines():
        word, _, rest = line.partition(" ")
        if word == "unmounted":
            done.append(rest)
        elif word == "busy":
            busy.append(rest)
    if done:
        log.info(f"{action}: unmounted {', '.join(done)} inside {vm_cid} (mounts of {disk_cid} its agent left)")
    if busy:
        uses = []
        for entry in busy:
            path, _, users = entry.partition(" ")
            uses.append(f"{path} (processes: {users or 'none found'})")
        raise CloudError(
            f"{action}: disk {disk_cid} is still in use inside {vm_cid}: {'; '.join(uses)}. Nothing was detached; "
            "stop what uses the disk (the director stops the jobs and has the agent unmount it first) and retry",
            ok_to_retry=True,
        )
    return done
