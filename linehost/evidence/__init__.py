"""Audit evidence that holds against the database's own administrators (issue 14).

A Merkle tree (RFC 9162) over each line's audit rows, checkpoints of it signed with an audit key
that is not on the database host, kept outside the database, and inclusion proofs a third party
checks offline. docs/audit.md specifies the formats.
"""
