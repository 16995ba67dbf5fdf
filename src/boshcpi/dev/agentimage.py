"""Stemcells that run the real bosh-agent, built from Debian packages and the agent binary the tests
are given (`$BOSH_AGENT_BIN`, `bosh-agent` on PATH, or `../shared/tools/bosh-agent`):

- `container_stemcell`: a warden-style stemcell (root filesystem tarball) whose agent reads
  `/var/vcap/bosh/warden-cpi-agent-env.json` (bosh-linux-stemcell-builder stages/base_warden), for
  `bosh create-env` on LXD and Incus;
- `vm_stemcell`: an OpenStack-style stemcell (`root.img`, qcow2: an MBR with a FAT boot partition
  holding syslinux, the Debian kernel and its initramfs, and an ext4 root), whose agent reads its
  settings from the `config-2` config drive and resolves disks the `virtio` way
  (stages/bosh_openstack_agent_settings), for the libvirt tests under TCG.

The guest carries what a real stemcell gives the agent: a `vcap` user, the groups `bosh_sshers`,
`bosh_sudoers` and `syslog`, the scripts `/var/vcap/bosh/bin/{bosh-start-logging-and-auditing,
restart_networking,sync-time}`, and a `monit` the agent can talk to: a small HTTP server on
127.0.0.1:2822 answering `/_status2?format=xml` with no services and an `incarnation` that changes on
every restart, which is how the agent sees monit reload (cloudfoundry/bosh-agent
jobsupervisor/monit). Builds are cached by the content of everything that goes in. The files the
guest carries are in guestfiles.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

from boshcpi.dev import stemcells
from boshcpi.dev.guestfiles import (
    DISK_REPORT,
    FAKE_MONIT,
    MONIT_CLI,
    MONIT_CSRF_PROXY,
    OPENSTACK_AGENT,
    REAL_MONIT_CLI,
    REAL_MONIT_UNITS,
    REAL_MONITRC,
    SCRIPTS,
    UNITS,
    WARDEN_AGENT,
)

PACKAGES = (
    "systemd-sysv",
    "udev",
    "kmod",
    "iproute2",
    "isc-dhcp-client",
    "procps",
    "ca-certificates",
    "e2fsprogs",
    "fdisk",
    "parted",
    "python3-minimal",
    "dbus",
    "systemd-resolved",
    "iputils-arping",
    "linux-image-amd64",
)
# What a stock BOSH stemcell has for compiling packages, under Debian's names (all of them exist in
# bookworm): the build tools and -dev packages of ../shared/reference/stemcell-packages.md, from
# cloudfoundry/bosh-linux-stemcell-builder bosh-stemcell/spec/assets/dpkg-list-ubuntu-jammy.txt. A
# release's packages compile in a guest with these and nothing more, or they fail there as they would
# on a director. `runit` (chpst) is on the stemcell too; `monit` is Debian's, standing in for the
# stemcell's own build (see REAL_MONIT below).
STEMCELL_BUILD_PACKAGES = (
    "build-essential", "gcc", "make", "autoconf", "automake", "libtool", "bison", "flex", "cmake", "patch",
    "perl", "python3", "curl", "wget", "xz-utils", "bzip2", "gzip", "unzip", "zip", "file", "rsync", "openssl",
    "xfsprogs", "gdisk", "runit",
    "autotools-dev", "dpkg-dev", "libbz2-dev", "libc6-dev", "libcap-dev", "libcrypt-dev", "libcurl4-openssl-dev",
    "libgcrypt20-dev", "libgpg-error-dev", "libicu-dev", "libncurses-dev", "libreadline-dev", "libssl-dev",
    "libxml2-dev", "libxslt1-dev", "linux-libc-dev", "uuid-dev", "zlib1g-dev",
    "libncurses5-dev", "libnsl-dev", "libtirpc-dev",
    "monit",
)  # fmt: skip
# What no stemcell has (the reference file's list): a guest holding any of these is not stemcell-like.
NOT_ON_A_STEMCELL = (
    "liblzma-dev", "libffi-dev", "libsqlite3-dev", "libgdbm-dev", "tk-dev", "pkg-config", "pkgconf", "git",
    "libvirt0", "libvirt-dev", "libvirt-clients", "qemu-utils", "genisoimage", "xorriso", "mtools", "dosfstools",
)  # fmt: skip
CACHE = Path(os.environ.get("BOSHCPI_IMAGE_CACHE", "/var/lib/boshcpi-dev/cache"))
ROOT_LABEL = "bosh-root"

# Kernel modules a VM guest needs (everything else is pruned from the root filesystem).
KEEP_MODULES = (
    "kernel/drivers/virtio",
    "kernel/drivers/block",
    "kernel/drivers/scsi",
    "kernel/drivers/cdrom",
    "kernel/drivers/ata",
    "kernel/drivers/char/hw_random",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/failover.ko",
    "kernel/fs/ext4",
    "kernel/fs/jbd2",
    "kernel/fs/mbcache.ko",
    "kernel/fs/fat",
    "kernel/fs/isofs",
    "kernel/fs/nls",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch",
)


def _mirror() -> str:
    try:
        for line in Path("/etc/apt/sources.list.d/debian.sources").read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    except OSError:
        pass
    for line in Path("/etc/apt/sources.list").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and parts[2] == "bookworm":
            return parts[1]
    raise RuntimeError("cannot find the Debian mirror (debian.sources / sources.list)")


def _key(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
    return h.hexdigest()[:12]


VM_PACKAGES = ("cloud-guest-utils",)


def base_rootfs(extra: tuple[str, ...] = ()) -> Path:
    """A debootstrap'ed Debian 12 (minbase + PACKAGES + `extra`), cached as a tarball."""
    CACHE.mkdir(parents=True, exist_ok=True)
    packages = PACKAGES + extra
    out = CACHE / f"agent-base-{_key(*packages)}.tar"
    if out.exists():
        return out
    work = CACHE / f"agent-base.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        proc = subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(packages),
                "bookworm",
                str(work),
                _mirror(),
            ],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"debootstrap failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if extra == STEMCELL_BUILD_PACKAGES:
            _check_stemcell_like(work)
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "var/cache/apt/archives"):
            shutil.rmtree(work / junk, ignore_errors=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(tmp), "."], check=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def installed_packages(root: Path) -> set[str]:
    """The packages dpkg has installed in a root filesystem (names without the architecture)."""
    proc = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {line.split()[0] for line in proc.stdout.splitlines() if line.split()[1:2] == ["ii"]}


