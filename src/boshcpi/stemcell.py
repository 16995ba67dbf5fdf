"""Stemcell image readers. Images are several GB: everything here streams, nothing is held whole.

The director unpacks the stemcell tarball and hands create_stemcell the path of `image`: a gzipped
tar holding `root.img` (VM stemcells) or a root filesystem (warden-style stemcells).
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator

from boshcpi.protocol import CpiError

CHUNK = 1 << 20
VM_IMAGE_NAMES = ("root.img", "./root.img", "disk.raw", "./disk.raw")


def check_image_path(path: str) -> None:
    if not os.path.isfile(path):
        raise CpiError(f"create_stemcell: image {path!r} does not exist or is not a file")


def is_vm_image(path: str) -> bool:
    """True if the image tarball holds a disk image (root.img) rather than a root filesystem."""
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for n, member in enumerate(tf):
                if member.name in VM_IMAGE_NAMES:
                    return True
                if n > 8 or member.isdir():
                    return False
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CpiError(f"create_stemcell: {path!r} is not a readable tarball: {e}") from None
    return False


def extract_disk_image(path: str, dest: str) -> str:
    """Stream `root.img` out of the image tarball into `dest` (the one temporary copy)."""
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            if member.name in VM_IMAGE_NAMES and member.isfile():
                src = tf.extractfile(member)
                assert src is not None
                with open(dest, "wb") as out:
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                return dest
    raise CpiError(f"create_stemcell: {path!r} holds no root.img")


def disk_format(path: str) -> str:
    """'qcow2' or 'raw', from the file's magic bytes."""
    with open(path, "rb") as fh:
        return "qcow2" if fh.read(4) == b"QFI\xfb" else "raw"


def file_chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                return
            yield chunk


def metadata_tarball(yaml_text: str) -> bytes:
    """A small deterministic tar with metadata.yaml (fixed mtime keeps fingerprints stable)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        data = yaml_text.encode()
        info = tarfile.TarInfo("metadata.yaml")
        info.size, info.mtime, info.mode = len(data), 946684800, 0o644
        tf.addfile(info, io.BytesIO(data))
        templates = tarfile.TarInfo("templates")
        templates.type, templates.mtime, templates.mode = tarfile.DIRTYPE, 946684800, 0o755
        tf.addfile(templates)
    return buf.getvalue()


def yaml_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
