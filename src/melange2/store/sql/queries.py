"""Every SQL statement the store runs, one function per query, named by intent.

Functions take an open :class:`~sqlalchemy.Connection` inside a
transaction the caller owns, and convert rows to domain values here, at the boundary.
They are dialect-neutral (SQLAlchemy Core with ``RETURNING``; ``FOR UPDATE SKIP LOCKED``
where rows are claimed, which SQLite, with its single writer, leaves out); dialect
set-up lives in :mod:`melange2.store.sql.sqlite` and :mod:`melange2.store.sql.postgres`.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    RowMapping,
    Select,
    Update,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError, StatementError

from melange2.auth import Role, Token
from melange2.buildkit.tls import ClientTLS
from melange2.ids import BuildId
from melange2.jobs import (
    Attempt,
    Backend,
    Build,
    BuildSpec,
    BuildStatus,
    PackageJob,
    PackageStatus,
    sources_of,
)
from melange2.store.base import Move, StoredBackend
from melange2.store.rules import LEASE_EXPIRED_REASON, UNFINISHED_BUILD_STATES
from melange2.store.sql.tables import backends, builds, packages, tokens

# rows <-> values


def build_values(build: Build) -> dict[str, Any]:
    return {
        "id": build.id,
        "status": BuildStatus(build.status).value,
        "spec": build.spec.to_json(),
        "created_at": build.created_at,
        "started_at": build.started_at,
        "finished_at": build.finished_at,
        "cancel_requested": build.cancel_requested,
        "submitted_by": build.submitted_by,
        "source_commit": build.source_commit,
    }


def build_from_row(row: RowMapping, jobs: Sequence[PackageJob]) -> Build:
    return Build(
        id=BuildId(row["id"]),
        status=BuildStatus(row["status"]),
        spec=BuildSpec.from_json(row["spec"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        cancel_requested=bool(row["cancel_requested"]),
        packages=tuple(jobs),
        submitted_by=row["submitted_by"],
        source_commit=row["source_commit"],
    )


def _backend_json(backend: Backend | None) -> dict[str, Any] | None:
    if backend is None:
        return None
    return {"addr": backend.addr, "arch": backend.arch, "labels": dict(backend.labels)}


#: how a PackageJob field becomes a column value (identity when absent)
_PACKAGE_COLUMN_VALUE: Mapping[str, Any] = {
    "status": lambda v: PackageStatus(v).value,
    "dependencies": list,
    "priority": float,
    "backend": _backend_json,
}


def package_values(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for PackageJob fields."""
    return {
        key: _PACKAGE_COLUMN_VALUE.get(key, lambda v: v)(value) for key, value in fields.items()
    }


def package_from_row(row: RowMapping) -> PackageJob:
    backend = row["backend"]
    return PackageJob(
        build_id=BuildId(row["build_id"]),
        name=row["name"],
        seq=row["seq"],
        status=PackageStatus(row["status"]),
        config_yaml=row["config_yaml"],
        arch=row["arch"],
        dependencies=tuple(row["dependencies"]),
        priority=float(row["priority"]),
        reason=row["reason"],
        error=row["error"],
        attempts=row["attempts"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        log_path=row["log_path"],
        output_path=row["output_path"],
        cached=bool(row["cached"]),
        input_digest=row["input_digest"],
        backend=None
        if backend is None
        else Backend(addr=backend["addr"], arch=backend["arch"], labels=dict(backend["labels"])),
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        cpu_millis=row["cpu_millis"],
        memory_bytes=row["memory_bytes"],
    )


# builds


def insert_build(conn: Connection, build: Build) -> None:
    """The build and its packages (the caller's transaction makes it atomic)."""
    conn.execute(insert(builds), [build_values(build)])
    rows: list[dict[str, Any]] = []
    for job in build.packages:
        if job.build_id != build.id:
            raise ValueError(f"package {job.name!r} belongs to {job.build_id}, not {build.id}")
        rows.append(package_values({c.name: getattr(job, c.name) for c in packages.c}))
    if rows:
        conn.execute(insert(packages), rows)


def fetch_build(conn: Connection, build_id: BuildId, *, packages: bool = True) -> Build | None:
    """The build, with its packages unless ``packages`` is false."""
    rows = (conn.execute(select(builds).where(builds.c.id == build_id))).mappings().all()
    found = with_packages(conn, rows) if packages else [build_from_row(r, ()) for r in rows]
    return found[0] if found else None


def fetch_builds_page(
    conn: Connection,
    *,
    limit: int,
    after: tuple[datetime, BuildId] | None,
    status: BuildStatus | None,
    packages: bool = True,
) -> list[Build]:
    """Up to ``limit`` builds newest first (ties by id), strictly after ``after``
    (without their packages if ``packages`` is false)."""
    query = select(builds).order_by(builds.c.created_at.desc(), builds.c.id.desc()).limit(limit)
    if status is not None:
        query = query.where(builds.c.status == BuildStatus(status).value)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                builds.c.created_at < at,
                and_(builds.c.created_at == at, builds.c.id < last_id),
            )
        )
    rows = (conn.execute(query)).mappings().all()
    if not packages:
        return [build_from_row(row, ()) for row in rows]
    return with_packages(conn, rows)


