"""The libvirt driver over the network, as a director VM reaches libvirtd: TCP (`auth_tcp = "none"`, the
Go libvirt CPI's setting) and TLS with a client certificate, through the real CPI process, with the
RPC client that speaks libvirt's protocol itself (no libvirt C library). `make host` has libvirtd
listen on the LXD test bridge's address with a CA, a server and a client certificate of its own.

A wrong CA and a client certificate libvirtd does not trust are each one line, not retryable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import call, libvirt_config

pytestmark = pytest.mark.libvirt

LISTEN = "10.245.10.1"
PKI = Path("/var/lib/boshcpi-dev/libvirt-pki")


def _listening(port: int) -> bool:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return f"{LISTEN}:{port}" in out


@pytest.fixture(scope="module")
def pki() -> Path:
    if not (_listening(16509) and _listening(16514) and (PKI / "clientcert.pem").exists()):
        pytest.skip(f"not run: libvirtd does not listen on {LISTEN} with TLS (make host sets that up)")
    return PKI


def _config(tmp: Path, pool: str, uri: str, **tls: str) -> Path:
    cfg = libvirt_config(pool, tmp / "console", "CDROM", "nats://n:libvirt-s3cret@10.245.30.11:4222")
    cfg["libvirt"]["uri"] = uri
    cfg["libvirt"].update(tls)
    path = tmp / f"cpi-{abs(hash(uri + json.dumps(tls)))}.json"
    path.write_text(json.dumps(cfg))
    return path


def _tls(pki: Path, ca: str = "cacert.pem", cert: str = "clientcert.pem", key: str = "clientkey.pem") -> dict:
    return {
        "tls_ca_cert": (pki / ca).read_text(),
        "tls_client_cert": (pki / cert).read_text(),
        "tls_client_key": (pki / key).read_text(),
    }


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_calls_over_the_network(tmp_path, libvirt_pool, pki, transport):
    tls = _tls(pki) if transport == "tls" else {}
    cfg = _config(tmp_path, libvirt_pool, f"qemu+{transport}://{LISTEN}/system", **tls)
    assert "openstack-raw" in call(cfg, "info").ok()["stemcell_formats"]
    assert call(cfg, "has_vm", "vm-00000000-0000-4000-8000-000000000000").ok() is False
    disk = call(cfg, "create_disk", 16, {}, None).ok()
    assert call(cfg, "has_disk", disk).ok() is True
    pool = subprocess.run(
        ["virsh", "-c", "qemu:///system", "vol-list", libvirt_pool], capture_output=True, text=True, check=True
    ).stdout
    assert disk in pool  # the daemon's own client sees what the network client made
    # A volume reads back whole over the network (config drives are read this way).
    from boshcpi import config as cfgmod
    from boshcpi.drivers.libvirt.host import LibvirtHost

    host = LibvirtHost(cfgmod.from_dict(json.loads(cfg.read_text())))
    try:
        assert host.download(host.volume(disk)) == bytes(16 << 20)
    finally:
        host.close()
    assert call(cfg, "delete_disk", disk).ok() is None
    assert call(cfg, "has_disk", disk).ok() is False


def test_a_server_certificate_that_does_not_verify_is_one_line_and_final(tmp_path, libvirt_pool, pki):
    # The server's own certificate is no CA: libvirtd's certificate cannot verify against it.
    cfg = _config(tmp_path, libvirt_pool, f"qemu+tls://{LISTEN}/system", **_tls(pki, ca="servercert.pem"))
    resp = call(cfg, "has_vm", "vm-00000000-0000-4000-8000-000000000000")
    assert resp.error_type == "Bosh::Clouds::CloudError"
    assert resp.error["ok_to_retry"] is False
    assert "does not verify" in resp.error["message"] and "\n" not in resp.error["message"]


def test_a_client_certificate_libvirtd_does_not_trust_is_one_line_and_final(tmp_path, libvirt_pool, pki):
    # A client certificate of another CA: the TLS session may open, but libvirtd refuses the client.
    other = tmp_path / "other"
    other.mkdir()
    run = lambda *a: subprocess.run(a, cwd=other, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", "/CN=stranger-ca", "-keyout", "cakey.pem", "-out", "cacert.pem")  # fmt: skip
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=stranger",
        "-keyout", "key.pem", "-out", "req.csr")  # fmt: skip
    (other / "ext").write_text("extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n")
    run("openssl", "x509", "-req", "-in", "req.csr", "-CA", "cacert.pem", "-CAkey", "cakey.pem", "-CAcreateserial",
        "-days", "2", "-extfile", "ext", "-out", "cert.pem")  # fmt: skip
    tls = {
        "tls_ca_cert": (pki / "cacert.pem").read_text(),
        "tls_client_cert": (other / "cert.pem").read_text(),
        "tls_client_key": (other / "key.pem").read_text(),
    }
    cfg = _config(tmp_path, libvirt_pool, f"qemu+tls://{LISTEN}/system", **tls)
    resp = call(cfg, "has_vm", "vm-00000000-0000-4000-8000-000000000000")
    assert resp.error_type == "Bosh::Clouds::CloudError"
    assert resp.error["ok_to_retry"] is False
    assert "\n" not in resp.error["message"]
    assert "certificate" in resp.error["message"].lower()


def _cleanup(cfg: Path, *args: str) -> dict:
    from tests.helpers import BOSHCPI, ROOT

    out = subprocess.run(
        [*BOSHCPI, "cleanup", "--config", str(cfg), "--json", "--older-than", "1h", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout)


def test_cleanup_over_tcp_judges_age_by_libvirtds_clock(tmp_path, libvirt_pool, pki):
    """Over the network the CPI cannot stat the pool's files: an orphan's age is libvirtd's (volume
    timestamps against its clock). A fresh one (an in-flight create_vm's) is left alone, an old one
    is removed, and no probe volume is left behind."""
    import os
    import time
    import uuid

    from boshcpi.drivers.libvirt import remote

    cfg = _config(tmp_path, libvirt_pool, f"qemu+tcp://{LISTEN}/system")
    conn = remote.open("qemu:///system")
    pool = conn.storagePoolLookupByName(libvirt_pool)
    name = f"vol-c-{uuid.uuid4()}-{uuid.uuid4().hex[:6]}"
    vol = pool.createXML(
        f"<volume><name>{name}</name><capacity unit='KiB'>64</capacity><target><format type='raw'/></target></volume>"
    )
    try:
        assert _cleanup(cfg)["orphans"] == []
        old = time.time() - 7200
        os.utime(vol.path(), (old, old))
        pool.refresh(0)
        assert [o["name"] for o in _cleanup(cfg)["orphans"]] == [name]
        applied = _cleanup(cfg, "--apply")
        assert [(o["name"], o["removed"]) for o in applied["orphans"]] == [(name, True)]
        pool.refresh(0)
        assert not [v for v in pool.listVolumes() if v == name or v.startswith("boshcpi-clock-")]
    finally:
        pool.refresh(0)
        if name in pool.listVolumes():
            vol.delete(0)
        conn.close()


@pytest.mark.parametrize("transport", ["unix", "tls"])
def test_a_call_libvirtd_runs_longer_than_many_keepalive_intervals_succeeds(tmp_path, libvirt_pool, pki, transport):
    """storageVolCreateXMLFrom copies the whole volume before libvirtd replies (storage_driver.c): with
    a keepalive interval of 50 ms the copy spans dozens of them, the client PINGs, libvirtd answers
    while it copies, and the call returns the clone, whole. (With a fixed socket timeout it failed as
    "connection lost: timed out", and the director's retry started a second copy.)"""
    from boshcpi.drivers.libvirt import remote, rpc

    uri = "qemu:///system" if transport == "unix" else f"qemu+tls://{LISTEN}/system"
    tls = _tls(pki) if transport == "tls" else {}
    conn = remote.open(
        uri,
        client_cert=tls.get("tls_client_cert", ""),
        client_key=tls.get("tls_client_key", ""),
        ca_cert=tls.get("tls_ca_cert", ""),
    )
    pool = conn.storagePoolLookupByName(libvirt_pool)
    src = pool.createXML(
        "<volume><name>keepalive-src</name><capacity unit='MiB'>400</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    try:
        subprocess.run(
            ["dd", "if=/dev/urandom", f"of={src.path()}", "bs=1M", "count=400", "conv=notrunc"],
            check=True,
            capture_output=True,
        )
        conn.client.keepalive_interval = 0.05
        conn.client.sock.settimeout(0.05)
        sent = []
        real_send = conn.client._send

        def counting_send(proc, kind, serial, status, payload=b"", prog=rpc.REMOTE_PROGRAM):
            if prog == rpc.KEEPALIVE_PROGRAM:
                sent.append(proc)
            return real_send(proc, kind, serial, status, payload, prog)

        conn.client._send = counting_send
        clone = pool.createXMLFrom(
            "<volume><name>keepalive-clone</name><capacity unit='MiB'>400</capacity>"
            "<target><format type='raw'/></target></volume>",
            src,
            0,
        )
        assert sent.count(rpc.KEEPALIVE_PING) >= 3, f"the copy ended within {len(sent)} keepalive intervals"
        digest = subprocess.run(["cmp", src.path(), clone.path()], capture_output=True)
        assert digest.returncode == 0, "the clone is not the volume"
        clone.delete(0)
    finally:
        src.delete(0)
        conn.close()
