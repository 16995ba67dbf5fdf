"""A raw disk image as a qcow2 stream, in Python: what `qemu-img convert -O qcow2` gives, without
qemu-img (no stemcell has `qemu-utils`, and a director VM runs create_stemcell).

The layout follows QEMU's `docs/interop/qcow2.txt` (version 3, 64 KiB clusters, 16-bit refcounts):

    cluster 0            header (104 bytes; no extensions, no backing file, no features)
    refcount table       one 8-byte entry per refcount block
    refcount blocks      one 16-bit refcount per cluster of the file, 1 for every cluster written
    L1 table             one 8-byte entry per 512 MiB of the virtual disk
    L2 tables            one per 512 MiB that holds data; 8-byte entries, one per cluster
    data clusters        only the clusters of the raw image that are not all zeros, in order

Everything before the data is computed from the list of non-zero clusters, so the image streams in
one pass with its length known in advance (an upload's Content-Length). Clusters that are not
allocated read as zeros, which is exactly what the raw image held there.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8  # clusters one L2 table maps
REFCOUNTS_PER_BLOCK = CLUSTER // 2  # refcount_order 4: 16 bits each
COPIED = 1 << 63  # QCOW_OFLAG_COPIED: refcount is exactly 1
HEADER_LENGTH = 104


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


class Layout:
    """Where everything goes for a disk of `size` bytes whose non-zero clusters are `data` (sorted
    cluster indexes of the raw image)."""

    def __init__(self, size: int, data: Sequence[int]) -> None:
        if size <= 0:
            raise ValueError("a qcow2 image needs a positive size")
        # QEMU counts disks in 512-byte sectors: a qcow2 size it cannot divide loses its tail (a raw
        # image is read rounded up, so `qemu-img convert` rounds up too).
        self.size = _ceil(size, 512) * 512
        self.data = data
        self.l1_size = _ceil(size, CLUSTER * L2_ENTRIES)
        self.l1_clusters = _ceil(self.l1_size * 8, CLUSTER)
        # The L2 tables needed, by L1 index, in the order they are written.
        self.l2_indexes = sorted({c // L2_ENTRIES for c in data})
        fixed = 1 + self.l1_clusters + len(self.l2_indexes) + len(data)
        # The refcounts cover the refcount structures too: grow until they cover themselves.
        blocks = table = 1
        while True:
            total = fixed + table + blocks
            need_blocks = _ceil(total, REFCOUNTS_PER_BLOCK)
            need_table = _ceil(need_blocks * 8, CLUSTER)
            if (need_blocks, need_table) == (blocks, table):
                break
            blocks, table = need_blocks, need_table
        self.refcount_table_clusters = table
        self.refcount_blocks = blocks
        self.refcount_table_at = 1
        self.refcount_blocks_at = self.refcount_table_at + table
        self.l1_at = self.refcount_blocks_at + blocks
        self.l2_at = self.l1_at + self.l1_clusters
        self.data_at = self.l2_at + len(self.l2_indexes)
        self.clusters = self.data_at + len(data)

    @property
    def length(self) -> int:
        """The qcow2 file's length in bytes."""
        return self.clusters * CLUSTER

    def header(self) -> bytes:
        h = bytearray(CLUSTER)
        fields = (
            (0, 4, int.from_bytes(b"QFI\xfb", "big")),  # magic
            (4, 4, 3),  # version
            (8, 8, 0),  # backing_file_offset
            (16, 4, 0),  # backing_file_size
            (20, 4, CLUSTER_BITS),
            (24, 8, self.size),
            (32, 4, 0),  # crypt_method
            (36, 4, self.l1_size),
            (40, 8, self.l1_at * CLUSTER),
            (48, 8, self.refcount_table_at * CLUSTER),
            (56, 4, self.refcount_table_clusters),
            (60, 4, 0),  # nb_snapshots
            (64, 8, 0),  # snapshots_offset
            (72, 8, 0),  # incompatible_features
            (80, 8, 0),  # compatible_features
            (88, 8, 0),  # autoclear_features
            (96, 4, 4),  # refcount_order: 16-bit refcounts
            (100, 4, HEADER_LENGTH),
        )
        for at, n, value in fields:
            h[at : at + n] = value.to_bytes(n, "big")
        # Bytes 104-111 stay zero: the end-of-header-extensions marker.
        return bytes(h)

    def metadata(self) -> Iterator[bytes]:
        """Everything before the data clusters, cluster by cluster."""
        yield self.header()
        table = bytearray(self.refcount_table_clusters * CLUSTER)
        for i in range(self.refcount_blocks):
            table[i * 8 : i * 8 + 8] = ((self.refcount_blocks_at + i) * CLUSTER).to_bytes(8, "big")
        yield bytes(table)
        one = (1).to_bytes(2, "big")
        for i in range(self.refcount_blocks):
            used = min(max(self.clusters - i * REFCOUNTS_PER_BLOCK, 0), REFCOUNTS_PER_BLOCK)
            yield one * used + bytes((REFCOUNTS_PER_BLOCK - used) * 2)
        l1 = bytearray(self.l1_clusters * CLUSTER)
        for n, index in enumerate(self.l2_indexes):
            l1[index * 8 : index * 8 + 8] = (((self.l2_at + n) * CLUSTER) | COPIED).to_bytes(8, "big")
        yield bytes(l1)
        at = 0  # position in self.data
        for index in self.l2_indexes:
            l2 = bytearray(CLUSTER)
            while at < len(self.data) and self.data[at] // L2_ENTRIES == index:
                entry = self.data[at] % L2_ENTRIES
                l2[entry * 8 : entry * 8 + 8] = (((self.data_at + at) * CLUSTER) | COPIED).to_bytes(8, "big")
                at += 1
            yield bytes(l2)


def stream(size: int, data: Sequence[int], read: Callable[[int, int], bytes]) -> tuple[int, Iterator[bytes]]:
    """(length, chunks) of the qcow2 image of a raw disk of `size` bytes whose non-zero clusters are
    `data`; `read(offset, n)` reads the raw disk (a short read past its end is padded with zeros)."""
    layout = Layout(size, data)

    def chunks() -> Iterator[bytes]:
        yield from layout.metadata()
        batch: list[bytes] = []
        for c in data:
            piece = read(c * CLUSTER, CLUSTER)
            batch.append(piece if len(piece) == CLUSTER else piece + bytes(CLUSTER - len(piece)))
            if len(batch) == 16:  # 1 MiB writes
                yield b"".join(batch)
                batch = []
        if batch:
            yield b"".join(batch)

    return layout.length, chunks()
