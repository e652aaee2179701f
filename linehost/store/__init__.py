"""Durable records: attempts, assignments, the hash-chained audit log and the results outbox."""
