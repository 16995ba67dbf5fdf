"""Stemcell image readers and checks. Images are several GB: everything here streams, nothing is held
whole, and nothing is trusted before it is checked.

The director unpacks the stemcell tarball and hands create_stemcell the path of `image`: a gzipped tar
holding `root.img` (VM stemcells, qcow2 or raw) or a root filesystem (warden-style stemcells).
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
from collections.abc import Iterator

from boshcpi.protocol import CpiError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHUNK = 1 << 20
VM_IMAGE_NAMES = ("root.img", "./root.img", "disk.raw", "./disk.raw")
ARCHITECTURES = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
_ROOTFS_MARKS = ("etc", "bin", "usr", "sbin", "lib", "var")


def check_image_path(path: str) -> None:
    if not os.path.isfile(path):
        raise CpiError(f"create_stemcell: image {path!r} does not exist or is not a file")


def architecture(value: object) -> str:
    """The image architecture LXD and libvirt understand, from stemcell.MF; anything else is refused
    (the value is the stemcell's own and must never reach a metadata file unchecked)."""
    arch = ARCHITECTURES.get(str(value or "x86_64"))
    if arch is None:
        raise CpiError(f"create_stemcell: unsupported architecture {value!r} (known: {', '.join(ARCHITECTURES)})")
    return arch


def _open(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CpiError(f"create_stemcell: {path!r} is not a readable tarball: {e}") from None


PROBE_BYTES = 1 << 30  # how far into the unpacked tarball the probe reads before it decides


def probe(path: str, limit: int = PROBE_BYTES) -> str:
    """'vm' if the image tarball holds a disk image (root.img), 'rootfs' if it holds a root
    filesystem; CpiError for anything else. Entries are read until the answer is certain (root.img, or
    two top-level root filesystem folders), the stream ends, or `limit` bytes of it are read: never a
    fixed number of entries, so the order `tar` wrote them in (./etc and its hundreds of files first)
    does not change the answer."""
    seen_dirs: set[str] = set()
    tf = _open(path)
    try:
        for member in tf:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if member.name in VM_IMAGE_NAMES:
                return "vm"
            top = name.split("/", 1)[0]
            if top in _ROOTFS_MARKS:
                seen_dirs.add(top)
                if len(seen_dirs) >= 2:
                    return "rootfs"
            if tf.offset > limit:
                break
        # The whole stream read (a small root filesystem), or `limit` bytes of it: a VM image's root.img
        # is its first member, so root filesystem folders by then are a root filesystem.
        if seen_dirs:
            return "rootfs"
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CpiError(f"create_stemcell: {path!r} is not a readable tarball: {e}") from None
    finally:
        tf.close()
    raise CpiError(
        f"create_stemcell: {path!r} holds neither a disk image (root.img) nor a root filesystem (etc/, usr/, ...)"
    )


def check_qcow2_header(head: bytes, where: str) -> int:
    """Refuse a qcow2 image that would read anything but itself: a backing file (`qemu-img create -b`)
    or an external data file (incompatible feature bit 2); return its virtual size in bytes. The same
    fields `qemu-img info` reports (QEMU docs/interop/qcow2.txt)."""
    if len(head) < 72 or head[:4] != b"QFI\xfb":
        raise CpiError(f"{where}: not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    size = struct.unpack(">Q", head[24:32])[0]
    if backing_offset or backing_size:
        raise CpiError(f"{where}: the qcow2 image has a backing file; a stemcell image must stand alone")
    if version >= 3 and len(head) >= 80:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        if incompatible & 0x4:
            raise CpiError(f"{where}: the qcow2 image uses an external data file; a stemcell image must stand alone")
        if incompatible & ~0x1F:
            raise CpiError(f"{where}: the qcow2 image uses features this CPI does not know")
    elif version not in (2, 3):
        raise CpiError(f"{where}: qcow2 version {version} is not supported")
    if size == 0:
        raise CpiError(f"{where}: the qcow2 image is empty")
    return size


class DiskImage:
    """The root.img member of a VM stemcell's image tarball, open for one streamed pass."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tf = _open(path)
        self.size = 0
        self.format = ""
        self.virtual_size = 0
        self._src: io.BufferedReader | None = None
        self._head = b""
        try:
            for member in self._tf:
                if member.name in VM_IMAGE_NAMES and member.isfile():
                    src = self._tf.extractfile(member)
                    assert src is not None
                    self._src = src  # type: ignore[assignment]
                    self.size = member.size
                    break
            else:
                raise CpiError(f"create_stemcell: {path!r} holds no root.img")
            if self.size == 0:
                raise CpiError(f"create_stemcell: root.img in {path!r} is empty")
            self._head = src.read(CHUNK)
            if self._head[:4] == b"QFI\xfb":
                self.format = "qcow2"
                self.virtual_size = check_qcow2_header(self._head, "create_stemcell: root.img")
            else:
                self.format = "raw"
                self.virtual_size = self.size
        except (tarfile.TarError, OSError, EOFError) as e:
            self.close()
            raise CpiError(f"create_stemcell: {path!r} is not a readable tarball: {e}") from None
        except BaseException:
            self.close()
            raise

    def chunks(self) -> Iterator[bytes]:
        """The image's bytes, in order, exactly `size` of them (a short tarball is an error)."""
        sent = len(self._head)
        yield self._head
        assert self._src is not None
        while sent < self.size:
            data = self._src.read(CHUNK)
            if not data:
                raise CpiError(f"create_stemcell: root.img in {self.path!r} ends early")
            sent += len(data)
            yield data

    def write_sparse(self, dest: str, ceiling: int, cluster: int = 1 << 16) -> list[int]:
        """Write a raw image to `dest` without allocating its zero blocks, refusing images above
        `ceiling` bytes and stopping cleanly when the folder fills up. Returns the indexes of the
        `cluster`-sized pieces that hold anything but zeros (what a qcow2 image must carry)."""
        if self.size > ceiling:
            raise CpiError(
                f"create_stemcell: root.img is {self.size >> 20} MiB, above the limit of {ceiling >> 20} MiB "
                "(server.max_stemcell_image)"
            )
        st = os.statvfs(os.path.dirname(dest) or ".")
        free = st.f_bavail * st.f_frsize
        zero = bytes(max(CHUNK, cluster))
        written = 0
        nonzero: list[int] = []
        pos = 0
        with open(dest, "wb") as out:
            for chunk in self.chunks():
                if chunk == zero[: len(chunk)]:
                    out.seek(len(chunk), os.SEEK_CUR)
                    pos += len(chunk)
                    continue
                view = memoryview(chunk)
                while view:
                    # Pieces end on cluster boundaries of the whole image, wherever the chunk starts.
                    n = min(len(view), cluster - pos % cluster)
                    piece = view[:n]
                    if piece == zero[:n]:
                        out.seek(n, os.SEEK_CUR)
                    else:
                        written += n
                        if written > free:
                            raise CpiError(
                                f"create_stemcell: root.img needs more than the {free >> 20} MiB free in "
                                f"{os.path.dirname(dest)} (set BOSHCPI_TMPDIR to a bigger folder)"
                            )
                        out.write(piece)
                        index = pos // cluster
                        if not nonzero or nonzero[-1] != index:
                            nonzero.append(index)
                    pos += n
                    view = view[n:]
            out.truncate(self.size)
        return nonzero

    def close(self) -> None:
        try:
            self._tf.close()
        except Exception:
            pass

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetched(chunks: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """`chunks`, produced by a second thread `depth` chunks ahead: gunzip (zlib releases the GIL) runs on
    one core while the upload writes to the socket on another, as the Go CPI's pipe does. Bounded, so
    memory stays at `depth` chunks; the producer stops when the consumer does."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(_Failed(e))

    worker = threading.Thread(target=produce, name="boshcpi-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


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
    """A YAML double-quoted scalar that cannot end early or start a new key: backslashes, quotes and
    every control character are escaped."""
    out = []
    for c in str(value):
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c < " " or c == "\x7f" or "\x80" <= c <= "\x9f" or c in ("\u2028", "\u2029"):
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
