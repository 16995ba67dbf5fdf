"""A tiny BIOS-bootable VM stemcell image built from Debian packages only (for the libvirt tests).

MBR (syslinux's mbr.bin) + one FAT partition holding syslinux, a Debian kernel (taken out of the
linux-image .deb with dpkg-deb, never installed) and a busybox initramfs. The initramfs' /init
loads the virtio and filesystem modules, finds the volume labelled config-2 (FAT32 or ISO9660),
prints the agent settings it reads and the NICs' MACs to the serial console, then idles. That
proves the whole path from CPI to guest.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
from pathlib import Path

MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    "sr_mod",
    "cdrom",
    "vfat",
    "isofs",
    "nls_cp437",
    "nls_iso8859-1",
    "nls_utf8",
    "nls_ascii",
)
MARK_BEGIN = "BOSHCPI-SETTINGS-BEGIN"
MARK_END = "BOSHCPI-SETTINGS-END"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
sleep 1
echo "boshcpi-test-image: booted"
found=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  for dev in /dev/vd? /dev/sd? /dev/sr?; do
    [ -b "$dev" ] || continue
    # The label: ISO9660 volume id (byte 32808) or the FAT32 boot sector label (byte 71).
    iso=$(dd if="$dev" bs=1 skip=32808 count=8 2>/dev/null)
    fat=$(dd if="$dev" bs=1 skip=71 count=8 2>/dev/null)
    if [ "$iso" = "config-2" ] || [ "$fat" = "config-2" ] || [ "$iso" = "CONFIG-2" ] || [ "$fat" = "CONFIG-2" ]; then
      mount -o ro "$dev" /mnt 2>/dev/null && found="$dev" && break 2
    fi
  done
  sleep 1
done
echo "config drive: ${{found:-none}}"
for f in $(find /mnt -type f 2>/dev/null); do echo "file: $f"; done
echo "{MARK_BEGIN}"
cat /mnt/ec2/latest/user-data 2>/dev/null || cat /mnt/*/*/user-data 2>/dev/null
echo
echo "{MARK_END}"
for n in /sys/class/net/*; do echo "nic: $(basename $n) $(cat $n/address)"; done
for b in /sys/block/vd*; do echo "disk: $(basename $b) serial=$(cat $b/serial 2>/dev/null) size=$(cat $b/size)"; done
echo "boshcpi-test-image: done"
while true; do sleep 3600; done
"""

SYSLINUX_CFG = (
    "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n"
    "  APPEND initrd=/initrd.gz console=ttyS0 quiet loglevel=3 panic=-1\n"
)


def _kernel_deb(cache: Path) -> Path:
    debs = sorted(cache.glob("linux-image-*-amd64_*.deb"))
    if debs:
        return debs[-1]
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
    pkg = next(line.split()[-1] for line in out.stdout.splitlines() if "Depends: linux-image-" in line)
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o777)  # apt's _apt user downloads into it
    try:
        subprocess.run(["apt-get", "download", "-q", pkg], cwd=cache, check=True, capture_output=True)
    except subprocess.CalledProcessError:
        # Package lists older than the mirror name a kernel it no longer has: refresh, ask again.
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
        out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=True)
        pkg = next(line.split()[-1] for line in out.stdout.splitlines() if "Depends: linux-image-" in line)
        subprocess.run(["apt-get", "download", "-q", pkg], cwd=cache, check=True, capture_output=True)
    return sorted(cache.glob("linux-image-*-amd64_*.deb"))[-1]