def build_exists(conn: Connection, build_id: BuildId) -> bool:
    return conn.scalar(select(builds.c.id).where(builds.c.id == build_id)) is not None


def package_counts(conn: Connection, ids: Sequence[str]) -> dict[str, dict[PackageStatus, int]]:
    """How many packages each build has in each status (one grouped query)."""
    counts: dict[str, dict[PackageStatus, int]] = {i: {} for i in ids}
    if not ids:
        return counts
    query = (
        select(packages.c.build_id, packages.c.status, func.count())
        .where(packages.c.build_id.in_(ids))
        .group_by(packages.c.build_id, packages.c.status)
    )
    for build_id, status, n in conn.execute(query):
        counts[build_id][PackageStatus(status)] = int(n)
    return counts


def fetch_unfinished_builds(conn: Connection) -> list[Build]:
    """Builds still pending or running, oldest first."""
    query = (
        select(builds)
        .where(builds.c.status.in_([s.value for s in UNFINISHED_BUILD_STATES]))
        .order_by(builds.c.created_at, builds.c.id)
    )
    return with_packages(conn, (conn.execute(query)).mappings().all())


def with_packages(conn: Connection, rows: Sequence[RowMapping]) -> list[Build]:
    """Builds from build rows, loading all their packages in one query (compiled once
    per number of builds, rows read as :func:`_move_rows` reads its own)."""
    ids = [row["id"] for row in rows]
    if not ids:
        return []
    jobs: dict[str, list[PackageJob]] = {}
    prepared = _prepared_packages_of(conn.dialect, len(ids))
    for job in prepared.run(conn, {f"b_{i}": build_id for i, build_id in enumerate(ids)}):
        jobs.setdefault(job.build_id, []).append(job)
    return [build_from_row(row, jobs.get(row["id"], ())) for row in rows]


@functools.lru_cache(maxsize=256)
def _prepared_packages_of(dialect: Dialect, count: int) -> _Prepared:
    """The packages of ``count`` builds (``b_0`` ...), by build, ``seq`` and name."""
    query = (
        select(*packages.c)
        .where(packages.c.build_id.in_([bindparam(f"b_{i}") for i in range(count)]))
        .order_by(packages.c.build_id, packages.c.seq, packages.c.name)
    )
    return _Prepared.of(query, dialect)


def update_build(conn: Connection, build_id: BuildId, fields: Mapping[str, Any]) -> bool:
    """Set build columns; ``False`` if there is no such build."""
    values = dict(fields)
    if "status" in values:
        values["status"] = BuildStatus(values["status"]).value
    if "spec" in values:
        values["spec"] = values["spec"].to_json()
    if not values:
        found = conn.execute(select(builds.c.id).where(builds.c.id == build_id))
        return found.first() is not None
    result = conn.execute(update(builds).where(builds.c.id == build_id).values(values))
    return result.rowcount > 0


# packages


