"""Write a small ISO9660 image (the "CDROM" config drive) with Rock Ridge names and a volume label.

Pure Python, no genisoimage/xorriso needed where the CPI runs. Rock Ridge (SUSP SP/ER, RRIP NM/PX)
keeps the exact lower-case names the agent looks for (`ec2/latest/user-data`).
"""

from __future__ import annotations

import struct

BLOCK = 2048
_DATE7 = bytes([100, 1, 1, 0, 0, 0, 0])  # 2000-01-01 00:00:00 GMT, reproducible
_DATE17 = b"2000010100000000\x00"


def _both16(v: int) -> bytes:
    return struct.pack("<H", v) + struct.pack(">H", v)


def _both32(v: int) -> bytes:
    return struct.pack("<I", v) + struct.pack(">I", v)


def _iso_name(name: str, is_dir: bool) -> bytes:
    clean = "".join(c if c.isalnum() or c == "_" else "_" for c in name.upper())
    if is_dir:
        return clean[:31].encode()
    base, _, ext = name.upper().rpartition(".") if "." in name else (name.upper(), "", "")
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in base)[:24]
    ext = "".join(c if c.isalnum() or c == "_" else "_" for c in ext)[:5]
    return f"{base}.{ext};1".encode()


def _rr(name: str | None, is_dir: bool, root_dot: bool = False) -> bytes:
    su = b""
    if root_dot:
        su += b"SP" + bytes([7, 1, 0xBE, 0xEF, 0])
        ident, desc, src = b"RRIP_1991A", b"THE ROCK RIDGE INTERCHANGE PROTOCOL", b"BOSHCPI"
        su += b"ER" + bytes([8 + len(ident) + len(desc) + len(src), 1, len(ident), len(desc), len(src), 1])
        su += ident + desc + src
    mode = 0o040555 if is_dir else 0o100444
    su += b"PX" + bytes([36, 1]) + _both32(mode) + _both32(2 if is_dir else 1) + _both32(0) + _both32(0)
    if name is not None:
        raw = name.encode()
        su += b"NM" + bytes([5 + len(raw), 1, 0]) + raw
    return su


def _record(ident: bytes, extent: int, size: int, is_dir: bool, su: bytes) -> bytes:
    pad = b"\x00" if len(ident) % 2 == 0 else b""
    length = 33 + len(ident) + len(pad) + len(su)
    if length % 2:
        su += b"\x00"
        length += 1
    return (
        bytes([length, 0])
        + _both32(extent)
        + _both32(size)
        + _DATE7
        + bytes([2 if is_dir else 0, 0, 0])
        + _both16(1)
        + bytes([len(ident)])
        + ident
        + pad
        + su
    )


class _Node:
    def __init__(self, name: str, data: bytes | None, parent: _Node | None) -> None:
        self.name, self.data, self.parent = name, data, parent
        self.children: dict[str, _Node] = {}
        self.extent = 0
        self.size = 0
        self.number = 0

    @property
    def is_dir(self) -> bool:
        return self.data is None

    def sorted_children(self) -> list[_Node]:
        return sorted(self.children.values(), key=lambda n: _iso_name(n.name, n.is_dir))


