"""Assets that explain themselves: what the catalog, the graph and a run show, from real Dagster
runs on real SQLite and Postgres.

The definitions carry each table's column schema (from the spec, before any run); a sync
materializes each ``pg/`` table with its row count, table name, column schema, lineage and
quarantined rows, observes each ``d1/`` source and records its drift check; the quarantine
check shows the held-back rows as a Markdown table (never a raw session token); the run is
tagged with a summary.
"""

import sqlite3
from pathlib import Path

import psycopg
import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    TableColumnDep,
    TableSchema,
    define_asset_job,
    serialize_value,
)
from dagster._core.test_utils import instance_for_test
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from d1_migration import definitions
from d1_migration.defs.assets import SUMMARY_TAG_PREFIX
from d1_migration.defs.keys import source_key, table_of, target_key
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.demo.sample_data import build_sample_db
from d1_migration.runner import materialize_all
from d1_migration.spec.tables import SCHEMA
from d1_migration.target.ddl import ensure_schema
from d1_migration.verify.checks import (
    EXCERPT_CHARS,
    QUARANTINE,
    QUARANTINE_ROWS_SHOWN,
    SCHEMA_MATCHES,
    quarantine_summary,
)
from d1_migration_tests.helpers import mutate

TOKEN = "raw-session-token-5d2e81c4"  # a session row in quarantine must never show it


def _columns(schema: TableSchema) -> dict:
    return {c.name: c for c in schema.columns}


def test_definitions_describe_every_table_before_any_run():
    """The catalog shows each table's columns from the spec alone: Postgres types, keys,
    constraints and the D1 column behind each; source and target read apart."""
    graph = definitions.defs.resolve_asset_graph()
    specs = {s.key: s for s in definitions.defs.resolve_all_asset_specs()}
    for table in SCHEMA.tables:
        source, target = specs[source_key(table.name)], specs[target_key(table.name)]
        assert graph.get(source.key).is_observable and not graph.get(source.key).is_materializable
        assert source.key.path[-1] != target.key.path[-1]  # the graph's titles
        assert source.kinds != target.kinds
        assert source.description.startswith(f"D1 table `{table.name}` (read only)")
        columns = _columns(target.metadata["dagster/column_schema"])
        assert list(columns) == [c.name for c in table.columns]
        for column in table.columns:
            shown = columns[column.name]
            assert shown.type == column.pg_type
            assert shown.constraints.nullable == (
                column.nullable and column.name not in table.primary_key
            )
            if column.source_name and column.source_name != column.name:
                assert f"`{column.source_name}`" in shown.description, (table.name, column.name)
            if column.references:
                parent = column.references
                assert any(o.startswith(f"FK → {parent}") for o in shown.constraints.other)
            if column.check:
                assert f"CHECK ({column.check})" in shown.constraints.other
        constraints = target.metadata["dagster/column_schema"].constraints.other
        for name, expr in table.checks:
            assert f"CONSTRAINT {name} CHECK ({expr})" in constraints
        d1_columns = _columns(source.metadata["dagster/column_schema"])
        assert set(d1_columns) == {c.source_name for c in table.columns if c.source_name}

    sessions = _columns(specs[target_key("sessions")].metadata["dagster/column_schema"])
    assert sessions["token_hash"].type == "BYTEA"
    assert sessions["token_hash"].constraints.unique
    assert "SHA-256 of D1 `sessionToken`" in sessions["token_hash"].description
    assert "FK → users.id ON DELETE CASCADE" in sessions["user_id"].constraints.other
    wallet = _columns(specs[target_key("user_wallet")].metadata["dagster/column_schema"])
    assert "CHECK (coins >= 0)" in wallet["coins"].constraints.other