def _check_stemcell_like(root: Path) -> None:
    have = installed_packages(root)
    missing = sorted(set(STEMCELL_BUILD_PACKAGES) - have)
    extra = sorted(set(NOT_ON_A_STEMCELL) & have)
    if missing or extra:
        raise RuntimeError(f"the stemcell-like guest is not: missing {missing}, has what no stemcell has {extra}")


def _write(root: Path, rel: str, text: str | bytes, mode: int = 0o644) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    os.chmod(path, mode)


def _add_user(root: Path) -> None:
    """vcap (uid 1000) and the groups the agent and its ssh action use."""
    groups = (root / "etc/group").read_text()
    taken = {int(line.split(":")[2]) for line in groups.splitlines() if line.count(":") >= 3}
    for name, gid in (("vcap", 1000), ("syslog", 1003), ("bosh_sshers", 1001), ("bosh_sudoers", 1002)):
        if f"\n{name}:" not in "\n" + groups:
            assert gid not in taken, f"gid {gid} is taken in the base image"
            groups += f"{name}:x:{gid}:\n"
    (root / "etc/group").write_text(groups)
    passwd = (root / "etc/passwd").read_text()
    if "\nvcap:" not in "\n" + passwd:
        passwd += "vcap:x:1000:1000:BOSH System User:/home/vcap:/bin/bash\n"
        (root / "etc/passwd").write_text(passwd)
        with open(root / "etc/shadow", "a") as fh:
            fh.write("vcap:*:19000:0:99999:7:::\n")
    (root / "home/vcap").mkdir(parents=True, exist_ok=True)


def _enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    wants = root / f"etc/systemd/system/{target}.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / unit
    if not link.exists():
        src = f"/etc/systemd/system/{unit}"
        if not (root / src.lstrip("/")).exists():
            src = f"/lib/systemd/system/{unit}"
        link.symlink_to(src)


