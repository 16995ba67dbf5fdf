"""What a stemcell's image holds, decided from its content whatever the order `tar` wrote it in."""

from __future__ import annotations

import io
import tarfile

import pytest

from boshcpi import stemcell
from boshcpi.protocol import CpiError


def _tarball(path, names: list[str], data: bytes = b"x") -> str:
    with tarfile.open(path, "w:gz") as tf:
        for name in names:
            if name.endswith("/"):
                info = tarfile.TarInfo(name.rstrip("/"))
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return str(path)


def test_a_rootfs_whose_etc_comes_first_with_hundreds_of_files(tmp_path):
    # `tar -czf image .` of a root filesystem: ./etc and ~535 entries below it before anything else.
    names = ["./", "./etc/"] + [f"./etc/conf-{i}" for i in range(600)] + ["./usr/", "./usr/bin/x", "./bin/"]
    assert stemcell.probe(_tarball(tmp_path / "a.tgz", names)) == "rootfs"


def test_the_same_files_in_another_order(tmp_path):
    names = ["./usr/", "./usr/bin/x", "./bin/", "./etc/"] + [f"./etc/conf-{i}" for i in range(600)]
    assert stemcell.probe(_tarball(tmp_path / "b.tgz", names)) == "rootfs"


def test_a_small_rootfs_with_one_top_folder_is_one_once_the_stream_ends(tmp_path):
    assert stemcell.probe(_tarball(tmp_path / "c.tgz", ["etc/", "etc/passwd"])) == "rootfs"


def test_root_img_after_many_other_entries(tmp_path):
    names = [f"./docs/{i}" for i in range(500)] + ["./root.img"]
    assert stemcell.probe(_tarball(tmp_path / "d.tgz", names)) == "vm"


def test_neither_is_refused(tmp_path):
    with pytest.raises(CpiError, match="neither a disk image"):
        stemcell.probe(_tarball(tmp_path / "e.tgz", [f"./junk/{i}" for i in range(100)]))


def test_the_decision_is_bounded_in_bytes_not_entries(tmp_path):
    # Nothing of a root filesystem within the byte bound: refused, without reading the rest.
    names = [f"./junk/{i}" for i in range(50)] + ["./etc/a", "./usr/x"]
    path = _tarball(tmp_path / "f.tgz", names, data=b"y" * 4096)
    with pytest.raises(CpiError):
        stemcell.probe(path, limit=64 * 1024)
    assert stemcell.probe(path) == "rootfs"
