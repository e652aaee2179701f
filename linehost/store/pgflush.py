"""PostgreSQL: a group commit's writes as one statement (a data-modifying CTE over arrays).

The generic flush (`Batch.flush`) sends one statement per table: six or seven round trips per
group commit, each of which waits for the line's busy event loop to come back to it. Here the
assignment updates and inserts, the attempt inserts and updates, the audit rows, the outbox rows
and the outbox `sent_at` marks travel as arrays in ONE statement with one fixed text (prepared
once per connection). It writes exactly the rows the generic flush writes
(tests/store/test_pg_flush.py compares both, row by row and hash by hash).

Not taken here (the generic flush runs instead): a batch with onboarding rows, and the
assignment updates of a batch that also inserts an assignment sharing their key or UID (a
supersede): the sub-statements of one CTE run in no defined order, and the partial unique
indexes need the old assignment to leave the live set first.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, cast

from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from linehost.protocol.outcomes import LIVE_STATUSES, AssignmentStatus, Outcome
from linehost.store.models import assignments, attempts, audit_log
from linehost.store.rows import ASSIGNMENT_COLUMNS, ATTEMPT_COLUMNS, AssignmentRow, AttemptRow

if TYPE_CHECKING:
    from linehost.store.batch import Batch, ChainHead, Wants

#: Attempt columns an operation may change on an attempt that is already stored (EndOp,
#: RecoverOp); a change outside them sends the batch to the generic flush.
ATTEMPT_UPDATE: Final = (
    "outcome", "detail", "device_code", "dac_serial", "ended_at", "transcript",
    "attest_nonce", "attest_signature",
)  # fmt: skip
#: The same for assignments (status moves: Batch.set_status).
ASSIGNMENT_UPDATE: Final = ("status", "updated_at", "confirmed_at")

_PG: Final = postgresql.dialect()  # type: ignore[no-untyped-call]


def _pg_type(column: Any) -> str:
    """The column's PostgreSQL type, for an array cast (`$n::TYPE[]`)."""
    return str(column.type.compile(dialect=_PG))


# From the tables themselves: a column added to a model is written here too.
_ASSIGNMENT_INSERT: Final = tuple((c.name, _pg_type(c)) for c in assignments.c if c.name != "id")
_ATTEMPT_INSERT: Final = tuple((c.name, _pg_type(c)) for c in attempts.c)
_ATTEMPT_UPDATE_TYPES: Final = tuple(_pg_type(attempts.c[name]) for name in ATTEMPT_UPDATE)
_AUDIT_INSERT: Final = tuple((c.name, _pg_type(c)) for c in audit_log.c if c.name != "id")


class _Params:
    """Numbered `$n::type[]` array parameters, in order."""

    def __init__(self) -> None:
        self.values: list[list[Any]] = []

    def array(self, sql_type: str) -> str:
        self.values.append([])
        return f"${len(self.values)}::{sql_type}[]"


def _build() -> tuple[str, int]:
    """The statement's text and its number of parameters (all arrays, built once)."""
    p = _Params()
    au_id, au_status, au_updated = p.array("bigint"), p.array("text"), p.array("timestamptz")
    au_set_confirmed, au_confirmed = p.array("boolean"), p.array("timestamptz")
    ai = [p.array(t) for _, t in _ASSIGNMENT_INSERT]
    ti = [p.array(t) for _, t in _ATTEMPT_INSERT]
    ti_new_serial = p.array("text")  # the serial of an assignment inserted in this statement
    tu_id, tu_mask = p.array("text"), p.array("integer")
    tu = [p.array(t) for t in _ATTEMPT_UPDATE_TYPES]
    ev = [p.array(t) for _, t in _AUDIT_INSERT]
    ob_line, ob_payload, ob_at = p.array("text"), p.array("text"), p.array("timestamptz")
    ob_topic = p.array("text")
    sent_id, sent_line, sent_at = p.array("bigint"), p.array("text"), p.array("timestamptz")

    a_cols = ", ".join(c for c, _ in _ASSIGNMENT_INSERT)
    t_cols = [c for c, _ in _ATTEMPT_INSERT]
    t_select = ", ".join(
        "COALESCE(u.assignment_id, n.id)" if c == "assignment_id" else f"u.{c}" for c in t_cols
    )
    t_sets = ", ".join(
        f"{c} = CASE WHEN u.m & {1 << i} <> 0 THEN u.{c} ELSE t.{c} END"
        for i, c in enumerate(ATTEMPT_UPDATE)
    )
    e_cols = ", ".join(c for c, _ in _AUDIT_INSERT)
    sql = f"""
WITH upd_assignments AS (
    UPDATE assignments AS t SET status = u.status, updated_at = u.updated_at,
        confirmed_at = CASE WHEN u.set_confirmed THEN u.confirmed_at ELSE t.confirmed_at END
    FROM unnest({au_id}, {au_status}, {au_updated}, {au_set_confirmed}, {au_confirmed})
        AS u(id, status, updated_at, set_confirmed, confirmed_at)
    WHERE t.id = u.id
), new_assignments AS (
    INSERT INTO assignments ({a_cols})
    SELECT * FROM unnest({", ".join(ai)})
    RETURNING id, dac_serial
), new_attempts AS (
    INSERT INTO attempts ({", ".join(t_cols)})
    SELECT {t_select}
    FROM unnest({", ".join(ti)}, {ti_new_serial}) AS u({", ".join(t_cols)}, new_serial)
    LEFT JOIN new_assignments AS n ON n.dac_serial = u.new_serial
), upd_attempts AS (
    UPDATE attempts AS t SET {t_sets}
    FROM unnest({tu_id}, {tu_mask}, {", ".join(tu)})
        AS u(attempt_id, m, {", ".join(ATTEMPT_UPDATE)})
    WHERE t.attempt_id = u.attempt_id
), audit AS (
    INSERT INTO audit_log ({e_cols}) SELECT * FROM unnest({", ".join(ev)})
), results AS (
    INSERT INTO outbox (line, payload, created_at, topic)
    SELECT * FROM unnest({ob_line}, {ob_payload}, {ob_at}, {ob_topic})
), sent AS (
    UPDATE outbox AS o SET sent_at = u.at
    FROM unnest({sent_id}, {sent_line}, {sent_at}) AS u(id, line, at)
    WHERE o.id = u.id AND o.line = u.line AND o.sent_at IS NULL
)
SELECT id, dac_serial FROM new_assignments
"""
    return sql, len(p.values)


