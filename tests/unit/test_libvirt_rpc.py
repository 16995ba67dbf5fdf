"""The libvirt RPC client's wire handling against a scripted peer on a socketpair: the framing of
virnetprotocol.x, errors decoded from remote_error, and the SASL refusal. (The client against the
real libvirtd is the integration tests'.)"""

from __future__ import annotations

import socket
import threading

import pytest

from boshcpi.drivers.libvirt import rpc
from boshcpi.drivers.libvirt.xdr import Packer, Unpacker


def _peer(sock: socket.socket, replies: list[tuple[int, bytes]], seen: list[tuple[int, int, int]]) -> None:
    """Answer each call with the next (status, payload), as libvirtd would."""
    for status, payload in replies:
        head = sock.recv(4, socket.MSG_WAITALL)
        n = int.from_bytes(head, "big")
        msg = sock.recv(n - 4, socket.MSG_WAITALL)
        u = Unpacker(msg)
        prog, vers, proc, kind, serial, _ = (u.uint() for _ in range(6))
        assert (prog, vers, kind) == (rpc.REMOTE_PROGRAM, 1, rpc.CALL)
        seen.append((proc, serial, len(msg) - 24))
        body = Packer().uint(prog).uint(1).uint(proc).uint(rpc.REPLY).uint(serial).uint(status).buf + payload
        sock.sendall((len(body) + 4).to_bytes(4, "big") + body)


def _client(replies):
    ours, theirs = socket.socketpair()
    seen: list = []
    t = threading.Thread(target=_peer, args=(theirs, replies, seen), daemon=True)
    t.start()
    c = rpc.Client("qemu:///system")
    c.sock = ours
    return c, seen, t


def test_a_call_and_its_reply_and_a_typed_error():
    version = Packer().uhyper(11_003_000).bytes()
    error = Packer().int(42).int(10).optional_string("Domain not found: no domain 'x'").int(2).int(0)
    error = error.optional_string(None).optional_string(None).optional_string(None).int(0).int(0).int(0).bytes()
    c, seen, t = _client([(rpc.OK, version), (rpc.ERROR, error)])
    assert c.call(157).uhyper() == 11_003_000
    with pytest.raises(rpc.LibvirtError) as e:
        c.call(23, Packer().string("x"))
    assert e.value.code == rpc.ERR_NO_DOMAIN and "no domain" in e.value.message
    t.join(5)
    assert [(p, s) for p, s, _ in seen] == [(157, 1), (23, 2)]  # serials count up
    assert seen[1][2] == 8  # a string: its length, then "x" padded to 4


def test_sasl_is_refused_clearly_and_for_good():
    kinds = Packer().uint(1).int(rpc.AUTH_SASL).bytes()
    c, _, t = _client([(rpc.OK, kinds)])
    with pytest.raises(rpc.LibvirtError) as e:
        c._authenticate()
    assert e.value.code == rpc.ERR_NO_SUPPORT and e.value.permanent
    assert "SASL" in e.value.message and "auth_tcp" in e.value.message
    t.join(5)


def test_targets_from_uris():
    t = rpc.Target("qemu+tls://10.0.0.5/system")
    assert (t.transport, t.host, t.port, t.name) == ("tls", "10.0.0.5", 16514, "qemu:///system")
    t = rpc.Target("qemu+tcp://[fd00::1]:16600/system")
    assert (t.transport, t.host, t.port) == ("tcp", "fd00::1", 16600)
    t = rpc.Target("qemu+unix:///system?socket=/run/x.sock")
    assert (t.transport, t.socket, t.name) == ("unix", "/run/x.sock", "qemu:///system")
    with pytest.raises(rpc.LibvirtError):
        rpc.Target("qemu+ssh://host/system")