def transition_package(
    conn: Connection,
    build_id: BuildId,
    name: str,
    to: PackageStatus,
    allowed: Iterable[PackageStatus],
    fields: Mapping[str, Any],
    *,
    owner: str | None = None,
) -> PackageJob | None:
    """The compare-and-set: move the package to ``to`` and set ``fields`` in one guarded
    UPDATE, only if its status is in ``allowed`` (and its ``lease_owner`` is ``owner``,
    when given). ``None`` when no row matched."""
    rows = _move_packages(conn, build_id, (name,), to, allowed, fields, owner=owner)
    return rows[0] if rows else None


def transition_packages(
    conn: Connection,
    build_id: BuildId,
    names: Sequence[str],
    to: PackageStatus,
    allowed: Iterable[PackageStatus],
    fields: Mapping[str, Any],
) -> list[PackageJob]:
    """:func:`transition_package` for several packages of one build in one UPDATE: those
    whose status is in ``allowed`` move (in ``seq`` order in the result), the rest stay."""
    if not names:
        return []
    moved = _move_packages(conn, build_id, names, to, allowed, fields)
    return sorted(moved, key=lambda j: (j.seq, j.name))


#: the most packages one grouped UPDATE of :func:`apply_moves` moves
_GROUP_ROWS = 100


def apply_moves(conn: Connection, moves: Sequence[Move]) -> list[PackageJob | None]:
    """The moves in the caller's one transaction, each a compare-and-set of its own:
    per move, the package as it moved, or ``None`` where its row did not match (that
    undoes nothing else). Moves of one build to the same states, setting the same
    columns, go in one guarded UPDATE (each row its own values; the guard decides row
    by row), up to :data:`_GROUP_ROWS` rows: a dispatch round's starts, or the finishes
    that arrived together, are one statement, not one each. A package moved twice is
    moved in the order given (its later moves in later statements)."""
    return apply_planned(conn, moves, plan_moves(moves))


@dataclass(frozen=True)
class MoveGroup:
    """One guarded UPDATE of :func:`apply_moves`: the moves at ``indexes`` (of one
    build, from the same states, setting the same columns) with their column values."""

    build_id: str
    allowed: tuple[str, ...]
    columns: tuple[str, ...]
    indexes: tuple[int, ...]
    values: tuple[Mapping[str, Any], ...]
    #: only rows whose ``lease_owner`` is this (:attr:`~melange2.store.base.Move.owner`)
    owner: str | None = None


def plan_moves(moves: Sequence[Move]) -> list[MoveGroup]:
    """The statements :func:`apply_moves` runs for ``moves``, in order (one: the store
    may run it alone, without a transaction around it)."""
    values = [package_values({**m.fields, "status": PackageStatus(m.to)}) for m in moves]
    # the k-th move of each package goes in layer k; a layer's groups share no package
    seen: Counter[tuple[str, str]] = Counter()
    layers: list[dict[tuple[str, frozenset[str], tuple[str, ...], str | None], list[int]]] = []
    for i, move in enumerate(moves):
        k = seen[(move.build_id, move.name)]
        seen[(move.build_id, move.name)] += 1
        if k == len(layers):
            layers.append({})
        to = PackageStatus(move.to)
        allowed = sources_of(to) if move.expect is None else sources_of(to) & move.expect
        key = (
            move.build_id,
            frozenset(s.value for s in allowed),
            tuple(sorted(values[i])),
            move.owner,
        )
        layers[k].setdefault(key, []).append(i)
    plan: list[MoveGroup] = []
    for layer in layers:
        # groups in (build, states, columns) order: two writers lock rows alike
        for (build_id, allowed_values, columns, owner), indexes in sorted(
            layer.items(), key=lambda item: (*item[0][:3], item[0][3] or "")
        ):
            for at in range(0, len(indexes), _GROUP_ROWS):
                chunk = tuple(indexes[at : at + _GROUP_ROWS])
                plan.append(
                    MoveGroup(
                        build_id=build_id,
                        allowed=tuple(sorted(allowed_values)),
                        columns=columns,
                        indexes=chunk,
                        values=tuple(values[i] for i in chunk),
                        owner=owner,
                    )
                )
    return plan