@pytest.fixture
def sample(tmp_path: Path):
    """The sample database with its bad rows, plus a session with a raw token that is
    quarantined (its expiry is no date)."""
    path = tmp_path / "d1.sqlite"
    summary = build_sample_db(path, users=40, seed=3)
    with sqlite3.connect(path) as d1:
        [user] = d1.execute("SELECT id FROM users ORDER BY rowid LIMIT 1").fetchone()
    mutate(
        path,
        [
            "INSERT INTO sessions (id, sessionToken, userId, expires) "
            f"VALUES ('s-token', '{TOKEN}', '{user}', 'not a date')"
        ],
    )
    return path, summary


def _events(instance: DagsterInstance, run_id: str) -> list:
    return [e for e in instance.all_logs(run_id) if e.dagster_event is not None]


def test_a_sync_reports_table_metadata_sources_quarantine_and_a_summary(sample, pg_url):
    path, sample_summary = sample
    d1, target = D1Source(path=str(path)), PostgresTarget(url=pg_url)
    sync = SyncSettings(state_dir=str(path.parent / "sync"))
    with DagsterInstance.ephemeral() as instance:
        summary = materialize_all(d1, target, instance=instance, sync=sync)
        assert summary.success, summary.failure
        [run] = instance.get_runs()
        events = _events(instance, run.run_id)

        with psycopg.connect(pg_url) as conn:
            database = conn.info.dbname
            open_by_table = dict(
                conn.execute(
                    "SELECT source_table, count(*) FROM d1_migration.rejected_rows "
                    "WHERE resolved_at IS NULL GROUP BY 1"
                ).fetchall()
            )
            reasons = conn.execute(
                "SELECT source_table, reason_code, reason FROM d1_migration.rejected_rows "
                "WHERE resolved_at IS NULL"
            ).fetchall()
            stored = " ".join(
                str(r)
                for r in conn.execute(
                    "SELECT raw_row::text, reason FROM d1_migration.rejected_rows"
                )
            )
            for table in SCHEMA.tables:
                meta = summary.tables[table.name]
                [rows] = conn.execute(f'SELECT count(*) FROM "{table.name}"').fetchone()
                assert meta["dagster/row_count"] == rows, table.name
                assert meta["dagster/table_name"] == f"{database}.public.{table.name}"
                assert meta["quarantined_rows"] == open_by_table.get(table.name, 0), table.name
                assert isinstance(meta["dagster/column_schema"], TableSchema)
            held = conn.execute(
                "SELECT reason_code FROM d1_migration.rejected_rows WHERE source_table = "
                "'sessions' AND source_pk = 's-token' AND resolved_at IS NULL"
            ).fetchall()
        assert held  # the token's row is in quarantine, with its values
        assert TOKEN not in stored and TOKEN not in repr(summary)

        lineage = summary.tables["sessions"]["dagster/column_lineage"].deps_by_column
        assert lineage["token_hash"] == [TableColumnDep(source_key("sessions"), "sessionToken")]
        assert lineage["user_id"] == [TableColumnDep(source_key("sessions"), "userId")]

        # Each D1 source observed once, with its row count in the snapshot synced, and its
        # drift check recorded as passed.
        observations = {
            table_of(e.dagster_event.asset_key): e.dagster_event.event_specific_data
            for e in events
            if e.dagster_event.event_type_value == "ASSET_OBSERVATION"
        }
        assert set(observations) == {t.name for t in SCHEMA.tables}
        for name, observed in observations.items():
            metadata = observed.asset_observation.metadata
            expected_rows = sample_summary.row_counts[name] + (name == "sessions")
            assert metadata["dagster/row_count"].value == expected_rows, name
            assert metadata["d1_source"].value == str(path)
        source_checks = [c for c in summary.checks if c.check == SCHEMA_MATCHES]
        assert {c.asset for c in source_checks} == {
            source_key(t.name).to_user_string() for t in SCHEMA.tables
        }
        assert all(c.passed for c in source_checks)
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [AssetCheckKey(source_key("users"), SCHEMA_MATCHES)]
        )
        assert latest[AssetCheckKey(source_key("users"), SCHEMA_MATCHES)].run_id == run.run_id
        assert instance.get_latest_materialization_event(source_key("users")) is None

        # The quarantine check of every table with bad rows lists them with their reasons.
        for table_name, code, reason in reasons:
            markdown = summary.check(table_name, QUARANTINE).metadata["rows"]
            assert f"| {code} |" in markdown, (table_name, code)
            escaped = " ".join(reason.split()).replace("\\", "\\\\").replace("|", "\\|")
            assert escaped.replace("`", "\\`") in markdown
        for expected in sample_summary.rejects:
            assert (
                expected.reason_code in summary.check(expected.table, QUARANTINE).metadata["rows"]
            )
        assert "not a date" in summary.check("sessions", QUARANTINE).metadata["rows"]
        for event in events:
            assert TOKEN not in serialize_value(event), event.dagster_event.event_type_value

        # The run's tags say what happened.
        tags = {k.removeprefix(SUMMARY_TAG_PREFIX): v for k, v in run.tags.items()}
        failed = [c for c in summary.checks if not c.passed]
        assert tags["tables_synced"] == str(len(SCHEMA.tables))
        assert tags["rows_inserted"] == str(sum(m["inserted"] for m in summary.tables.values()))
        assert tags["rows_quarantined"] == str(sum(open_by_table.values()))
        assert tags["checks_failed_warn"] == str(sum(c.severity == "WARN" for c in failed))
        assert tags["checks_failed_error"] == str(sum(c.severity == "ERROR" for c in failed))
        assert tags["checks_failed_error"] != "0"  # the sample's drifted wallets
        assert any("Sync summary" in (e.user_message or "") for e in instance.all_logs(run.run_id))

        again = materialize_all(d1, target, instance=instance, sync=sync)
        assert again.success
        latest_run = instance.get_runs()[0]
        assert latest_run.run_id != run.run_id
        assert latest_run.tags[SUMMARY_TAG_PREFIX + "rows_inserted"] == "0"
        assert latest_run.tags[SUMMARY_TAG_PREFIX + "tables_synced"] == str(len(SCHEMA.tables))
        observed_again = instance.fetch_observations(source_key("users"), limit=5).records
        assert [r.run_id for r in observed_again] == [latest_run.run_id, run.run_id]


