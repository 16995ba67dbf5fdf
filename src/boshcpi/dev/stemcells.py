"""Test stemcells built from Debian packages only (busybox-static, qemu-utils).

- warden-style: a gzipped busybox root filesystem tarball plus stemcell.MF (system containers);
- VM: `image` is a gzipped tar holding `root.img` (raw or qcow2) plus stemcell.MF.

`python -m boshcpi.dev.stemcells DIR` builds all of them into DIR. Builds are cached by content.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BUSYBOX = "/bin/busybox"
APPLETS = (
    "sh",
    "ls",
    "cat",
    "mount",
    "umount",
    "mkdir",
    "ip",
    "ifconfig",
    "udhcpc",
    "sleep",
    "echo",
    "df",
    "route",
    "hostname",
    "ps",
    "kill",
    "grep",
    "sync",
    "poweroff",
    "reboot",
    "halt",
    "init",
    "dd",
    "stat",
)

INIT_RCS = """#!/bin/sh
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sys /sys 2>/dev/null
ifconfig lo 127.0.0.1 up
for i in /sys/class/net/eth*; do
  [ -e "$i" ] || continue
  udhcpc -i "$(basename "$i")" -b -q -s /etc/udhcpc.script >/dev/null 2>&1 &
done
echo booted > /run/boshcpi-test-booted
"""

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface" 2>/dev/null
    ;;
esac
exit 0
"""

INITTAB = "::sysinit:/etc/init.d/rcS\n::respawn:/bin/sleep 3600\n::shutdown:/bin/sync\n"


def _add(
    tf: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644, kind: str = "file", target: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 946684800
    info.mode = mode
    if kind == "dir":
        info.type = tarfile.DIRTYPE
        tf.addfile(info)
    elif kind == "link":
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tf.addfile(info)
    else:
        data = data or b""
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))


def warden_rootfs(dest: Path) -> Path:
    """A gzipped busybox root filesystem that boots as an LXD/Incus system container."""
    with open(BUSYBOX, "rb") as fh:
        busybox = fh.read()
    with tarfile.open(dest, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=6) as tf:
        for d in (
            "bin",
            "sbin",
            "etc",
            "etc/init.d",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "root",
            "var",
            "var/vcap",
            "var/vcap/bosh",
            "var/vcap/data",
            "usr",
            "usr/bin",
            "usr/sbin",
        ):
            _add(tf, d, kind="dir", mode=0o1777 if d == "tmp" else 0o755)
        _add(tf, "bin/busybox", busybox, mode=0o755)
        for applet in APPLETS:
            _add(tf, f"bin/{applet}", kind="link", target="busybox", mode=0o777)
        _add(tf, "sbin/init", kind="link", target="/bin/busybox", mode=0o777)
        _add(tf, "etc/init.d/rcS", INIT_RCS.encode(), mode=0o755)
        _add(tf, "etc/udhcpc.script", UDHCPC_SCRIPT.encode(), mode=0o755)
        _add(tf, "etc/inittab", INITTAB.encode())
        _add(tf, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        _add(tf, "etc/group", b"root:x:0:\n")
        _add(tf, "etc/hostname", b"boshcpi-test\n")
    return dest


def manifest(name: str, version: str, cloud_properties: dict[str, str]) -> str:
    lines = [
        f"name: {name}",
        f"version: '{version}'",
        "api_version: 3",
        "bosh_protocol: '1'",
        "operating_system: ubuntu-jammy",
        "stemcell_formats: [" + cloud_properties.pop("_formats") + "]",
        "cloud_properties:",
    ]
    lines += [f"  {k}: {v}" for k, v in cloud_properties.items()]
    return "\n".join(lines) + "\n"


WARDEN_PROPERTIES = {
    "name": "bosh-warden-boshcpi-test",
    "version": "1.0",
    "infrastructure": "warden",
    "hypervisor": "boshlite",
    "disk": "1024",
    "disk_format": "files",
    "container_format": "bare",
    "os_type": "linux",
    "os_distro": "ubuntu-jammy",
    "architecture": "x86_64",
}


def vm_properties(fmt: str) -> dict[str, str]:
    return {
        "name": "bosh-openstack-kvm-boshcpi-test",
        "version": "1.0",
        "infrastructure": "openstack",
        "hypervisor": "kvm",
        "disk": "64",
        "disk_format": fmt,
        "container_format": "bare",
        "os_type": "linux",
        "os_distro": "ubuntu-jammy",
        "architecture": "x86_64",
        "auto_disk_config": "true",
    }


def raw_disk(dest: Path, size_mb: int = 64) -> Path:
    """A raw disk with an MBR and one ext2 partition holding a marker (root.img stand-in)."""
    with open(dest, "wb") as fh:
        fh.truncate(size_mb << 20)
    subprocess.run(["sfdisk", "-q", str(dest)], input=b"start=2048, type=83, bootable\n", check=True)
    part = dest.with_suffix(".part")
    with open(part, "wb") as fh:
        fh.truncate((size_mb << 20) - (1 << 20))
    subprocess.run(["mkfs.ext2", "-q", "-F", "-L", "boshroot", str(part)], check=True)
    with open(part, "rb") as src, open(dest, "r+b") as out:
        out.seek(1 << 20)
        shutil.copyfileobj(src, out, 1 << 20)
    part.unlink()
    return dest


def _image_tarball(dest: Path, root_img: Path) -> Path:
    with tarfile.open(dest, "w:gz", compresslevel=1) as tf:
        tf.add(root_img, arcname="root.img")
    return dest


def _stemcell_tgz(dest: Path, mf: str, image: Path) -> Path:
    with tarfile.open(dest, "w:gz", compresslevel=1) as tf:
        data = mf.encode()
        info = tarfile.TarInfo("stemcell.MF")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        tf.add(image, arcname="image")
    return dest


def build_all(out: Path) -> dict[str, Path]:
    """Build (or reuse) every test stemcell; returns a map of kind -> unpacked dir (stemcell.MF, image)."""
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Path] = {}
    warden = out / "warden"
    if not (warden / "image").exists():
        warden.mkdir(exist_ok=True)
        warden_rootfs(warden / "image.tmp")
        props = dict(WARDEN_PROPERTIES, _formats="warden-tgz")
        (warden / "stemcell.MF").write_text(manifest(props["name"], "1.0", props))
        os.replace(warden / "image.tmp", warden / "image")
        _stemcell_tgz(
            out / "bosh-stemcell-warden-boshcpi-test.tgz", (warden / "stemcell.MF").read_text(), warden / "image"
        )
    result["warden"] = warden
    for fmt in ("raw", "qcow2"):
        d = out / f"vm-{fmt}"
        if not (d / "image").exists():
            d.mkdir(exist_ok=True)
            _pack_vm_stemcell(d, raw_disk(d / "root.raw"), fmt, vm_properties(fmt)["name"])
            _stemcell_tgz(
                out / f"bosh-stemcell-vm-{fmt}-boshcpi-test.tgz", (d / "stemcell.MF").read_text(), d / "image"
            )
        result[f"vm-{fmt}"] = d
    return result