def apply_planned(
    conn: Connection, moves: Sequence[Move], plan: Sequence[MoveGroup]
) -> list[PackageJob | None]:
    """:func:`apply_moves` by a plan :func:`plan_moves` made of ``moves``."""
    results: list[PackageJob | None] = [None] * len(moves)
    for group in plan:
        moved = _move_rows(
            conn,
            group.build_id,
            [moves[i].name for i in group.indexes],
            group.allowed,
            group.columns,
            group.values,
            owner=group.owner,
        )
        for i in group.indexes:
            results[i] = moved.get(moves[i].name)
    return results


def _move_rows(
    conn: Connection,
    build_id: str,
    names: Sequence[str],
    allowed: Sequence[str],
    columns: tuple[str, ...],
    rows: Sequence[Mapping[str, Any]],
    *,
    owner: str | None = None,
) -> dict[str, PackageJob]:
    """One guarded UPDATE moving each of ``names`` (distinct, of one build) with its own
    column values ``rows``: a column the same for all is one parameter, the others a
    ``CASE`` on the package's name. The packages that moved, by name.

    The hot statement of the scheduler (a dispatch round's starts, its finishes): it
    runs as SQL compiled once per shape (:class:`_Prepared`), its values converted by
    the columns' own types, and its rows made into packages by :func:`_package_of`,
    past SQLAlchemy's per-execution work (compile-cache lookup, parameter processing,
    the result layer), which cost more than the database's."""
    same: tuple[str, ...] = columns
    varying: tuple[str, ...] = ()
    if len(names) > 1:
        same = tuple(c for c in columns if all(r[c] == rows[0][c] for r in rows))
        varying = tuple(c for c in columns if c not in same)
    params: dict[str, Any] = {"w_build_id": build_id}
    params.update({f"v_{c}": rows[0][c] for c in same})
    params.update({f"s_{i}": status for i, status in enumerate(allowed)})
    for i, (name, row) in enumerate(zip(names, rows, strict=True)):
        params[f"n_{i}"] = name
        params.update({f"v_{c}_{i}": row[c] for c in varying})
    if owner is not None:  # a running attempt's write about itself (Move.owner)
        params["w_owner"] = owner
    prepared = _prepared_update(
        conn.dialect, same, varying, len(names), len(allowed), owner is not None
    )
    return {job.name: job for job in prepared.run(conn, params)}


@functools.lru_cache(maxsize=1024)
def _prepared_update(
    dialect: Dialect,
    same: tuple[str, ...],
    varying: tuple[str, ...],
    count: int,
    states: int,
    owned: bool = False,
) -> _Prepared:
    query = _guarded_update_rows(same, varying, count, states)
    if owned:  # only the package's lease owner's (``w_owner``) write
        query = query.where(packages.c.lease_owner == bindparam("w_owner"))
    return _Prepared.of(query, dialect)


class _Prepared:
    """A statement returning package rows, compiled once for one dialect: its SQL text,
    how each parameter's value is bound (the column type's own bind processor, as
    SQLAlchemy would), and how each returned column is read (the type's result
    processor, made from the driver's first description of the rows)."""

    def __init__(self, sql: str, order: Sequence[str] | None, binds: Mapping[str, Any]) -> None:
        self.sql = sql
        #: positional parameters (SQLite's ``?``) in this order; None: by name
        self.order = None if order is None else tuple(order)
        self.binds = dict(binds)
        self._reads: list[tuple[int, Callable[[Any], Any]]] | None = None

    @classmethod
    def of(cls, statement: Update | Select[Any], dialect: Dialect) -> _Prepared:
        compiled = statement.compile(dialect=dialect)
        binds = {
            name: bind.type.dialect_impl(dialect).bind_processor(dialect)
            for name, bind in compiled.binds.items()
        }
        order = compiled.positiontup if dialect.paramstyle in ("qmark", "numeric") else None
        return cls(compiled.string, order, {k: v for k, v in binds.items() if v is not None})

    def run(self, conn: Connection, params: Mapping[str, Any]) -> list[PackageJob]:
        """Execute with ``params`` (by name); the packages it returned."""
        try:
            values = {
                k: (v if v is None or (bind := self.binds.get(k)) is None else bind(v))
                for k, v in params.items()
            }
        except (TypeError, ValueError) as exc:  # as SQLAlchemy reports a refused value
            raise StatementError(str(exc), self.sql, params, exc) from exc
        bound: Any = values if self.order is None else tuple(values[k] for k in self.order)
        description, rows = _execute(conn, self.sql, bound)
        if not rows:
            return []
        reads = self._reads
        if reads is None:
            reads = self._reads = _result_processors(conn.dialect, description)
        return [_package_of(_read_row(reads, row)) for row in rows]


