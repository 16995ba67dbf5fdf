"""Stemcells as LXD/Incus images: streamed split-image uploads, reuse by fingerprint, aliases as cids.

Each stemcell cid is an image alias (`img-<uuid>`); two stemcells with the same bytes share one
image, and an image goes only when its last alias does and no instance is built from it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator

from boshcpi import log, naming, stemcell
from boshcpi.cloud import StemcellSpec
from boshcpi.drivers.lxd.client import LXDClient, LXDError, quote, urlencode
from boshcpi.drivers.lxd.errors import mapped, to_bosh
from boshcpi.protocol import CloudError, CpiError

ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


def _metadata_yaml(spec: StemcellSpec, is_vm: bool) -> str:
    arch = ARCH.get(spec.architecture, spec.architecture or "x86_64")
    props = {
        "description": f"BOSH stemcell {spec.name or 'unnamed'}/{spec.version or '0'}",
        "os": spec.os or "bosh",
        "release": spec.version or "0",
        "boshcpi": "true",
        "bosh.stemcell.name": spec.name,
        "bosh.stemcell.version": spec.version,
        "bosh.stemcell.kind": "vm" if is_vm else "container",
    }
    lines = [f"architecture: {arch}", "creation_date: 946684800", "properties:"]
    lines += [f"  {k}: {stemcell.yaml_quote(str(v))}" for k, v in props.items()]
    return "\n".join(lines) + "\n"


class Multipart:
    """A multipart/form-data body (metadata + rootfs) streamed from disk, of known length, hashing
    what it sends: the split image's fingerprint comes out of the same single read."""

    def __init__(self, meta: bytes, rootfs_name: str, rootfs_path: str) -> None:
        import hashlib

        self.boundary = "boshcpi-" + os.urandom(12).hex()
        self.rootfs_path = rootfs_path
        self.head = self._head("metadata") + meta + b"\r\n" + self._head(rootfs_name)
        self.tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.size = os.path.getsize(rootfs_path)
        self.length = len(self.head) + self.size + len(self.tail)
        self.hash = hashlib.sha256(meta)

    def _head(self, name: str) -> bytes:
        return (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        total = self.size or 1
        sent, next_report, start = 0, 0.25, time.monotonic()
        for chunk in stemcell.file_chunks(self.rootfs_path):
            self.hash.update(chunk)
            sent += len(chunk)
            if sent / total >= next_report:
                rate = sent / max(time.monotonic() - start, 1e-6) / 1e6
                log.info(f"uploading image: {sent * 100 // total}% of {total // (1 << 20)} MiB ({rate:.0f} MB/s)")
                next_report += 0.25
            yield chunk
        yield self.tail


def find_alias_info(client: LXDClient, cid: str) -> dict | None:
    """The alias behind a stemcell cid (`target` fingerprint, `type`), or None."""
    try:
        return client.get(f"/1.0/images/aliases/{quote(cid)}")
    except LXDError as e:
        if e.not_found:
            return None
        raise


def find_alias(client: LXDClient, cid: str) -> str | None:
    """Fingerprint behind a stemcell cid, or None."""
    alias = find_alias_info(client, cid)
    return alias["target"] if alias else None


def image_info(client: LXDClient, fingerprint: str) -> dict | None:
    try:
        return client.get(f"/1.0/images/{fingerprint}")
    except LXDError as e:
        if e.not_found:
            return None
        raise


def upload(client: LXDClient, spec: StemcellSpec, timeout: float) -> str:
    """Import the stemcell image; return its fingerprint (reusing an identical image)."""
    stemcell.check_image_path(spec.image_path)
    if spec.is_container:
        is_vm = False
    elif spec.disk_format in ("qcow2", "raw") or spec.cloud_properties.get("container_format") == "bare":
        is_vm = True
    else:
        is_vm = stemcell.is_vm_image(spec.image_path)
    meta = stemcell.metadata_tarball(_metadata_yaml(spec, is_vm))
    tmpdir = None
    try:
        if is_vm:
            tmpdir = tempfile.mkdtemp(prefix="boshcpi-stemcell-", dir=os.environ.get("BOSHCPI_TMPDIR"))
            rootfs = stemcell.extract_disk_image(spec.image_path, os.path.join(tmpdir, "root.img"))
            if stemcell.disk_format(rootfs) != "qcow2":
                rootfs = _to_qcow2(rootfs)
            part = "rootfs.img"
        else:
            rootfs, part = spec.image_path, "rootfs"
        # Upload straight away, hashing as it streams (no separate pass over a multi-GB image);
        # LXD refuses an image it already holds by fingerprint, and then that image is reused.
        body = Multipart(meta, part, rootfs)
        headers = {
            "Content-Type": f"multipart/form-data; boundary={body.boundary}",
            f"{client.header_prefix}properties": urlencode({"boshcpi": "true"}),
        }
        log.info(f"uploading {'VM' if is_vm else 'container'} image from {spec.image_path}")
        try:
            status, _, payload = client.raw("POST", "/1.0/images", body, headers, length=body.length)
            op = client._result(status, payload, wait=False)
            result = client.wait(op["id"], timeout) if isinstance(op, dict) and "id" in op else op
        except LXDError as e:
            fingerprint = body.hash.hexdigest()
            if "already exists" in e.message.lower() and image_info(client, fingerprint) is not None:
                log.info(f"image {fingerprint[:12]} already present: reusing it")
                return fingerprint
            raise to_bosh(e, "create_stemcell: upload") from None
        fingerprint = (result or {}).get("fingerprint") or body.hash.hexdigest()
        if fingerprint != body.hash.hexdigest():
            log.warn(f"daemon fingerprint {fingerprint[:12]} differs from computed {body.hash.hexdigest()[:12]}")
        return fingerprint
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _to_qcow2(raw_path: str) -> str:
    """LXD VM images carry qcow2; convert a raw root.img (needs qemu-img)."""
    import subprocess

    out = raw_path + ".qcow2"
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        raise CpiError("create_stemcell: raw VM images need qemu-img (package qemu-utils) to become qcow2")
    subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", raw_path, out], check=True)
    os.unlink(raw_path)
    return out


def create_alias(client: LXDClient, fingerprint: str, spec: StemcellSpec) -> str:
    cid = naming.new_stemcell_cid()
    desc = f"boshcpi stemcell {spec.name}/{spec.version}".strip()
    with mapped("create_stemcell: alias"):
        client.request("POST", "/1.0/images/aliases", {"name": cid, "target": fingerprint, "description": desc})
    return cid


def users_of(client: LXDClient, fingerprint: str) -> list[str]:
    """Instances created from this image (their volatile.base_image)."""
    instances = client.get("/1.0/instances", params={"recursion": 1}) or []
    return [i["name"] for i in instances if (i.get("config") or {}).get("volatile.base_image") == fingerprint]


def delete(client: LXDClient, cid: str) -> None:
    with mapped(f"delete_stemcell {cid}"):
        fingerprint = find_alias(client, cid)
        if fingerprint is None:
            log.info(f"stemcell {cid} is already gone")
            return
        info = image_info(client, fingerprint) or {}
        others = [a["name"] for a in info.get("aliases") or [] if a.get("name") != cid]
        if not others:
            users = users_of(client, fingerprint)
            if users:
                raise CloudError(
                    f"delete_stemcell: stemcell {cid} is still used by {len(users)} VM(s): "
                    f"{', '.join(sorted(users)[:5])}; delete them first"
                )
        client.delete(f"/1.0/images/aliases/{quote(cid)}")
        if others:
            log.info(f"image {fingerprint[:12]} kept: still the stemcell(s) {', '.join(others)}")
            return
        client.delete(f"/1.0/images/{fingerprint}")