def cloud_properties(stemcell_dir: Path) -> dict[str, str]:
    """The manifest's cloud_properties, as the director passes them to create_stemcell."""
    props: dict[str, str] = {}
    inside = False
    for line in (stemcell_dir / "stemcell.MF").read_text().splitlines():
        if line.startswith("cloud_properties:"):
            inside = True
            continue
        if inside and line.startswith("  "):
            k, _, v = line.strip().partition(": ")
            props[k] = v.strip("'\"")
        elif inside:
            break
    return props


if __name__ == "__main__":
    for kind, path in build_all(Path(sys.argv[1] if len(sys.argv) > 1 else "/var/tmp/boshcpi-stemcells")).items():
        print(kind, path)


def build_boot_stemcell(out: Path, fmt: str = "qcow2") -> Path:
    """A VM stemcell whose root.img really boots (see dev.bootimage); cached like the others."""
    import hashlib

    from boshcpi.dev import bootimage

    # Keyed by the builder's own source: a changed /init or module list builds a new image.
    key = hashlib.sha256(Path(bootimage.__file__).read_bytes()).hexdigest()[:10]
    d = out / f"vm-boot-{fmt}-{key}"
    if (d / "image").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    _pack_vm_stemcell(
        d, bootimage.build_disk(d / "root.raw", out / "kernel"), fmt, "bosh-openstack-kvm-boshcpi-boot-test"
    )
    return d


def _pack_vm_stemcell(d: Path, raw: Path, fmt: str, name: str) -> None:
    """root.img (raw, or converted to qcow2) in a gzipped `image` tarball, and its stemcell.MF."""
    root = d / "root.img"
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(root)], check=True)
        raw.unlink()
    else:
        raw.rename(root)
    props = dict(vm_properties(fmt), _formats=f"openstack-{fmt}", name=name)
    (d / "stemcell.MF").write_text(manifest(name, "1.0", props))
    _image_tarball(d / "image.tmp", root)
    root.unlink()
    os.replace(d / "image.tmp", d / "image")