def _execute(conn: Connection, sql: str, params: Any) -> tuple[Any, Sequence[Any]]:
    """Run ``sql`` on ``conn``'s driver connection, in its transaction: the driver's
    description of the rows and the rows. A driver error is raised as SQLAlchemy raises
    it (:class:`~sqlalchemy.exc.DBAPIError` by kind, a lost connection invalidated), so
    :func:`~melange2.store.sql.errors.map_sql_errors` maps it alike."""
    dbapi = conn.dialect.loaded_dbapi
    pooled = conn.connection
    cursor = pooled.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.description, cursor.fetchall()
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, pooled.dbapi_connection, cursor)
        if lost:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            sql, params, exc, dbapi.Error, connection_invalidated=lost, dialect=conn.dialect
        ) from exc
    finally:
        with contextlib.suppress(Exception):  # a lost connection's cursor
            cursor.close()


def _result_processors(
    dialect: Dialect, description: Sequence[Any]
) -> list[tuple[int, Callable[[Any], Any]]]:
    """Per returned column of ``packages`` (all of them, in table order) that needs
    one, its position and its type's result processor for this driver's column type
    (the others are read as they come)."""
    columns = list(packages.c)
    if len(description) != len(columns):
        raise AssertionError(f"{len(description)} columns returned, not {len(columns)}")
    reads = [
        column.type.dialect_impl(dialect).result_processor(dialect, entry[1])
        for column, entry in zip(columns, description, strict=True)
    ]
    return [
        (i, _remembered(read) if columns[i].name in _REMEMBERED else read)
        for i, read in enumerate(reads)
        if read is not None
    ]


#: columns whose stored values repeat from row to row (a round's starts share their
#: times and backend; a package's dependencies come back with each of its moves) and
#: read as values nothing changes (datetimes) or that :func:`_package_of` copies
_REMEMBERED = frozenset({"dependencies", "backend", "started_at", "finished_at", "lease_expires"})
#: how many stored values of one column :func:`_remembered` keeps
_REMEMBER = 4096


