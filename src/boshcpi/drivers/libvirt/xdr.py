"""XDR (RFC 4506), as far as libvirt's remote protocol uses it: 32-bit ints, 64-bit hypers, strings,
fixed and variable opaques, optional values (`remote_string` is a pointer: a bool, then the value)
and counted arrays. Everything is big-endian and padded to 4 bytes."""

from __future__ import annotations

from boshcpi.drivers.libvirt.errors import XDRError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# remote_protocol.x: REMOTE_STRING_MAX (4 MiB, as virnetprotocol.x VIR_NET_MESSAGE_STRING_MAX); longer
# strings are a broken or hostile message.
STRING_MAX = 4194304
LIST_MAX = 65536


class Packer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def int(self, v: int) -> Packer:
        self.buf += (v & 0xFFFFFFFF).to_bytes(4, "big")
        return self

    uint = int

    def hyper(self, v: int) -> Packer:
        self.buf += (v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        return self

    uhyper = hyper

    def opaque(self, data: bytes) -> Packer:
        """Variable-length opaque: its length, the bytes, padding."""
        self.int(len(data))
        return self.fixed(data)

    def fixed(self, data: bytes) -> Packer:
        self.buf += data
        pad = -len(data) % 4
        if pad:
            self.buf += b"\0" * pad
        return self

    def string(self, s: str) -> Packer:
        return self.opaque(s.encode())

    def optional_string(self, s: str | None) -> Packer:
        if s is None:
            return self.int(0)
        return self.int(1).string(s)

    def bytes(self) -> bytes:
        return bytes(self.buf)


class Unpacker:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise XDRError(f"message ends {end - len(self.data)} bytes early")
        out = bytes(self.data[self.pos : end])
        self.pos = end
        return out

    def uint(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def int(self) -> int:
        return int.from_bytes(self._take(4), "big", signed=True)

    def uhyper(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def hyper(self) -> int:
        return int.from_bytes(self._take(8), "big", signed=True)

    def bool(self) -> bool:
        return self.uint() != 0

    def fixed(self, n: int) -> bytes:
        out = self._take(n)
        self._take(-n % 4)
        return out

    def opaque(self, limit: int = STRING_MAX) -> bytes:
        n = self.uint()
        if n > limit:
            raise XDRError(f"a field of {n} bytes is over the protocol's limit of {limit}")
        return self.fixed(n)

    def string(self) -> str:
        return self.opaque().decode("utf-8", "replace")

    def optional(self, read: Callable[[], Any]) -> Any:
        return read() if self.bool() else None

    def array(self, read: Callable[[], Any], limit: int = LIST_MAX) -> list[Any]:
        n = self.uint()
        if n > limit:
            raise XDRError(f"a list of {n} items is over the limit of {limit}")
        return [read() for _ in range(n)]

    def done(self) -> bool:
        return self.pos >= len(self.data)
