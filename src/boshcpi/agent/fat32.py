"""Write a small FAT32 filesystem image holding a few files, with long names and a volume label.

Pure Python, no mkfs: the CPI may run where dosfstools is not installed. The image is the minimum
size FAT32 allows (65,525+ clusters of one 512-byte sector), about 33 MiB, mostly zeros.
"""

from __future__ import annotations

import struct

SECTOR = 512
RESERVED = 32
CLUSTERS = 65_600
_EOC = 0x0FFFFFFF


def _short_name(name: str, taken: set[bytes], is_dir: bool) -> bytes:
    base, _dot, ext = name.rpartition(".") if "." in name and not is_dir else (name, "", "")
    clean = lambda s: "".join(c for c in s.upper() if c.isalnum() or c in "_-")  # noqa: E731
    b, e = clean(base)[:8], clean(ext)[:3]
    candidate = (b.ljust(8) + e.ljust(3)).encode()
    if candidate not in taken and b == base and e == ext:
        taken.add(candidate)
        return candidate
    for n in range(1, 1000):
        suffix = f"~{n}"
        candidate = (b[: 8 - len(suffix)] + suffix).ljust(8).encode() + e.ljust(3).encode()
        if candidate not in taken:
            taken.add(candidate)
            return candidate
    raise ValueError("too many similar names")


def _checksum(short: bytes) -> int:
    s = 0
    for byte in short:
        s = (((s & 1) << 7) + (s >> 1) + byte) & 0xFF
    return s


def _lfn_entries(name: str, short: bytes) -> list[bytes]:
    units = list(name.encode("utf-16-le"))
    chars = [bytes(units[i : i + 2]) for i in range(0, len(units), 2)]
    chunks = [chars[i : i + 13] for i in range(0, len(chars), 13)]
    if len(chars) % 13:
        chunks[-1] = chunks[-1] + [b"\x00\x00"] + [b"\xff\xff"] * (12 - len(chunks[-1]))
    csum = _checksum(short)
    entries = []
    for seq, chunk in enumerate(chunks, 1):
        order = seq | (0x40 if seq == len(chunks) else 0)
        c = b"".join(chunk)
        entries.append(struct.pack("<B10sBBB12sH4s", order, c[0:10], 0x0F, 0, csum, c[10:22], 0, c[22:26]))
    return list(reversed(entries))


def _dirent(short: bytes, attr: int, cluster: int, size: int) -> bytes:
    # Fixed timestamp (2000-01-01 00:00) keeps images reproducible.
    date, time_ = (20 << 9) | (1 << 5) | 1, 0
    return struct.pack(
        "<11sBBBHHHHHHHI", short, attr, 0, 0, time_, date, date, cluster >> 16, time_, date, cluster & 0xFFFF, size
    )


class _Node:
    def __init__(self, name: str, data: bytes | None) -> None:
        self.name, self.data = name, data
        self.children: dict[str, _Node] = {}
        self.cluster = 0

    @property
    def is_dir(self) -> bool:
        return self.data is None


