"""Stemcell uploads to LXD/Incus: a split image (metadata + rootfs) streamed in one pass with a known
length. Only create_stemcell imports this (and its tarfile/tempfile/shutil cost);
lookups, aliases and deletes are in images.py."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

from boshcpi import log, qcow2, stemcell
from boshcpi.cloud import StemcellSpec
from boshcpi.drivers.lxd.client import LXDClient, LXDError, urlencode
from boshcpi.drivers.lxd.errors import to_bosh
from boshcpi.drivers.lxd.images import image_info
from boshcpi.protocol import CloudError, CpiError

DEFAULT_MAX_IMAGE = 100 << 30


def _metadata_yaml(spec: StemcellSpec, is_vm: bool) -> str:
    arch = stemcell.architecture(spec.cloud_properties.get("architecture"))
    props = {
        "description": f"BOSH stemcell {spec.name or 'unnamed'}/{spec.version or '0'}",
        "os": spec.os or "bosh",
        "release": spec.version or "0",
        "boshcpi": "true",
        "bosh.stemcell.name": spec.name,
        "bosh.stemcell.version": spec.version,
        "bosh.stemcell.kind": "vm" if is_vm else "container",
    }
    # Every value is the stemcell's own (stemcell.MF): quoted, never trusted to be plain YAML.
    lines = [f"architecture: {arch}", "creation_date: 946684800", "properties:"]
    lines += [f"  {k}: {stemcell.yaml_quote(str(v)[:255])}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


class Multipart:
    """A multipart/form-data body (metadata + rootfs) of known length, streamed from a file or from the
    stemcell tarball itself. The daemon computes the fingerprint as it receives (hashing here too would
    put a second SHA-256 of every byte on the same CPUs, ~8% of a 1 GiB upload on 2 cores)."""

    def __init__(self, meta: bytes, rootfs_name: str, size: int, chunks: Iterator[bytes]) -> None:
        self.boundary = "boshcpi-" + os.urandom(12).hex()
        self.head = self._head("metadata") + meta + b"\r\n" + self._head(rootfs_name)
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = size
        self.chunks = chunks
        self.length = len(self.head) + self.size + len(self.tail)

    def _head(self, name: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        total = self.size or 1
        sent, next_report, start = 0, 0.25, time.monotonic()
        for chunk in self.chunks:
            sent += len(chunk)
            if sent / total >= next_report:
                rate = sent / max(time.monotonic() - start, 1e-6) / 1e6
                log.info(f"uploading image: {sent * 100 // total}% of {total // (1 << 20)} MiB ({rate:.0f} MB/s)")
                next_report += 0.25
            yield chunk
        if sent != self.size:
            raise CpiError(f"create_stemcell: the image ended after {sent} of {self.size} bytes")
        yield self.tail


def _kind(spec: StemcellSpec) -> str:
    if spec.is_container:
        return "rootfs"
    return stemcell.probe(spec.image_path)


def upload(client: LXDClient, spec: StemcellSpec, timeout: float, max_image: int = DEFAULT_MAX_IMAGE) -> str:
    """Import the stemcell image; return its fingerprint (reusing an identical image).

    Container images stream straight from the stemcell file. A qcow2 root.img streams straight out of
    the gzipped image tarball into the upload (no temporary copy); a raw one is written sparse to a
    temporary folder and streamed out as the qcow2 LXD wants."""
    stemcell.check_image_path(spec.image_path)
    is_vm = _kind(spec) == "vm"
    meta = stemcell.metadata_tarball(_metadata_yaml(spec, is_vm))
    tmpdir = None
    disk = None
    raw_fh = None
    # What the rootfs part holds, readable again for the rare duplicate whose fingerprint the daemon
    # no longer reports.
    replay: Callable[[], Iterator[bytes]] = lambda: stemcell.file_chunks(spec.image_path)  # noqa: E731
    try:
        if not is_vm:
            body = Multipart(meta, "rootfs", os.path.getsize(spec.image_path), stemcell.file_chunks(spec.image_path))
        else:
            disk = stemcell.DiskImage(spec.image_path)
            if disk.format == "qcow2":
                body = Multipart(meta, "rootfs.img", disk.size, stemcell.prefetched(disk.chunks()))
                replay = lambda: _root_img_chunks(spec.image_path)  # noqa: E731
            else:
                tmpdir = tempfile.mkdtemp(prefix="boshcpi-stemcell-", dir=os.environ.get("BOSHCPI_TMPDIR"))
                raw = os.path.join(tmpdir, "root.img")
                nonzero = disk.write_sparse(raw, max_image, qcow2.CLUSTER)
                disk.close()
                # LXD/Incus VM images carry qcow2: the raw image streams out as one, written here
                # (qcow2.py), so no qemu-img is needed and no second copy is made.
                raw_fh = open(raw, "rb")  # noqa: SIM115 (closed in the finally below)
                read = lambda offset, n: os.pread(raw_fh.fileno(), n, offset)  # noqa: E731
                length, chunks = qcow2.stream(disk.size, nonzero, read)
                body = Multipart(meta, "rootfs.img", length, chunks)
                replay = lambda: qcow2.stream(disk.size, nonzero, read)[1]  # noqa: E731
        # Upload straight away (no separate pass over a multi-GB image);
        # LXD refuses an image it already holds by fingerprint, and then that image is reused.
        headers = {
            "Content-Type": f"multipart/form-data; boundary={body.boundary}",
            f"{client.header_prefix}properties": urlencode({"boshcpi": "true"}),
        }
        log.info(f"uploading {'VM' if is_vm else 'container'} image from {spec.image_path}")
        try:
            status, _, payload = client.raw("POST", "/1.0/images", body, headers, length=body.length)
            op = client.answer(status, payload, wait=False)
            result = client.wait(op["id"], timeout) if isinstance(op, dict) and "id" in op else op
        except LXDError as e:
            # LXD/Incus keep the fingerprint in a failed upload's operation metadata ("Set the metadata
            # if possible, even if there is an error": lxd/images.go imagesPost, incusd images.go).
            fingerprint = e.metadata.get("fingerprint", "")
            if "already exists" in e.message.lower() and not fingerprint:
                fingerprint = _fingerprint(meta, replay())
            if "already exists" in e.message.lower() and fingerprint and image_info(client, fingerprint) is not None:
                log.info(f"image {fingerprint[:12]} already present: reusing it")
                return fingerprint
            raise to_bosh(e, "create_stemcell: upload") from None
        fingerprint = (result or {}).get("fingerprint") or ""
        if not fingerprint:
            raise CloudError("create_stemcell: the daemon accepted the image but named no fingerprint")
        return fingerprint
    finally:
        if disk is not None:
            disk.close()
        if raw_fh is not None:
            raw_fh.close()
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _root_img_chunks(path: str) -> Iterator[bytes]:
    with stemcell.DiskImage(path) as disk:
        yield from disk.chunks()


def _fingerprint(meta: bytes, rootfs: Iterator[bytes]) -> str:
    """A split image's fingerprint as LXD/Incus compute it: SHA-256 of the metadata then the rootfs."""
    import hashlib

    digest = hashlib.sha256(meta)
    for chunk in rootfs:
        digest.update(chunk)
    return digest.hexdigest()
