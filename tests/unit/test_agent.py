"""Agent settings and config drives. The images are checked with real readers: mtools, blkid,
fsck.vfat and xorriso read what our pure-Python writers produce."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from boshcpi.agent import configdisk, fat32, iso9660
from boshcpi.agent import settings as agent_settings

SETTINGS = agent_settings.build(
    agent_id="agent-1",
    vm_cid="vm-1",
    networks={"n": agent_settings.network_entry({"type": "manual", "ip": "10.0.0.5"}, "00:16:3e:00:00:01", False)},
    env={"bosh": {"password": "x"}},
    mbus="nats://m",
    ntp=["ntp1"],
    blobstore={"provider": "local"},
    system_disk="/dev/sda",
    ephemeral_disk="/dev/sdb",
)


def test_settings_match_bosh_cpi_go_shape():
    assert SETTINGS == {
        "agent_id": "agent-1",
        "vm": {"name": "vm-1", "id": "vm-1"},
        "mbus": "nats://m",
        "ntp": ["ntp1"],
        "blobstore": {"provider": "local"},
        "networks": {
            "n": {
                "type": "manual",
                "ip": "10.0.0.5",
                "default": [],
                "dns": [],
                "routes": [],
                "mac": "00:16:3e:00:00:01",
                "preconfigured": False,
            }
        },
        "disks": {"system": "/dev/sda", "ephemeral": "/dev/sdb", "persistent": {}},
        "env": {"bosh": {"password": "x"}},
    }


def test_attach_and_detach_persistent():
    s1 = agent_settings.attach_persistent(SETTINGS, "vol-p-1", {"path": "/dev/sdc"})
    assert s1["disks"]["persistent"] == {"vol-p-1": {"path": "/dev/sdc"}}
    assert SETTINGS["disks"]["persistent"] == {}
    assert agent_settings.detach_persistent(s1, "vol-p-1")["disks"]["persistent"] == {}
    assert agent_settings.detach_persistent(s1, "other")["disks"]["persistent"] == {"vol-p-1": {"path": "/dev/sdc"}}


def build(kind, tmp_path, label="config-2"):
    img = configdisk.build(
        SETTINGS,
        kind=kind,
        label=label,
        userdata_path="ec2/latest/user-data",
        metadata_path="ec2/latest/meta-data.json",
    )
    path = tmp_path / f"cfg.{kind}"
    path.write_bytes(img)
    return img, path


@pytest.mark.skipif(not shutil.which("mtype"), reason="mtools not installed (make host installs it)")
def test_fat32_image_reads_back_with_mtools(tmp_path):
    img, path = build("FAT32", tmp_path)
    blkid = subprocess.run(["blkid", "-p", str(path)], capture_output=True, text=True).stdout
    assert 'LABEL="config-2"' in blkid and 'TYPE="vfat"' in blkid and 'VERSION="FAT32"' in blkid
    assert subprocess.run(["fsck.vfat", "-n", str(path)], capture_output=True).returncode == 0
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(["mtype", "-i", str(path), "::ec2/latest/user-data"], capture_output=True, env=env)
    assert json.loads(out.stdout) == SETTINGS
    meta = subprocess.run(["mtype", "-i", str(path), "::ec2/latest/meta-data.json"], capture_output=True, env=env)
    assert json.loads(meta.stdout)["instance-id"] == "vm-1"
    assert configdisk.read_settings(img, userdata_path="ec2/latest/user-data") == SETTINGS


@pytest.mark.skipif(not shutil.which("xorriso"), reason="xorriso not installed (make host installs it)")
def test_iso9660_image_reads_back_with_xorriso(tmp_path):
    img, path = build("CDROM", tmp_path, label="CONFIG-2")
    blkid = subprocess.run(["blkid", "-p", str(path)], capture_output=True, text=True).stdout
    assert 'LABEL="CONFIG-2"' in blkid and 'TYPE="iso9660"' in blkid
    out = tmp_path / "ud"
    subprocess.run(
        ["xorriso", "-osirrox", "on", "-indev", str(path), "-extract", "/ec2/latest/user-data", str(out)],
        capture_output=True,
        check=True,
    )
    assert json.loads(out.read_bytes()) == SETTINGS
    listing = subprocess.run(
        ["xorriso", "-indev", str(path), "-find", "/", "-exec", "lsdl"], capture_output=True, text=True
    ).stdout
    assert "meta-data.json" in listing and "user-data" in listing
    assert configdisk.read_settings(img, userdata_path="ec2/latest/user-data") == SETTINGS


def test_writers_are_reproducible_and_handle_long_files():
    files = {"a/b/long-file-name-with-many-characters.json": b"x" * 100_000, "top": b""}
    assert fat32.build(files) == fat32.build(files)
    assert fat32.read(fat32.build(files), "a/b/long-file-name-with-many-characters.json") == b"x" * 100_000
    assert iso9660.read(iso9660.build(files), "a/b/long-file-name-with-many-characters.json") == b"x" * 100_000
    assert fat32.read(fat32.build(files), "top") == b""
    with pytest.raises(FileNotFoundError):
        fat32.read(fat32.build(files), "nope")


def _fat_entry(image: bytearray, cluster: int) -> int:
    import struct

    bps, _, reserved = struct.unpack_from("<HBH", image, 11)
    return reserved * bps + cluster * 4


def test_fat32_reader_stops_at_loops_and_bounds_written_by_a_guest():
    """A config drive comes back from a volume the guest could write: a looping or endless cluster
    chain is a clear error, never a read that grows without bound."""
    import struct

    files = {"ec2/latest/user-data": b'{"agent_id": "a"}' * 3000}
    good = fat32.build(files)
    root = struct.unpack_from("<I", good, 44)[0]
    looped = bytearray(good)
    struct.pack_into("<I", looped, _fat_entry(looped, root), root)  # the root directory points at itself
    with pytest.raises(ValueError, match="loops"):
        fat32.read(bytes(looped), "ec2/latest/user-data")
    # A file entry claiming 4 GiB reads at most what its chain and the image hold.
    assert len(fat32.read(good, "ec2/latest/user-data")) == len(files["ec2/latest/user-data"])
    with pytest.raises(ValueError):
        fat32.read(b"\0" * 4096, "ec2/latest/user-data")


def test_fat32_reader_bounds_a_file_by_its_size():
    import struct

    image = bytearray(fat32.build({"f": b"y" * 10}))
    # Find the file's entry in the root directory and claim a huge size: the read stays bounded.
    at = image.find(b"F~1        ")  # the short name of "f" (it has a long name too)
    assert at > 0
    struct.pack_into("<I", image, at + 28, 0xFFFFFFFF)
    assert len(fat32.read(bytes(image), "f")) <= len(image)