def build(files: dict[str, bytes], label: str = "config-2") -> bytes:
    """Return the image bytes. `files` maps slash-separated paths to contents."""
    root = _Node("", None)
    for path, data in files.items():
        parts = [p for p in path.split("/") if p]
        node = root
        for part in parts[:-1]:
            node = node.children.setdefault(part, _Node(part, None))
        node.children[parts[-1]] = _Node(parts[-1], data)

    fat_sectors = -(-((CLUSTERS + 2) * 4) // SECTOR)
    data_start = RESERVED + 2 * fat_sectors
    total = data_start + CLUSTERS
    image = bytearray(total * SECTOR)
    fat = [0x0FFFFFF8, 0xFFFFFFFF]
    next_cluster = [2]

    def alloc(nbytes: int) -> int:
        count = max(1, -(-nbytes // SECTOR))
        first = next_cluster[0]
        for i in range(count):
            fat.append(first + i + 1 if i < count - 1 else _EOC)
        next_cluster[0] += count
        return first

    def write(cluster: int, payload: bytes) -> None:
        off = (data_start + cluster - 2) * SECTOR
        image[off : off + len(payload)] = payload

    def dir_bytes(node: _Node, parent_cluster: int, is_root: bool) -> bytes:
        taken: set[bytes] = set()
        out = bytearray()
        if is_root:
            out += _dirent(label.encode()[:11].ljust(11), 0x08, 0, 0)
        else:
            out += _dirent(b".          ", 0x10, node.cluster, 0)
            out += _dirent(b"..         ", 0x10, parent_cluster, 0)
        for child in node.children.values():
            short = _short_name(child.name, taken, child.is_dir)
            for e in _lfn_entries(child.name, short):
                out += e
            size = 0 if child.is_dir else len(child.data or b"")
            out += _dirent(short, 0x10 if child.is_dir else 0x20, child.cluster, size)
        return bytes(out)

    def entry_count(node: _Node, is_root: bool) -> int:
        n = 1 if is_root else 2
        for child in node.children.values():
            n += 1 + -(-len(child.name) // 13)
        return n

    # Allocate clusters: directories first (sized by their entries), then file data.
    def allocate(node: _Node, is_root: bool) -> None:
        node.cluster = alloc(entry_count(node, is_root) * 32 + 32)  # +1 entry: end marker
        for child in node.children.values():
            if child.is_dir:
                allocate(child, False)
            elif child.data:
                child.cluster = alloc(len(child.data))

    def emit(node: _Node, parent_cluster: int, is_root: bool) -> None:
        write(node.cluster, dir_bytes(node, 0 if parent_cluster == 2 else parent_cluster, is_root))
        for child in node.children.values():
            if child.is_dir:
                emit(child, node.cluster, False)
            elif child.data:
                write(child.cluster, child.data)

    allocate(root, True)
    emit(root, 0, True)
    used = next_cluster[0] - 2

    vol_label = label.encode()[:11].ljust(11)
    boot = struct.pack(
        "<3s8sHBHBHHBHHHIIIHHIHH12sBBBI11s8s",
        b"\xeb\x58\x90",
        b"BOSHCPI ",
        SECTOR,
        1,
        RESERVED,
        2,
        0,
        0,
        0xF8,
        0,
        32,
        64,
        0,
        total,
        fat_sectors,
        0,
        0,
        2,
        1,
        6,
        b"\x00" * 12,
        0x80,
        0,
        0x29,
        0x20000101,
        vol_label,
        b"FAT32   ",
    )
    sector0 = bytearray(SECTOR)
    sector0[: len(boot)] = boot
    sector0[510:512] = b"\x55\xaa"
    fsinfo = bytearray(SECTOR)
    struct.pack_into("<I", fsinfo, 0, 0x41615252)
    struct.pack_into("<III", fsinfo, 484, 0x61417272, CLUSTERS - used, next_cluster[0])
    struct.pack_into("<I", fsinfo, 508, 0xAA550000)
    image[0:SECTOR] = sector0
    image[SECTOR : 2 * SECTOR] = fsinfo
    image[6 * SECTOR : 7 * SECTOR] = sector0
    image[7 * SECTOR : 8 * SECTOR] = fsinfo
    fat_bytes = struct.pack(f"<{len(fat)}I", *fat)
    for copy in range(2):
        off = (RESERVED + copy * fat_sectors) * SECTOR
        image[off : off + len(fat_bytes)] = fat_bytes
    return bytes(image)


def read(image: bytes, path: str) -> bytes:
    """Read one file back from an image written by `build` (long names; used to reread settings).

    The image comes back from a drive a guest could have written to: every cluster chain is bounded
    by what the image holds (a loop or a chain longer than the image is an error, not a read that
    eats the memory of the machine running the CPI), and a file's chain by its own size."""
    if len(image) < 512:
        raise ValueError("config drive: too short for a FAT32 image")
    bps, spc, reserved, nfats = struct.unpack_from("<HBHB", image, 11)
    fat_size, root_cluster = struct.unpack_from("<I", image, 36)[0], struct.unpack_from("<I", image, 44)[0]
    if bps not in (512, 1024, 2048, 4096) or spc == 0 or spc & (spc - 1) or not reserved or not nfats:
        raise ValueError("config drive: not a FAT32 image")
    data_start = reserved + nfats * fat_size
    cluster_bytes = bps * spc
    most = len(image) // cluster_bytes

    def chain(first: int, size: int | None = None) -> bytes:
        limit = most if size is None else min(most, -(-size // cluster_bytes))
        out, c, seen = bytearray(), first, set()
        while 2 <= c < 0x0FFFFFF8 and len(seen) < limit:
            if c in seen:
                raise ValueError("config drive: a FAT cluster chain loops")
            seen.add(c)
            off = (data_start + (c - 2) * spc) * bps
            fat = reserved * bps + c * 4
            if off + cluster_bytes > len(image) or fat + 4 > len(image):
                raise ValueError("config drive: a FAT cluster chain leaves the image")
            out += image[off : off + cluster_bytes]
            c = struct.unpack_from("<I", image, fat)[0] & 0x0FFFFFFF
        return bytes(out)

    def entries(cluster: int):
        raw, lfn = chain(cluster), []
        for i in range(0, len(raw), 32):
            e = raw[i : i + 32]
            if e[0] == 0:
                return
            if e[0] == 0xE5:
                lfn = []
                continue
            if e[11] == 0x0F:
                part = e[1:11] + e[14:26] + e[28:32]
                lfn.insert(0, part.decode("utf-16-le").split("\x00")[0])
                continue
            short = e[0:8].decode().strip() + ("." + e[8:11].decode().strip() if e[8:11].strip() else "")
            name = "".join(lfn) or short.lower()
            lfn = []
            first = struct.unpack_from("<H", e, 20)[0] << 16 | struct.unpack_from("<H", e, 26)[0]
            yield name, e[11], first, struct.unpack_from("<I", e, 28)[0]

    cluster = root_cluster
    parts = [p for p in path.split("/") if p]
    for depth, part in enumerate(parts):
        for name, attr, first, size in entries(cluster):
            if name == part and not attr & 0x08:
                if depth == len(parts) - 1:
                    return chain(first, size)[:size] if size else b""
                cluster = first
                break
        else:
            raise FileNotFoundError(path)
    raise FileNotFoundError(path)