def _remembered(read: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``read``, remembering what it made of the last stored values it was given
    (values a driver gives already decoded, unhashable, are read each time)."""
    seen: dict[Any, Any] = {}

    def remembered(value: Any) -> Any:
        try:
            return seen[value]
        except KeyError:
            pass
        except TypeError:
            return read(value)
        if len(seen) >= _REMEMBER:
            seen.clear()
        made = seen[value] = read(value)
        return made

    return remembered


def _read_row(reads: Sequence[tuple[int, Callable[[Any], Any]]], row: Sequence[Any]) -> list[Any]:
    values = list(row)
    for i, read in reads:
        value = values[i]
        if value is not None:
            values[i] = read(value)
    return values


def _package_of(v: Sequence[Any]) -> PackageJob:
    """A package from its row's values in :data:`packages`' column order (as
    :func:`package_from_row`, by position)."""
    (
        build_id,
        name,
        seq,
        status,
        config_yaml,
        arch,
        dependencies,
        priority,
        reason,
        error,
        started_at,
        finished_at,
        log_path,
        output_path,
        backend,
        lease_owner,
        lease_expires,
        cached,
        input_digest,
        attempts,
        cpu_millis,
        memory_bytes,
    ) = v
    return PackageJob(
        build_id=BuildId(build_id),
        name=name,
        seq=seq,
        status=PackageStatus(status),
        config_yaml=config_yaml,
        arch=arch,
        dependencies=tuple(dependencies),
        priority=float(priority),
        reason=reason,
        error=error,
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        log_path=log_path,
        output_path=output_path,
        cached=bool(cached),
        input_digest=input_digest,
        backend=None
        if backend is None
        else Backend(addr=backend["addr"], arch=backend["arch"], labels=dict(backend["labels"])),
        lease_owner=lease_owner,
        lease_expires=lease_expires,
        cpu_millis=cpu_millis,
        memory_bytes=memory_bytes,
    )


@functools.lru_cache(maxsize=1024)
def _guarded_update_rows(
    same: tuple[str, ...], varying: tuple[str, ...], count: int, states: int
) -> Update:
    """The guarded UPDATE of ``count`` packages of one build from one of ``states``
    states for :func:`_move_rows`, made once per shape (no expanding parameters: those
    are rewritten at every execution)."""
    sets: dict[str, Any] = {c: bindparam(f"v_{c}", type_=packages.c[c].type) for c in same}
    for c in varying:
        column = packages.c[c]
        whens = [
            (packages.c.name == bindparam(f"n_{i}"), bindparam(f"v_{c}_{i}", type_=column.type))
            for i in range(count)
        ]
        sets[c] = case(*whens, else_=column)
    return (
        update(packages)
        .where(
            packages.c.build_id == bindparam("w_build_id"),
            packages.c.name.in_([bindparam(f"n_{i}") for i in range(count)]),
            packages.c.status.in_([bindparam(f"s_{i}") for i in range(states)]),
        )
        .values(sets)
        .returning(*packages.c)
    )


def _move_packages(
    conn: Connection,
    build_id: BuildId,
    names: Sequence[str],
    to: PackageStatus,
    allowed: Iterable[PackageStatus],
    fields: Mapping[str, Any],
    *,
    owner: str | None = None,
) -> list[PackageJob]:
    values = package_values({**fields, "status": to})
    params = {f"v_{column}": value for column, value in values.items()}
    params["w_build_id"] = build_id
    params["w_names"] = names[0] if len(names) == 1 else list(names)
    params["w_allowed"] = [PackageStatus(s).value for s in allowed]
    query = _guarded_update(tuple(sorted(values)), one=len(names) == 1)
    if owner is not None:  # a running attempt's write about itself (Move.owner)
        query = query.where(packages.c.lease_owner == bindparam("w_owner"))
        params["w_owner"] = owner
    return [package_from_row(row) for row in conn.execute(query, params).mappings()]


@functools.lru_cache(maxsize=128)
def _guarded_update(columns: tuple[str, ...], *, one: bool) -> Update:
    """The guarded UPDATE setting ``columns`` of one package or of several, made once
    per shape (the scheduler uses a handful): building a statement costs more than
    running it."""
    if one:
        named = packages.c.name == bindparam("w_names")
    else:
        named = packages.c.name.in_(bindparam("w_names", expanding=True))
    return (
        update(packages)
        .where(
            packages.c.build_id == bindparam("w_build_id"),
            named,
            packages.c.status.in_(bindparam("w_allowed", expanding=True)),
        )
        .values({c: bindparam(f"v_{c}", type_=packages.c[c].type) for c in columns})
        .returning(packages)
    )


def update_package_fields(
    conn: Connection, build_id: BuildId, name: str, fields: Mapping[str, Any]
) -> PackageJob | None:
    """Set non-state columns of a package; ``None`` if there is no such package."""
    where = (packages.c.build_id == build_id, packages.c.name == name)
    values = package_values(fields)
    if values:
        query = update(packages).where(*where).values(values).returning(packages)
        row = (conn.execute(query)).mappings().first()
    else:
        row = (conn.execute(select(packages).where(*where))).mappings().first()
    return None if row is None else package_from_row(row)


def package_status(conn: Connection, build_id: BuildId, name: str) -> PackageStatus | None:
    """The current status of a package; ``None`` if there is no such package."""
    status = conn.scalar(
        select(packages.c.status).where(packages.c.build_id == build_id, packages.c.name == name)
    )
    return None if status is None else PackageStatus(status)


def put_attempt(conn: Connection, build_id: BuildId, name: str, attempt: Attempt) -> bool:
    """Add an attempt to a package, replacing one with the same number; ``False`` if
    there is no such package. The row is read ``FOR UPDATE``: concurrent additions to
    one package queue instead of overwriting each other."""
    where = (packages.c.build_id == build_id, packages.c.name == name)
    tries = conn.scalar(select(packages.c.attempts).where(*where).with_for_update())
    if tries is None:
        return False
    kept = [a for a in tries if a.number != attempt.number]
    conn.execute(update(packages).where(*where).values(attempts=[*kept, attempt]))
    return True


# leases


def renew_leases(conn: Connection, owner: str, expires: datetime) -> int:
    """Move the deadline of every running lease ``owner`` holds; how many."""
    result = conn.execute(
        update(packages)
        .where(
            packages.c.lease_owner == owner,
            packages.c.status == PackageStatus.RUNNING.value,
        )
        .values(lease_expires=expires)
    )
    return result.rowcount


def expire_leases(conn: Connection, now: datetime) -> list[PackageJob]:
    """Running packages whose lease ran out before ``now`` go back to pending, in one
    guarded UPDATE; returns them by build and ``seq``. The rows are claimed ``FOR UPDATE
    SKIP LOCKED``: a row another transaction holds (its owner finishing it, another
    replica requeueing it) is left to that one."""
    expired = (
        packages.c.status == PackageStatus.RUNNING.value,
        packages.c.lease_expires.is_not(None),
        packages.c.lease_expires < now,
    )
    claimed = (
        select(packages.c.build_id, packages.c.name)
        .where(*expired)
        .with_for_update(skip_locked=True)
    )
    query = (
        update(packages)
        .where(tuple_(packages.c.build_id, packages.c.name).in_(claimed), *expired)
        .values(
            status=PackageStatus.PENDING.value,
            lease_owner="",
            lease_expires=None,
            reason=LEASE_EXPIRED_REASON,
        )
        .returning(packages)
    )
    jobs = [package_from_row(row) for row in conn.execute(query).mappings()]
    return sorted(jobs, key=lambda j: (j.build_id, j.seq, j.name))


def latest_durations(conn: Connection, names: Sequence[str]) -> dict[str, float]:
    """For each name, the duration of its most recently finished successful build."""
    if not names:
        return {}
    ranked = (
        select(
            packages.c.name,
            packages.c.started_at,
            packages.c.finished_at,
            func.row_number()
            .over(
                partition_by=packages.c.name,
                order_by=(packages.c.finished_at.desc(), packages.c.build_id.desc()),
            )
            .label("rank"),
        )
        .where(
            packages.c.name.in_(list(names)),
            packages.c.status == PackageStatus.SUCCESS.value,
            packages.c.started_at.is_not(None),
            packages.c.finished_at.is_not(None),
        )
        .subquery()
    )
    rows = conn.execute(
        select(ranked.c.name, ranked.c.started_at, ranked.c.finished_at).where(ranked.c.rank == 1)
    )
    return {
        name: (finished_at - started_at).total_seconds() for name, started_at, finished_at in rows
    }


# runtime backends


def _tls_json(tls: ClientTLS | None) -> dict[str, str] | None:
    if tls is None:
        return None
    return {
        "caCert": (tls.ca_cert or b"").decode(),
        "cert": (tls.cert or b"").decode(),
        "key": (tls.key or b"").decode(),
        "serverName": tls.server_name,
    }


def _tls_of(value: Any) -> ClientTLS | None:
    if not isinstance(value, dict):
        return None
    return ClientTLS(
        ca_cert=value.get("caCert", "").encode() or None,
        cert=value.get("cert", "").encode() or None,
        key=value.get("key", "").encode() or None,
        server_name=value.get("serverName", ""),
    )


def save_backend(conn: Connection, backend: StoredBackend) -> None:
    """Replace the backend with this address in place, or add it at the end."""
    values = {
        "arch": backend.arch,
        "labels": dict(backend.labels),
        "max_jobs": backend.max_jobs,
        "tls": _tls_json(backend.tls),
        "cpu_millis": backend.cpu_millis,
        "memory_bytes": backend.memory_bytes,
    }
    result = conn.execute(update(backends).where(backends.c.addr == backend.addr).values(values))
    if result.rowcount:
        return
    next_position = select(func.coalesce(func.max(backends.c.position), 0) + 1).scalar_subquery()
    conn.execute(insert(backends).values(addr=backend.addr, position=next_position, **values))


def delete_backend(conn: Connection, addr: str) -> None:
    conn.execute(delete(backends).where(backends.c.addr == addr))


def list_backends(conn: Connection) -> list[StoredBackend]:
    rows = conn.execute(select(backends).order_by(backends.c.position))
    return [
        StoredBackend(
            addr=row["addr"],
            arch=row["arch"],
            labels=row["labels"],
            max_jobs=row["max_jobs"],
            tls=_tls_of(row["tls"]),
            cpu_millis=row["cpu_millis"],
            memory_bytes=row["memory_bytes"],
        )
        for row in rows.mappings()
    ]


# API tokens


def _token_of(row: RowMapping) -> Token:
    return Token(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        token_hash=row["token_hash"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )


def insert_token(conn: Connection, token: Token) -> None:
    """The unique indexes refuse a taken id or hash, and a second active name."""
    conn.execute(
        insert(tokens).values(
            id=token.id,
            name=token.name,
            role=Role(token.role).value,
            token_hash=token.token_hash,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
        )
    )


def active_token_named(conn: Connection, name: str) -> bool:
    found = conn.execute(
        select(tokens.c.id).where(tokens.c.name == name, tokens.c.revoked_at.is_(None))
    )
    return found.first() is not None


def token_by_hash(conn: Connection, token_hash: str) -> Token | None:
    row = conn.execute(select(tokens).where(tokens.c.token_hash == token_hash)).mappings().first()
    return None if row is None else _token_of(row)


def list_tokens(conn: Connection) -> list[Token]:
    rows = conn.execute(select(tokens).order_by(tokens.c.created_at, tokens.c.id)).mappings()
    return [_token_of(row) for row in rows]


def revoke_token(conn: Connection, token_id: str, at: datetime) -> Token | None:
    """Set ``revoked_at`` once (a revoked token keeps its first time); the token, or
    ``None`` if there is none of that id."""
    conn.execute(
        update(tokens)
        .where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None))
        .values(revoked_at=at)
    )
    row = conn.execute(select(tokens).where(tokens.c.id == token_id)).mappings().first()
    return None if row is None else _token_of(row)


# several replicas (PostgreSQL only: advisory locks, JSON operators, NOTIFY)


def fetch_packages(conn: Connection, build_id: BuildId, names: Sequence[str]) -> list[PackageJob]:
    """The named packages of one build as they stand (unknown names left out), in
    ``seq`` order."""
    if not names:
        return []
    query = (
        select(packages)
        .where(packages.c.build_id == build_id, packages.c.name.in_(list(names)))
        .order_by(packages.c.seq, packages.c.name)
    )
    return [package_from_row(row) for row in conn.execute(query).mappings()]


def advisory_xact_lock(conn: Connection, key: int) -> None:
    """Wait for the transaction-level advisory lock ``key`` (held until the
    transaction ends)."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def try_advisory_xact_lock(conn: Connection, key: int) -> bool:
    """Take the transaction-level advisory lock ``key`` if it is free; ``False`` if
    another session holds it."""
    return bool(conn.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key}))


def backend_load(conn: Connection, addr: str) -> tuple[int, int, int]:
    """What the packages running on the backend ``addr`` take, whichever replica runs
    them: (jobs, millicores, bytes). Running rows are found by the (status,
    lease_expires) index; the backend is the ``addr`` of their ``backend`` JSON."""
    query = select(
        func.count(),
        func.coalesce(func.sum(packages.c.cpu_millis), 0),
        func.coalesce(func.sum(packages.c.memory_bytes), 0),
    ).where(
        packages.c.status == PackageStatus.RUNNING.value,
        packages.c.backend["addr"].as_string() == addr,
    )
    row = conn.execute(query).one()
    return int(row[0]), int(row[1]), int(row[2])


def notify(conn: Connection, channel: str, payloads: Sequence[str]) -> None:
    """``NOTIFY channel`` once per payload, in one statement (delivered at commit, in
    order)."""
    if payloads:
        conn.execute(
            text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
            {"channel": channel, "payloads": list(payloads)},
        )