def _depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    i = data.find(b"\x00depends=")
    if i < 0:
        return []
    end = data.index(b"\x00", i + 1)
    deps = data[i + len(b"\x00depends=") : end].decode()
    return [d for d in deps.split(",") if d]


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive (what the kernel unpacks as an initramfs); no `cpio` binary needed."""
    out = io.BytesIO()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\x00"
        fields = [ino, mode, 0, 0, 1, 946684800, len(data), 0, 0, 0, 0, len(raw), 0]
        out.write(b"070701" + b"".join(f"{f:08X}".encode() for f in fields) + raw)
        out.write(b"\x00" * ((4 - (110 + len(raw)) % 4) % 4))
        out.write(data)
        out.write(b"\x00" * ((4 - len(data) % 4) % 4))
    return out.getvalue()


def build_initramfs(kernel_root: Path, busybox: str = "/bin/busybox") -> bytes:
    moddir = next((kernel_root / "lib/modules").iterdir())
    index = {p.name[: -len(".ko")]: p for p in moddir.rglob("*.ko")}
    index.update({k.replace("-", "_"): v for k, v in list(index.items())})
    order: list[str] = []

    def add(name: str) -> None:
        key = name if name in index else name.replace("-", "_")
        if key not in index or index[key].name[:-3] in order:
            return
        for dep in _depends(index[key]):
            add(dep)
        order.append(index[key].name[:-3])

    for m in MODULES:
        add(m)
    entries: list[tuple[str, int, bytes]] = []
    for d in ("bin", "dev", "proc", "sys", "mnt", "lib", "lib/modules", "tmp"):
        entries.append((d, 0o040755, b""))
    entries.append(("bin/busybox", 0o100755, Path(busybox).read_bytes()))
    entries.append(("init", 0o100755, INIT.encode()))
    entries.append(("modules.order", 0o100644, "\n".join(order).encode() + b"\n"))
    for name in order:
        entries.append(
            (
                f"lib/modules/{name}.ko",
                0o100644,
                index[name.replace("-", "_")].read_bytes()
                if name.replace("-", "_") in index
                else index[name].read_bytes(),
            )
        )
    return gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)


def build_disk(dest: Path, cache: Path, size_mb: int = 64) -> Path:
    """The bootable raw disk image (root.img stand-in)."""
    work = dest.parent / (dest.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        deb = _kernel_deb(cache)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "k")], check=True)
        vmlinuz = next((work / "k/boot").glob("vmlinuz-*"))
        (work / "initrd.gz").write_bytes(build_initramfs(work / "k"))
        (work / "syslinux.cfg").write_text(SYSLINUX_CFG)
        part = work / "part.img"
        with open(part, "wb") as fh:
            fh.truncate((size_mb - 1) << 20)
        # -h 2048: the partition starts at sector 2048; syslinux finds itself through that.
        subprocess.run(["mkfs.vfat", "-h", "2048", "-n", "BOSHBOOT", str(part)], check=True, capture_output=True)
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        for src, name in (
            (vmlinuz, "vmlinuz"),
            (work / "initrd.gz", "initrd.gz"),
            (work / "syslinux.cfg", "syslinux.cfg"),
        ):
            subprocess.run(["mcopy", "-i", str(part), str(src), f"::{name}"], check=True, env=env)
        subprocess.run(["syslinux", "--install", str(part)], check=True, capture_output=True)
        with open(dest, "wb") as fh:
            fh.truncate(size_mb << 20)
        subprocess.run(["sfdisk", "-q", str(dest)], input=b"start=2048, type=c, bootable\n", check=True)
        with open(part, "rb") as src, open(dest, "r+b") as out:
            out.seek(1 << 20)
            shutil.copyfileobj(src, out, 1 << 20)
            out.seek(0)
            out.write(Path("/usr/lib/syslinux/mbr/mbr.bin").read_bytes()[:440])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def settings_from_console(text: str) -> dict | None:
    """The settings JSON the test image printed, or None if it has not yet."""
    import json

    if MARK_BEGIN not in text or MARK_END not in text.split(MARK_BEGIN, 1)[1]:
        return None
    body = text.split(MARK_BEGIN, 1)[1].split(MARK_END, 1)[0].strip()
    return json.loads(body) if body else {}
