"""What a system container needs at every boot: its persistent disk where its agent left it, and a
/proc/uptime that monit can compute process uptimes from.

**The persistent disk.**

A warden-style stemcell's agent (agent.json `BindMountPersistentDisk`, `UsePreformattedPersistentDisk`)
bind-mounts the disk's folder (`/warden-cpi-dev/<disk cid>`, a disk device the daemon mounts) onto
/var/vcap/store when the director says `mount_disk`. At boot it mounts the last disk it mounted again
only if `sfdisk -d <path>` shows a partition table (cloudfoundry/bosh-agent agent/bootstrap.go
mountLastMountedDisk, platform/linux_platform.go IsPersistentDiskMountable), which a folder never
has. So after a reboot, a daemon restart that restarts the container, or a host power loss, the store
would stay unmounted, and the jobs that monit starts right after (bootstrap.go StartMonit) would
write to the container's root filesystem instead.

The fix does at boot what the agent does on `mount_disk`, just before the agent starts: a drop-in
for the stemcell's agent unit (bosh-linux-stemcell-builder stages/bosh_go_agent/assets/
bosh-agent.service) with one `ExecStartPre`. It reads the cid the agent itself recorded
(/var/vcap/bosh/managed_disk_settings.json, written by MountPersistentDisk), and bind-mounts that
disk's folder onto /var/vcap/store only if the folder is a mount point (the disk is still attached)
and the store is not mounted yet. The `-` prefix: a failure never keeps the agent from starting.

**monit waits for the agent** (MONIT_DROPIN below): at boot monit starts only when the agent starts
it, after it has mounted its run folder and the disk is back.

**Process uptimes under lxcfs.** On a host running lxcfs (a normal LXD or Incus host) a container's
/proc/uptime is the container's age (lxcfs src/proc_fuse.c proc_uptime_read), while a process's start
time in /proc/<pid>/stat counts from the host's boot. The stemcell's monit 5.2.5 takes boot time as
now minus /proc/uptime (process/sysdep_LINUX.c get_starttime), so every process uptime it reports
is short by the host's uptime at the container's start: negative, and `bosh vms` fails to parse
it (the 2019 container CPI's README). Debian's monit 5.33 reads /proc/uptime the same way (its
020_enable-hurd.patch). So the hook unmounts lxcfs's /proc/uptime (the mount hook puts it back at
every start); the agent's own vitals uptime comes from sysinfo(2) either way (gosigar
sigar_linux.go), and lxcfs's meminfo, cpuinfo, stat and loadavg stay.
"""

from __future__ import annotations

from boshcpi.agent.settings import CONTAINER_DISK_ROOT

AGENT_UNIT_DROPIN_DIR = "/etc/systemd/system/bosh-agent.service.d"
DROPIN_PATH = AGENT_UNIT_DROPIN_DIR + "/50-boshcpi-persistent-disk.conf"
STORE = "/var/vcap/store"
MANAGED_DISK_FILE = "/var/vcap/bosh/managed_disk_settings.json"

# systemd unit syntax: `$$` is a literal `$` for the shell; no `%` (a specifier) appears.
_SCRIPT = (
    f"cid=$$(cat {MANAGED_DISK_FILE} 2>/dev/null) || exit 0; "
    'case "$$cid" in ""|*[!A-Za-z0-9._-]*) exit 0;; esac; '
    f"src={CONTAINER_DISK_ROOT}/$$cid; "
    'mountpoint -q "$$src" || exit 0; '
    f"mountpoint -q {STORE} && exit 0; "
    f'mkdir -p {STORE} && mount --bind "$$src" {STORE}'
)

_UPTIME = "grep -qs ' /proc/uptime fuse.lxcfs ' /proc/self/mounts && umount /proc/uptime || true"

DROPIN = f"""# Written by boshcpi (create_vm, attach_disk, reboot_vm), run before the agent starts monit:
# - mount the persistent disk the agent mounted last onto {STORE} (the agent does this itself only
#   for partitioned block devices; a container's disk is a folder);
# - unmount lxcfs's /proc/uptime, from which monit would compute negative process uptimes.
[Service]
ExecStartPre=-/bin/sh -c '{_SCRIPT}'
ExecStartPre=-/bin/sh -c "{_UPTIME}"
"""

# monit only once the agent starts it. The stemcell's monit unit is enabled at boot, held back on a VM
# by `ConditionPathExists=/var/vcap/data/sys/run` (bosh-linux-stemcell-builder
# stemcell_builder/stages/bosh_monit/assets/monit.service): that folder is on the ephemeral disk, which
# only the agent mounts. A container's ephemeral disk is mounted by the daemon and keeps the folder
# across reboots, so monit would start the jobs at boot, before the agent mounts its tmpfs over that
# folder (bosh-agent platform/linux_platform.go setupRunDir) and before the persistent disk is back:
# jobs without their data, then each started a second time once their pidfiles vanish under the tmpfs.
# With the tmpfs as the condition, monit waits for the agent (bootstrap.go StartMonit, `systemctl start`).
MONIT_DROPIN_DIR = "/etc/systemd/system/monit.service.d"
MONIT_DROPIN_PATH = MONIT_DROPIN_DIR + "/50-boshcpi-agent-first.conf"
MONIT_DROPIN = """# Written by boshcpi: monit starts when the bosh agent starts it, once the agent has mounted its
# run folder (and the persistent disk is back), never on its own at boot.
[Unit]
ConditionPathIsMountPoint=/var/vcap/data/sys/run
"""
