"""The libvirt daemon as the driver will use it: a connection, a storage pool, a volume upload."""

from __future__ import annotations

import uuid

import pytest

from boshcpi.drivers.libvirt import remote as libvirt

pytestmark = pytest.mark.libvirt


@pytest.fixture()
def conn():
    c = libvirt.open("qemu:///system")
    yield c
    c.close()


def test_libvirtd_answers_and_accepts_a_prefixed_volume(conn):
    assert conn.getLibVersion() >= 11_000_000
    caps = conn.getDomainCapabilities(None, "x86_64", None, "qemu")
    assert "<domain>qemu</domain>" in caps
    pool = conn.storagePoolLookupByName("boshcpi-test")
    name = f"boshcpi-t{uuid.uuid4().hex[:6]}-probe.raw"
    vol = pool.createXML(
        f"<volume><name>{name}</name><capacity unit='KiB'>64</capacity><target><format type='raw'/></target></volume>"
    )
    try:
        stream = conn.newStream()
        vol.upload(stream, 0, 5)
        stream.send(b"hello")
        stream.finish()
        assert vol.info()[1] == 64 * 1024
        assert name in pool.listVolumes()
    finally:
        vol.delete()
    assert name not in pool.listVolumes()