def test_drift_fails_the_source_check_in_the_sync_run(tmp_path, pg_url):
    path = tmp_path / "d1.sqlite"
    build_sample_db(path, users=10, seed=1, bad_rows=False)
    with sqlite3.connect(path) as d1:
        d1.execute("ALTER TABLE users ADD COLUMN nickname TEXT")
    summary = materialize_all(
        D1Source(path=str(path)),
        PostgresTarget(url=pg_url),
        sync=SyncSettings(state_dir=str(tmp_path / "sync")),
    )
    assert not summary.success
    outcomes = {table_of(AssetKey.from_user_string(c.asset)): c for c in summary.checks}
    assert not outcomes["users"].passed
    assert outcomes["users"].metadata["problems"] == [
        "added column users.nickname (TEXT): declare it on users in d1_migration/spec/tables.py"
    ]
    assert all(c.passed for name, c in outcomes.items() if name != "users")
    assert not summary.tables


def test_the_quarantine_table_is_capped_and_escaped(pg_url):
    table = SCHEMA.table("habit_logs")
    extra = 7
    with psycopg.connect(pg_url, autocommit=True) as conn:
        ensure_schema(conn, SCHEMA)
        rows = [
            (
                "habit_logs",
                f"log-{i:03d}",
                None,
                "completed_at",
                "bad_datetime",
                f"completed_at = 'a|b {i}' is not a date",
                f'{{"id": "log-{i:03d}", "completed_at": "a|b {"x" * 100}"}}',
            )
            for i in range(QUARANTINE_ROWS_SHOWN + extra)
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO d1_migration.rejected_rows (source_table, source_pk, target_pk, "
                "column_name, reason_code, reason, raw_row) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        result = quarantine_summary(conn, table)
    markdown = result.metadata["rows"].value
    lines = markdown.splitlines()
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert len(body) == QUARANTINE_ROWS_SHOWN
    assert f"and {extra} more" in lines[-1]
    first = body[0].split(" | ")
    assert first[1] == "log-000" and first[3] == "bad_datetime"
    assert "a\\|b 0" in first[4]
    excerpt = first[5].removesuffix(" |")
    assert excerpt.endswith("…") and len(excerpt.replace("\\|", "|")) == EXCERPT_CHARS
    assert all(line.count(" | ") == 5 for line in body)  # no cell broke the table
    assert result.metadata["quarantined_rows"].value == len(rows)
    assert result.metadata["by_reason"].value == {"bad_datetime": len(rows)}


GRAPH_QUERY = """
query ($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    isObservable
    assetObservations(limit: 1) { runId }
    assetMaterializations(limit: 1) { runId }
    assetChecksOrError {
      ... on AssetChecks { checks { name executionForLatestMaterialization { status runId } } }
    }
  }
}
"""


def test_after_materialize_all_the_graph_shows_every_source_observed_and_checked(tmp_path, pg_url):
    """What the UI's asset graph reads (its GraphQL API, against the code location as `dagster
    dev` loads it): after one Materialize all, every d1/ source is observed by that run and
    its drift check passed in it, and every pg/ table's checks ran in it: nothing reads
    "never materialized" or "not run"."""
    path = tmp_path / "d1.sqlite"
    build_sample_db(path, users=10, seed=2, bad_rows=False)
    with instance_for_test() as instance:
        summary = materialize_all(
            D1Source(path=str(path)),
            PostgresTarget(url=pg_url),
            instance=instance,
            sync=SyncSettings(state_dir=str(tmp_path / "sync")),
        )
        assert summary.success, summary.failure
        [run] = instance.get_runs()
        keys = [k for t in SCHEMA.tables for k in (source_key(t.name), target_key(t.name))]
        with define_out_of_process_context(definitions.__file__, "defs", instance) as context:
            result = execute_dagster_graphql(
                context, GRAPH_QUERY, {"keys": [{"path": k.path} for k in keys]}
            )
    assert not result.errors, result.errors
    nodes = {AssetKey(n["assetKey"]["path"]): n for n in result.data["assetNodes"]}
    assert set(nodes) == set(keys)
    for key, node in nodes.items():
        checks = node["assetChecksOrError"]["checks"]
        assert checks, key
        for check in checks:
            execution = check["executionForLatestMaterialization"]
            assert execution and execution["runId"] == run.run_id, (key, check["name"])
        if key.path[0] == "d1":
            assert node["isObservable"], key
            assert node["assetObservations"] == [{"runId": run.run_id}], key
            assert [c["executionForLatestMaterialization"]["status"] for c in checks] == [
                "SUCCEEDED"
            ], key
        else:
            assert node["assetMaterializations"] == [{"runId": run.run_id}], key


def test_observe_alone_counts_the_selected_d1_tables(tmp_path):
    """The UI's "Observe" on d1/ sources runs observe_d1 alone: D1 is read, nothing written."""
    path = tmp_path / "d1.sqlite"
    sample = build_sample_db(path, users=10, seed=4)
    chosen = ["users", "sessions", "habit_logs"]
    job = define_asset_job("observe", selection=AssetSelection.assets(*map(source_key, chosen)))
    defs = Definitions(
        assets=definitions.ASSETS,
        asset_checks=definitions.ASSET_CHECKS,
        jobs=[job],
        resources={
            "d1": D1Source(path=str(path)),
            "postgres": PostgresTarget(url="postgresql://unused"),  # observing reads D1 only
            "sync": SyncSettings(state_dir=str(tmp_path / "sync")),
        },
    )
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("observe").execute_in_process(instance=instance)
    observed = {
        table_of(e.asset_key): e.event_specific_data.asset_observation.metadata
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    }
    assert set(observed) == set(chosen)
    for name, metadata in observed.items():
        assert metadata["dagster/row_count"].value == sample.row_counts[name]
        assert metadata["d1_source"].value == str(path)