GROUP_COMMIT_SQL, _N_PARAMS = _build()


def _build_load() -> str:
    """One statement for a batch's reads: its attempts, then the assignments they and its
    keys / UIDs name, locked (FOR UPDATE, in id order, as the generic load)."""
    live = ", ".join(f"'{s.value}'" for s in sorted(LIVE_STATUSES))  # as LIVE_PREDICATE
    att = ", ".join(ATTEMPT_COLUMNS)
    asg = ", ".join(f"a.{c}" for c in [*ASSIGNMENT_COLUMNS, "status"])
    att_null = ", ".join(f"NULL::{_ATTEMPT_TYPES[c]}" for c in ATTEMPT_COLUMNS)
    asg_null = ", ".join(f"NULL::{_ASSIGNMENT_TYPES[c]}" for c in [*ASSIGNMENT_COLUMNS, "status"])
    asg_out = ", ".join(f"asg.{c}" for c in [*ASSIGNMENT_COLUMNS, "status"])
    # The ids as one array (an InitPlan): `id = ANY(array)` keeps to the primary key index,
    # where `id IN (SELECT ...) OR ...` would scan the table; key and UID as two OR arms, one
    # per partial unique index (EXPLAIN: a BitmapOr of three index conditions).
    return f"""
WITH att AS (
    SELECT {att} FROM attempts
    WHERE attempt_id = ANY($1::text[]) OR (line = $2::text AND outcome IS NULL)
), asg AS (
    SELECT {asg},
        EXISTS (SELECT 1 FROM revocations AS r WHERE r.dac_serial = a.dac_serial) AS revoked
    FROM assignments AS a
    WHERE a.id = ANY(ARRAY(SELECT assignment_id FROM att WHERE assignment_id IS NOT NULL)
                     || $3::bigint[])
       OR (a.status IN ({live}) AND a.public_key_sha256 = ANY($4::text[]))
       OR (a.status IN ({live}) AND a.uid = ANY($5::text[]))
    ORDER BY a.id
    FOR UPDATE OF a
)
SELECT 1, {", ".join(f"att.{c}" for c in ATTEMPT_COLUMNS)}, {asg_null}, NULL::boolean FROM att
UNION ALL
SELECT 2, {att_null}, {asg_out}, asg.revoked FROM asg
"""


_ATTEMPT_TYPES: Final = dict(_ATTEMPT_INSERT)
_ASSIGNMENT_TYPES: Final = {c.name: _pg_type(c) for c in assignments.c}
LOAD_SQL: Final = _build_load()


async def load(batch: Batch, conn: AsyncConnection, wants: Wants) -> None:
    """The batch's attempts and (locked) assignments, in one statement."""
    if not (wants.attempt_ids or wants.running_line or wants.assignment_ids or wants.keys
            or wants.uids):  # fmt: skip
        return
    params = (
        list(wants.attempt_ids),
        wants.running_line,
        list(wants.assignment_ids),
        list(wants.keys),
        list(wants.uids),
    )
    n_att = len(ATTEMPT_COLUMNS)
    asg_names = [*ASSIGNMENT_COLUMNS, "status"]
    result = await conn.exec_driver_sql(LOAD_SQL, params)
    found: list[tuple[AssignmentRow, bool]] = []
    for row in result.all():
        if row[0] == 1:
            values = row[1 : 1 + n_att]
            attempt = AttemptRow(**dict(zip(ATTEMPT_COLUMNS, values, strict=True)))
            batch.found_attempt(attempt, wants.running_line)
        else:
            fields = dict(zip(asg_names, row[1 + n_att : -1], strict=True))
            fields["status"] = AssignmentStatus(fields["status"])
            found.append((AssignmentRow(**fields), bool(row[-1])))
    found.sort(key=lambda pair: pair[0].id or 0)  # id order, as the generic load gives them
    for assignment, revoked in found:
        batch.found_assignment(assignment, revoked=revoked)
    batch.running.sort(key=lambda a: (a.started_at, a.attempt_id))


