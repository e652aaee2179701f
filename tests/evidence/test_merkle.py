"""RFC 9162 hashing: known roots, and every inclusion / consistency proof of small trees."""

from __future__ import annotations

import hashlib

import pytest

from linehost.evidence.merkle import (
    CompactTree,
    consistency_proof,
    consistency_proof_from,
    inclusion_path,
    leaf_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 reference test vectors (certificate-transparency merkle tree tests).
LEAVES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
          "606162636465666768696a6b6c6d6e6f"]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def test_reference_roots() -> None:
    hashed = [leaf_hash(bytes.fromhex(x)) for x in LEAVES]
    tree = CompactTree()
    for n, (leaf, root) in enumerate(zip(hashed, ROOTS, strict=True), start=1):
        tree.append(leaf)
        assert root_of(hashed[:n]).hex() == root
        assert tree.root().hex() == root
    assert root_of([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("n", [*range(1, 18), 31, 32, 33, 100])
def test_every_inclusion_proof_verifies_and_any_change_fails(n: int) -> None:
    hashed = leaves(n)
    root = root_of(hashed)
    for i in range(n):
        path = inclusion_path(i, hashed)
        assert verify_inclusion(i, n, hashed[i], path, root)
        assert not verify_inclusion(i, n, leaf_hash(b"other"), path, root)
        if n > 1:
            assert not verify_inclusion((i + 1) % n, n, hashed[i], path, root)
            assert not verify_inclusion(i, n, hashed[i], path[:-1], root)
            bent = [bytes([path[0][0] ^ 1]) + path[0][1:], *path[1:]]
            assert not verify_inclusion(i, n, hashed[i], bent, root)


@pytest.mark.parametrize("n", [*range(1, 18), 32, 33, 100])
def test_every_consistency_proof_verifies_and_a_rewrite_fails(n: int) -> None:
    hashed = leaves(n)
    new_root = root_of(hashed)
    for m in range(1, n + 1):
        old_root = root_of(hashed[:m])
        proof = consistency_proof(m, hashed)
        assert verify_consistency(m, n, old_root, new_root, proof), (m, n)
        forged = root_of([leaf_hash(b"x"), *hashed[1:m]])
        assert not verify_consistency(m, n, forged, new_root, proof)
        if m < n:
            rewritten = root_of([leaf_hash(b"x"), *hashed[1:]])
            assert not verify_consistency(m, n, old_root, rewritten, proof)


@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 16, 33, 64, 100])
def test_consistency_from_the_frontier_equals_the_full_proof(n: int) -> None:
    hashed = leaves(n)
    for m in range(1, n):
        tree = CompactTree()
        for leaf in hashed[:m]:
            tree.append(leaf)
        proof = consistency_proof_from(m, tree.frontier, hashed[m:])
        assert proof == consistency_proof(m, hashed), (m, n)


def test_compact_tree_resumes_from_its_frontier() -> None:
    hashed = leaves(45)
    tree = CompactTree()
    for leaf in hashed[:37]:
        tree.append(leaf)
    resumed = CompactTree(tree.size, tree.frontier)
    for leaf in hashed[37:]:
        resumed.append(leaf)
    assert resumed.root() == root_of(hashed)
    with pytest.raises(ValueError, match="subtrees"):
        CompactTree(5, tree.frontier[:1])