def _customize(root: Path, agent: Path, agent_json: dict, vm: bool, real_monit: bool = False) -> None:
    _add_user(root)
    bin_dir = "var/vcap/bosh/bin"
    _write(root, f"{bin_dir}/bosh-agent", agent.read_bytes(), 0o755)
    units = dict(UNITS)
    if real_monit:
        _write(root, "var/vcap/bosh/etc/monitrc", REAL_MONITRC, 0o700)
        (root / "etc/monitrc").unlink(missing_ok=True)
        (root / "etc/monitrc").symlink_to("/var/vcap/bosh/etc/monitrc")
        _write(root, "var/vcap/monit/empty.monitrc", "")  # monit refuses an include that matches nothing
        (root / "var/vcap/monit/job").mkdir(parents=True, exist_ok=True)
        _write(root, f"{bin_dir}/monit-csrf-proxy", MONIT_CSRF_PROXY, 0o755)
        _write(root, f"{bin_dir}/monit", REAL_MONIT_CLI, 0o755)
        units.update(REAL_MONIT_UNITS)
    else:
        _write(root, f"{bin_dir}/fake-monit", FAKE_MONIT, 0o755)
        _write(root, f"{bin_dir}/monit", MONIT_CLI, 0o755)
    for name, text in SCRIPTS.items():
        _write(root, f"{bin_dir}/{name}", text, 0o755)
    _write(root, "var/vcap/bosh/agent.json", json.dumps(agent_json, indent=2))
    _write(root, "var/vcap/monit/monit.user", "vcap:random-password\n", 0o600)
    for unit, text in units.items():
        _write(root, f"etc/systemd/system/{unit}", text)
        _enable(root, unit)
    _write(root, "etc/hostname", "boshcpi-agent\n")
    # The agent waits for its own addresses; nothing must pull a real network config over DHCP
    # unless the agent wrote it (VMs) or the bridge leases it (containers).
    if vm:
        _write(root, f"{bin_dir}/disk-report", DISK_REPORT, 0o755)
        _write(
            root,
            "etc/systemd/system/disk-report.service",
            "[Unit]\nDescription=boshcpi test: report disks\n[Service]\nExecStart=/var/vcap/bosh/bin/disk-report\n"
            "Restart=always\n[Install]\nWantedBy=multi-user.target\n",
        )
        _enable(root, "disk-report.service")
        _enable(root, "systemd-networkd.service")
        _enable(root, "systemd-resolved.service")
        _write(root, "etc/fstab", f"LABEL={ROOT_LABEL} / ext4 defaults 0 1\n")
    else:
        _write(root, "etc/systemd/network/10-eth0.network", "[Match]\nName=eth0\n[Network]\nDHCP=ipv4\n")
        _enable(root, "systemd-networkd.service")
        (root / "warden-cpi-dev").mkdir(exist_ok=True)
    # Quiet, fast boots: no getty on the serial console, root may log in on the console for debugging.
    for unit in ("getty@tty1.service", "serial-getty@ttyS0.service"):
        (root / f"etc/systemd/system/{unit}").unlink(missing_ok=True)
        (root / f"etc/systemd/system/{unit}").symlink_to("/dev/null")


def _unpack(base: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(dest), "--numeric-owner", "-xf", str(base)], check=True)


def container_stemcell(agent: Path, out: Path | None = None, stemcell_like: bool = False) -> Path:
    """An unpacked warden-style stemcell dir (stemcell.MF, image) running the real agent. With
    `stemcell_like`, the guest also has exactly a stemcell's build tools and -dev packages
    (STEMCELL_BUILD_PACKAGES, none of NOT_ON_A_STEMCELL) and a real monit that runs job processes:
    the compile and run environment of a director VM."""
    base = base_rootfs(STEMCELL_BUILD_PACKAGES if stemcell_like else ())
    monit = (
        (REAL_MONITRC, MONIT_CSRF_PROXY, REAL_MONIT_CLI, json.dumps(REAL_MONIT_UNITS))
        if stemcell_like
        else (FAKE_MONIT,)
    )
    key = _key(base.name, agent.read_bytes(), *monit, json.dumps(WARDEN_AGENT), json.dumps(UNITS), json.dumps(SCRIPTS))
    d = (out or CACHE) / f"agent-container-{key}"
    if (d / "image").exists():
        return d
    work = CACHE / f"agent-container.{os.getpid()}"
    try:
        _unpack(base, work)
        for heavy in ("boot", "lib/modules", "usr/lib/firmware"):
            shutil.rmtree(work / heavy, ignore_errors=True)
        _customize(work, agent, WARDEN_AGENT, vm=False, real_monit=stemcell_like)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "image.tmp"
        subprocess.run(["tar", "-C", str(work), "--numeric-owner", "-czf", str(tmp), "."], check=True)
        props = dict(stemcells.WARDEN_PROPERTIES, name="bosh-warden-boshcpi-agent", _formats="warden-tgz")
        (d / "stemcell.MF").write_text(stemcells.manifest(props["name"], "1.0", props))
        os.replace(tmp, d / "image")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return d


def _prune_modules(root: Path) -> str:
    moddir = next((root / "lib/modules").iterdir())
    for path in sorted(moddir.rglob("*.ko"), reverse=True):
        rel = str(path.relative_to(moddir))
        if not any(rel == k or rel.startswith(k + "/") for k in KEEP_MODULES):
            path.unlink()
    # The image's own depmod (the host may have none), run inside it.
    subprocess.run(["chroot", str(root), "/sbin/depmod", moddir.name], check=True, capture_output=True)
    return moddir.name


