"""The libvirt RPC client's wire handling against a scripted peer on a socketpair: the framing of
virnetprotocol.x, errors decoded from remote_error, and the SASL refusal. (The client against the
real libvirtd is the integration tests'.)"""

from __future__ import annotations

import socket
import threading

import pytest

from boshcpi.drivers.libvirt import rpc
from boshcpi.drivers.libvirt.errors import XDRError
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


def _message(prog: int, proc: int, kind: int, serial: int, status: int, payload: bytes = b"") -> bytes:
    body = Packer().uint(prog).uint(1).uint(proc).uint(kind).uint(serial).uint(status).buf + payload
    return (len(body) + 4).to_bytes(4, "big") + bytes(body)


def _read(sock: socket.socket) -> tuple[int, int, int, int]:
    n = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "big")
    u = Unpacker(sock.recv(n - 4, socket.MSG_WAITALL))
    prog, _, proc, kind, serial, _ = (u.uint() for _ in range(6))
    return prog, proc, kind, serial


def _slow_peer(sock: socket.socket, answer_pings: bool, reply_after: float, seen: list) -> None:
    """Take one call, then (answering the client's keepalive PINGs, or not) reply after a while."""
    import select
    import time

    _, proc, _, serial = _read(sock)
    deadline = time.monotonic() + reply_after
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        try:
            prog, p, kind, _ = _read(sock)
        except (ValueError, OSError):
            return  # the client gave up and closed
        seen.append((prog, p, kind))
        if answer_pings and prog == rpc.KEEPALIVE_PROGRAM and p == rpc.KEEPALIVE_PING:
            sock.sendall(_message(rpc.KEEPALIVE_PROGRAM, rpc.KEEPALIVE_PONG, rpc.MESSAGE, 0, rpc.OK))
    try:
        sock.sendall(_message(rpc.REMOTE_PROGRAM, proc, rpc.REPLY, serial, rpc.OK, Packer().uhyper(7).bytes()))
    except OSError:
        pass


def _keepalive_client(answer_pings: bool, reply_after: float):
    ours, theirs = socket.socketpair()
    seen: list = []
    t = threading.Thread(target=_slow_peer, args=(theirs, answer_pings, reply_after, seen), daemon=True)
    t.start()
    c = rpc.Client("qemu:///system")
    c.keepalive_interval, c.keepalive_count = 0.1, 3
    c.sock = ours
    ours.settimeout(c.keepalive_interval)
    return c, seen, t


def test_a_call_libvirtd_answers_late_is_waited_for_while_it_answers_keepalive():
    """No fixed timeout on a call: a reply after 1.5 s (fifteen keepalive intervals) arrives, since the
    peer answered every PING meanwhile (libvirt's storageVolCreateXMLFrom copies before it replies)."""
    c, seen, t = _keepalive_client(answer_pings=True, reply_after=1.5)
    assert c.call(157).uhyper() == 7
    t.join(5)
    pings = [s for s in seen if s == (rpc.KEEPALIVE_PROGRAM, rpc.KEEPALIVE_PING, rpc.MESSAGE)]
    assert len(pings) >= 5, seen


def test_a_peer_that_answers_nothing_ends_the_wait_within_the_keepalive_bound():
    import time

    c, _, _ = _keepalive_client(answer_pings=False, reply_after=3.0)
    start = time.monotonic()
    with pytest.raises(rpc.LibvirtError) as e:
        c.call(157)
    waited = time.monotonic() - start
    assert e.value.code == rpc.ERR_RPC and "keepalive" in e.value.message
    assert 0.3 <= waited < 1.5, waited  # interval x (count + 1), not the 3 s the reply would take
    assert c.sock is None  # the connection is given up


def test_a_keepalive_ping_from_libvirtd_is_answered_with_a_pong():
    ours, theirs = socket.socketpair()
    c = rpc.Client("qemu:///system")
    c.sock = ours
    ours.settimeout(5)

    def peer():
        _, proc, _, serial = _read(theirs)
        theirs.sendall(_message(rpc.KEEPALIVE_PROGRAM, rpc.KEEPALIVE_PING, rpc.MESSAGE, 0, rpc.OK))
        got.append(_read(theirs))
        theirs.sendall(_message(rpc.REMOTE_PROGRAM, proc, rpc.REPLY, serial, rpc.OK, Packer().uhyper(1).bytes()))

    got: list = []
    t = threading.Thread(target=peer, daemon=True)
    t.start()
    assert c.call(157).uhyper() == 1
    t.join(5)
    assert got == [(rpc.KEEPALIVE_PROGRAM, rpc.KEEPALIVE_PONG, rpc.MESSAGE, 0)]


def test_a_reply_that_does_not_decode_is_a_typed_libvirt_error():
    c, _, t = _client([(rpc.OK, b"\x00\x00\x00\x09abc")])  # a string of 9 bytes, 3 sent
    u = c.call(23, Packer().string("x"))
    with pytest.raises(rpc.LibvirtError) as e:
        u.string()
    assert isinstance(e.value, XDRError) and e.value.code == rpc.ERR_RPC
    assert "does not decode" in e.value.message
    t.join(5)


def test_string_limit_is_the_protocols():
    from boshcpi.drivers.libvirt import xdr

    assert xdr.STRING_MAX == 4 * 1024 * 1024  # remote_protocol.x REMOTE_STRING_MAX
    big = "x" * (2 * 1024 * 1024)
    assert Unpacker(Packer().string(big).bytes()).string() == big


def test_unix_sockets_as_libvirts_own_client_picks_them(tmp_path, monkeypatch):
    import os

    # No sockets at all: the driver daemon's (the modular layout); ?mode= picks either.
    assert rpc.unix_socket("qemu", "system", "legacy") == "/var/run/libvirt/libvirt-sock"
    assert rpc.unix_socket("qemu", "system", "direct") == "/var/run/libvirt/virtqemud-sock"
    # /session as an ordinary user: that user's runtime folder.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "libvirt").mkdir()
    (tmp_path / "libvirt" / "libvirt-sock").touch()
    assert rpc.unix_socket("qemu", "session") == f"{tmp_path}/libvirt/libvirt-sock"
    (tmp_path / "libvirt" / "virtqemud-sock").touch()
    assert rpc.unix_socket("qemu", "session") == f"{tmp_path}/libvirt/virtqemud-sock"
    assert rpc.Target("qemu:///session").socket == f"{tmp_path}/libvirt/virtqemud-sock"
    assert rpc.Target("qemu:///session?mode=legacy").socket == f"{tmp_path}/libvirt/libvirt-sock"
    # As root, /session is the system daemon's.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert rpc.unix_socket("qemu", "session", "legacy") == "/var/run/libvirt/libvirt-sock"