def fits(batch: Batch) -> bool:
    """True when `batch` can be written by `flush` (else: the generic flush)."""
    if batch.onboarding.has_new():
        return False
    for row in batch.assignments.values():
        if row.changes and not set(row.changes) <= set(ASSIGNMENT_UPDATE):
            return False
    for attempt in batch.attempts.values():
        if (
            not attempt.is_new
            and attempt.changes
            and not set(attempt.changes) <= set(ATTEMPT_UPDATE)
        ):
            return False
    return True


def supersedes(batch: Batch) -> bool:
    """True when an updated assignment shares its key or UID with one inserted in `batch`."""
    if not batch.new_assignments:
        return False
    keys = {r.public_key_sha256 for r in batch.new_assignments}
    uids = {r.uid for r in batch.new_assignments}
    return any(
        r.changes and (r.public_key_sha256 in keys or r.uid in uids)
        for r in batch.assignments.values()
    )


async def flush(
    batch: Batch, conn: AsyncConnection, head: ChainHead | None, *, topic: str
) -> ChainHead | None:
    """Write every change of `batch` in one statement (after the slot moves and, for a
    supersede, the assignment updates), results to the outbox under `topic`; returns the new
    chain head."""
    columns: list[list[Any]] = [[] for _ in range(_N_PARAMS)]
    au_id, au_status, au_updated, au_set_confirmed, au_confirmed = columns[0:5]
    i = 5
    ai = columns[i : i + len(_ASSIGNMENT_INSERT)]
    i += len(_ASSIGNMENT_INSERT)
    ti = columns[i : i + len(_ATTEMPT_INSERT)]
    i += len(_ATTEMPT_INSERT)
    ti_new_serial = columns[i]
    tu_id, tu_mask = columns[i + 1], columns[i + 2]
    i += 3
    tu = columns[i : i + len(ATTEMPT_UPDATE)]
    i += len(ATTEMPT_UPDATE)
    ev = columns[i : i + len(_AUDIT_INSERT)]
    i += len(_AUDIT_INSERT)
    ob_line, ob_payload, ob_at, ob_topic, sent_id, sent_line, sent_at = columns[i : i + 7]

    await batch.write_work_orders(conn)
    if supersedes(batch):
        await batch.update_assignments(conn)  # first: frees the key / UID for the insert
    else:
        for row in batch.assignments.values():
            if not row.changes:
                continue
            au_id.append(row.id)
            au_status.append(_plain(row.status))
            au_updated.append(row.updated_at)
            au_set_confirmed.append("confirmed_at" in row.changes)
            au_confirmed.append(row.confirmed_at)
    for new in batch.new_assignments:
        params = new.insert_params()
        for col, (name, _) in zip(ai, _ASSIGNMENT_INSERT, strict=True):
            col.append(params[name])
    for attempt in batch.attempts.values():
        if attempt.is_new:
            params = attempt.insert_params()
            for col, (name, _) in zip(ti, _ATTEMPT_INSERT, strict=True):
                col.append(params[name])
            bound = attempt.assignment
            ti_new_serial.append(
                bound.dac_serial if bound is not None and bound.id is None else None
            )
        elif attempt.changes:
            mask = 0
            for bit, name in enumerate(ATTEMPT_UPDATE):
                if name in attempt.changes:
                    mask |= 1 << bit
            tu_id.append(attempt.attempt_id)
            tu_mask.append(mask)
            for col, name in zip(tu, ATTEMPT_UPDATE, strict=True):
                col.append(_plain(getattr(attempt, name)))
    audit_rows, head = batch.audit_rows(head)
    for audit in audit_rows:
        for col, (name, _) in zip(ev, _AUDIT_INSERT, strict=True):
            col.append(audit[name])
    for payload in batch.results:
        ob_line.append(batch.line)
        ob_payload.append(payload)
        ob_at.append(batch.now)
        ob_topic.append(topic)
    for ids, at in batch.sent:
        for outbox_id in ids:
            sent_id.append(outbox_id)
            sent_line.append(batch.line)
            sent_at.append(at)
    result = await conn.exec_driver_sql(GROUP_COMMIT_SQL, tuple(columns))
    rows = cast("list[tuple[int, str]]", result.all())  # (id, dac_serial) per new assignment
    by_serial = {serial: new_id for new_id, serial in rows}
    for new in batch.new_assignments:
        new.id = by_serial[new.dac_serial]
    return head


def _plain(value: Any) -> Any:
    if isinstance(value, AssignmentStatus | Outcome):
        return value.value
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()}: linehost stores aware UTC")
    return value