def vm_stemcell(agent: Path, out: Path | None = None, disk_gb: int = 3) -> Path:
    """An unpacked OpenStack-style stemcell dir whose qcow2 root.img boots the real agent. It has
    `growpart` (cloud-guest-utils, on every Jammy stemcell: bosh-linux-stemcell-builder
    bosh-stemcell/spec/assets/dpkg-list-ubuntu-jammy.txt), which the agent runs to grow a persistent
    disk's partition after a resize (bosh-agent platform/linux_platform.go AdjustPersistentDiskPartitioning)."""
    base = base_rootfs(VM_PACKAGES)
    key = _key(
        base.name,
        agent.read_bytes(),
        FAKE_MONIT,
        DISK_REPORT,
        json.dumps(OPENSTACK_AGENT),
        json.dumps(UNITS),
        json.dumps(SCRIPTS),
    )
    d = (out or CACHE) / f"agent-vm-{key}"
    if (d / "image").exists():
        return d
    work = CACHE / f"agent-vm.{os.getpid()}"
    try:
        _unpack(base, work / "root")
        root = work / "root"
        version = _prune_modules(root)
        _customize(root, agent, OPENSTACK_AGENT, vm=True)
        kernel = root / f"boot/vmlinuz-{version}"
        initrd = root / f"boot/initrd.img-{version}"
        raw = work / "root.raw"
        _disk(raw, root, kernel, initrd, disk_gb)
        d.mkdir(parents=True, exist_ok=True)
        stemcells._pack_vm_stemcell(d, raw, "qcow2", "bosh-openstack-kvm-boshcpi-agent")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return d


BOOT_MB = 96


def _disk(raw: Path, root: Path, kernel: Path, initrd: Path, disk_gb: int) -> None:
    """MBR (syslinux mbr.bin) + FAT boot partition (syslinux, kernel, initrd) + ext4 root, the rest of
    the disk left free (the agent partitions it for an ephemeral disk when the VM has none)."""
    work = raw.parent
    root_mb = 1536
    boot = work / "boot.img"
    with open(boot, "wb") as fh:
        fh.truncate(BOOT_MB << 20)
    subprocess.run(["mkfs.vfat", "-n", "BOSHBOOT", str(boot)], check=True, capture_output=True)
    cfg = work / "syslinux.cfg"
    cfg.write_text(
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n"
        f"  APPEND initrd=/initrd.img root=LABEL={ROOT_LABEL} ro console=ttyS0 net.ifnames=0 "
        "systemd.show_status=1 panic=-1\n"
    )
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for src, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (cfg, "syslinux.cfg")):
        subprocess.run(["mcopy", "-i", str(boot), str(src), f"::{name}"], check=True, env=env)
    subprocess.run(["syslinux", "--install", str(boot)], check=True, capture_output=True)
    rootfs = work / "rootfs.img"
    with open(rootfs, "wb") as fh:
        fh.truncate(root_mb << 20)
    subprocess.run(
        ["mke2fs", "-q", "-t", "ext4", "-L", ROOT_LABEL, "-d", str(root), "-E", "root_owner=0:0", str(rootfs)],
        check=True,
        capture_output=True,
    )
    with open(raw, "wb") as fh:
        fh.truncate(disk_gb << 30)
    layout = f"start=2048, size={BOOT_MB * 2048}, type=c, bootable\nsize={root_mb * 2048}, type=83\n"
    subprocess.run(["sfdisk", "-q", str(raw)], input=layout.encode(), check=True)
    with open(raw, "r+b") as out:
        for img, offset in ((boot, 1 << 20), (rootfs, (1 << 20) + (BOOT_MB << 20))):
            out.seek(offset)
            with open(img, "rb") as src:
                while True:
                    chunk = src.read(1 << 20)
                    if not chunk:
                        break
                    if chunk.count(0) == len(chunk):
                        out.seek(len(chunk), os.SEEK_CUR)
                    else:
                        out.write(chunk)
        out.seek(0)
        out.write(Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440])
    boot.unlink()
    rootfs.unlink()


def stemcell_tarball(d: Path) -> Path:
    """The stemcell tarball (stemcell.MF + image) `bosh create-env` and a director take, beside the
    unpacked dir. Its manifest carries the image's `sha1`, as a real stemcell's does (a director
    refuses a stemcell without it: cloudfoundry/bosh jobs/update_stemcell.rb:66)."""
    out = d.parent / (d.name + ".stemcell.tgz")
    if not out.exists():
        h = hashlib.sha1()
        with open(d / "image", "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        mf = (d / "stemcell.MF").read_text()
        if not any(line.startswith("sha1:") for line in mf.splitlines()):
            mf += f"sha1: {h.hexdigest()}\n"
        tmp = out.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tf:
            info = tarfile.TarInfo("stemcell.MF")
            info.size, info.mode, info.mtime = len(mf.encode()), 0o644, int(time.time())
            tf.addfile(info, io.BytesIO(mf.encode()))
            tf.add(d / "image", arcname="image")
        os.replace(tmp, out)
    return out