def build(files: dict[str, bytes], label: str = "config-2") -> bytes:
    root = _Node("", None, None)
    for path, data in files.items():
        parts = [p for p in path.split("/") if p]
        node = root
        for part in parts[:-1]:
            node = node.children.setdefault(part, _Node(part, None, node))
        node.children[parts[-1]] = _Node(parts[-1], data, node)

    # Directories in breadth-first order (path table order).
    dirs: list[_Node] = [root]
    for d in dirs:
        dirs.extend(c for c in d.sorted_children() if c.is_dir)
    for i, d in enumerate(dirs, 1):
        d.number = i

    def dir_records(d: _Node) -> list[bytes]:
        parent = d.parent or d
        recs = [
            _record(b"\x00", d.extent, d.size, True, _rr(None, True, root_dot=d is root)),
            _record(b"\x01", parent.extent, parent.size, True, _rr(None, True)),
        ]
        for c in d.sorted_children():
            recs.append(_record(_iso_name(c.name, c.is_dir), c.extent, c.size, c.is_dir, _rr(c.name, c.is_dir)))
        return recs

    def blocks_for(records: list[bytes]) -> int:
        n, used = 1, 0
        for r in records:
            if used + len(r) > BLOCK:
                n, used = n + 1, 0
            used += len(r)
        return n

    # Layout: 16 system blocks, PVD, terminator, L and M path tables, directories, files.
    next_block = 20
    for d in dirs:  # first pass with provisional extents to size the directory records
        d.size = BLOCK
    for d in dirs:
        d.size = blocks_for(dir_records(d)) * BLOCK
    for d in dirs:
        d.extent = next_block
        next_block += d.size // BLOCK
    file_nodes: list[_Node] = []
    for d in dirs:
        for c in d.sorted_children():
            if not c.is_dir:
                c.size = len(c.data or b"")
                c.extent = next_block if c.size else 0
                next_block += -(-c.size // BLOCK)
                file_nodes.append(c)
    total = next_block

    image = bytearray(total * BLOCK)

    def path_table(big: bool) -> bytes:
        out = bytearray()
        for d in dirs:
            ident = b"\x00" if d is root else _iso_name(d.name, True)
            parent = (d.parent or d).number
            out += bytes([len(ident), 0])
            out += struct.pack(">I" if big else "<I", d.extent) + struct.pack(">H" if big else "<H", parent)
            out += ident + (b"\x00" if len(ident) % 2 else b"")
        return bytes(out)

    l_table, m_table = path_table(False), path_table(True)
    if len(l_table) > BLOCK:  # pragma: no cover - config drives hold a handful of files
        raise ValueError("too many directories for a config drive")
    image[18 * BLOCK : 18 * BLOCK + len(l_table)] = l_table
    image[19 * BLOCK : 19 * BLOCK + len(m_table)] = m_table

    for d in dirs:
        off, used = d.extent * BLOCK, 0
        for r in dir_records(d):
            if used + len(r) > BLOCK:
                off += BLOCK - used
                used = 0
            image[off : off + len(r)] = r
            off += len(r)
            used += len(r)
    for f in file_nodes:
        if f.size:
            image[f.extent * BLOCK : f.extent * BLOCK + f.size] = f.data or b""

    def text(s: str, n: int) -> bytes:
        return s.encode()[:n].ljust(n, b" ")

    pvd = bytearray(BLOCK)
    pvd[0:8] = b"\x01CD001\x01\x00"
    pvd[8:40] = text("LINUX", 32)
    pvd[40:72] = text(label, 32)
    pvd[80:88] = _both32(total)
    pvd[120:124] = _both16(1)
    pvd[124:128] = _both16(1)
    pvd[128:132] = _both16(BLOCK)
    pvd[132:140] = _both32(len(l_table))
    pvd[140:144] = struct.pack("<I", 18)
    pvd[148:152] = struct.pack(">I", 19)
    root_rec = _record(b"\x00", root.extent, root.size, True, b"")
    pvd[156 : 156 + len(root_rec)] = root_rec
    for off, n in ((190, 128), (318, 128), (446, 128), (574, 128), (702, 37), (739, 37), (776, 37)):
        pvd[off : off + n] = b" " * n
    pvd[574 : 574 + 7] = b"BOSHCPI"
    for off in (813, 830):
        pvd[off : off + 17] = _DATE17
    for off in (847, 864):
        pvd[off : off + 17] = b"0000000000000000\x00"
    pvd[881] = 1
    image[16 * BLOCK : 17 * BLOCK] = pvd
    image[17 * BLOCK : 17 * BLOCK + 7] = b"\xffCD001\x01"
    return bytes(image)


def read(image: bytes, path: str) -> bytes:
    """Read one file back from an image written by `build` (Rock Ridge names; used to reread settings)."""

    def records(extent: int, size: int):
        data = image[extent * BLOCK : extent * BLOCK + size]
        i = 0
        while i < len(data):
            length = data[i]
            if length == 0:
                i = (i // BLOCK + 1) * BLOCK
                continue
            rec = data[i : i + length]
            name_len = rec[32]
            ident = rec[33 : 33 + name_len]
            su = rec[33 + name_len + (1 - name_len % 2) :]
            name = None
            j = 0
            while j + 4 <= len(su):
                sig, ln = su[j : j + 2], su[j + 2]
                if ln == 0:
                    break
                if sig == b"NM":
                    name = su[j + 5 : j + ln].decode()
                j += ln
            if ident not in (b"\x00", b"\x01"):
                plain = ident.decode(errors="replace").split(";")[0].rstrip(".").lower()
                yield (
                    name or plain,
                    struct.unpack_from("<I", rec, 2)[0],
                    struct.unpack_from("<I", rec, 10)[0],
                    rec[25] & 2,
                )
            i += length

    root = image[16 * BLOCK + 156 : 16 * BLOCK + 190]
    extent, size = struct.unpack_from("<I", root, 2)[0], struct.unpack_from("<I", root, 10)[0]
    parts = [p for p in path.split("/") if p]
    for depth, part in enumerate(parts):
        for name, ext, sz, _is_dir in records(extent, size):
            if name == part:
                if depth == len(parts) - 1:
                    return image[ext * BLOCK : ext * BLOCK + sz]
                extent, size = ext, sz
                break
        else:
            raise FileNotFoundError(path)
    raise FileNotFoundError(path)
