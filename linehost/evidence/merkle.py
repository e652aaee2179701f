"""RFC 9162 Merkle tree hashing: leaf and node hashes, roots, inclusion and consistency proofs.

Pure functions over SHA-256 digests (bytes); no I/O. Section numbers refer to RFC 9162.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """H(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """H(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over the leaf hashes `leaves` (2.1.1)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def inclusion_path(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) (2.1.3.1): the audit path of leaf `index` in the tree of `leaves`."""
    n = len(leaves)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} outside a tree of {n}")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_path(index, leaves[:k]), root_of(leaves[k:])]
    return [*inclusion_path(index - k, leaves[k:]), root_of(leaves[:k])]


def verify_inclusion(
    index: int, size: int, leaf: bytes, path: Sequence[bytes], root: bytes
) -> bool:
    """True when `path` proves leaf hash `leaf` at `index` in the tree of `size` with `root`
    (2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def consistency_proof(old_size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (2.1.4.1): proves the tree of the first `old_size` leaves is a prefix."""
    n = len(leaves)
    if not 0 < old_size <= n:
        raise ValueError(f"no consistency proof from {old_size} to {n}")
    return _subproof(old_size, leaves, True)


def consistency_proof_from(
    old_size: int, frontier: Sequence[bytes], new_leaves: Sequence[bytes]
) -> list[bytes]:
    """PROOF(m, D[n]) from the old tree's frontier and the leaves added since: what a
    CompactTree's owner can prove without the old leaves."""
    if old_size <= 0 or len(frontier) != bin(old_size).count("1"):
        raise ValueError(f"no frontier of a tree of {old_size}")
    blocks: dict[tuple[int, int], bytes] = {}
    start = 0
    for bit, node in zip(
        (b for b in range(old_size.bit_length() - 1, -1, -1) if old_size >> b & 1),
        frontier,
        strict=True,
    ):
        blocks[(start, start + (1 << bit))] = node
        start += 1 << bit

    def mth(lo: int, hi: int) -> bytes:
        if lo >= old_size:
            return root_of(new_leaves[lo - old_size : hi - old_size])
        if (lo, hi) in blocks:
            return blocks[(lo, hi)]
        if hi - lo == 1:
            raise ValueError(f"leaf {lo} is inside a frontier subtree")
        k = _split(hi - lo)
        return node_hash(mth(lo, lo + k), mth(lo + k, hi))

    n = old_size + len(new_leaves)
    return _ranged_subproof(old_size, 0, n, True, mth)


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """True when `proof` shows the tree (`old_size`, `old_root`) is a prefix of (`new_size`,
    `new_root`) (2.1.4.2)."""
    if old_size <= 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class CompactTree:
    """An append-only tree kept as its perfect subtrees (the frontier): O(log n) hashes."""

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Resume a tree of `size` leaves from its frontier (largest subtree first)."""
        if len(frontier) != bin(size).count("1"):
            raise ValueError(f"a tree of {size} leaves has {bin(size).count('1')} subtrees")
        self.size = size
        self._frontier = list(frontier)

    @property
    def frontier(self) -> list[bytes]:
        """The roots of the perfect subtrees, largest first."""
        return list(self._frontier)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash."""
        node, size = leaf, self.size
        while size & 1:  # merge equal-sized subtrees, as binary addition carries
            node = node_hash(self._frontier.pop(), node)
            size >>= 1
        self._frontier.append(node)
        self.size += 1

    def root(self) -> bytes:
        """MTH of every leaf so far."""
        if not self._frontier:
            return EMPTY_ROOT
        node = self._frontier[-1]
        for left in reversed(self._frontier[:-1]):
            node = node_hash(left, node)
        return node


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _ranged_subproof(
    m: int, lo: int, hi: int, complete: bool, mth: Callable[[int, int], bytes]
) -> list[bytes]:
    n = hi - lo
    if m == n:
        return [] if complete else [mth(lo, hi)]
    k = _split(n)
    if m <= k:
        return [*_ranged_subproof(m, lo, lo + k, complete, mth), mth(lo + k, hi)]
    return [*_ranged_subproof(m - k, lo + k, hi, False, mth), mth(lo, lo + k)]


def _subproof(m: int, leaves: Sequence[bytes], complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root_of(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete), root_of(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), root_of(leaves[:k])]
