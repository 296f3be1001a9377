"""The Dagster definitions read like the spec: every asset, dep, group, kind, check and job.

Two guards. The spec test derives what ``defs`` must hold from ``tables.py`` alone (a table's
FK parents are upstream of it, its section is its group, it has an orphan check iff it has
FKs), so a spec change reaches the UI or this fails. The snapshot test compares ``defs`` with
``snapshots/definitions.json``, so that any change of the shape, intended or not, shows up as a
diff in review. After an intended change, regenerate the snapshot and commit it:

    PYTHONPATH=. python -m d1_migration_tests.test_definitions
"""

import importlib
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from dagster import AssetKey, Definitions, build_schedule_context

from d1_migration import definitions
from d1_migration.defs.keys import source_key
from d1_migration.spec.tables import SCHEMA

SNAPSHOT = Path(__file__).with_name("snapshots") / "definitions.json"
TABLE_CHECKS = {"row_parity", "quarantine", "matches_d1"}


@pytest.fixture
def defs(monkeypatch: pytest.MonkeyPatch) -> Definitions:
    """The code location as ``dagster dev`` loads it with the default schedule cron."""
    if os.environ.get(definitions.CRON_ENV):
        monkeypatch.delenv(definitions.CRON_ENV)
        importlib.reload(definitions)
    return definitions.defs


def _key(key: AssetKey) -> str:
    return key.to_user_string()


def shape(defs: Definitions) -> dict:
    """What a reviewer should see change: assets with their deps, group, kinds, how they are
    executed (observed or materialized) and checks;
    jobs with their ops (and pools), selection, run config and tags; schedules."""
    graph = defs.resolve_asset_graph()
    checks: dict[str, list[str]] = {}
    for check_key in graph.asset_check_keys:  # "name [blocking] +other/asset"
        spec = graph.get_check_spec(check_key)
        label = " ".join(
            [check_key.name]
            + (["[blocking]"] if spec.blocking else [])
            + sorted(f"+{_key(dep.asset_key)}" for dep in spec.additional_deps)
        )
        checks.setdefault(_key(check_key.asset_key), []).append(label)
    assets = {
        _key(spec.key): {
            "deps": sorted(_key(dep.asset_key) for dep in spec.deps),
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "execution": graph.get(spec.key).execution_type.value,  # observed or materialized
            "checks": sorted(checks.pop(_key(spec.key), [])),
        }
        for spec in defs.resolve_all_asset_specs()
    }
    assert not checks, f"checks on assets that do not exist: {sorted(checks)}"
    jobs = {}
    for unresolved in defs.jobs or ():
        job = defs.resolve_job_def(unresolved.name)
        selection = getattr(unresolved, "selection", None)
        jobs[job.name] = {
            "ops": {node.name: node.definition.pool for node in job.nodes},
            "selected_assets_by_prefix": dict(
                Counter(key.path[0] for key in selection.resolve(graph))
            )
            if selection is not None
            else {},
            "run_config": job.run_config or {},
            "tags": dict(job.tags),
            "executor": job.executor_def.name,
        }
    schedules = {}
    for schedule in defs.schedules or ():
        [request] = schedule.evaluate_tick(build_schedule_context()).run_requests
        schedules[schedule.name] = {
            "job": schedule.job_name,
            "cron": schedule.cron_schedule,
            "default_status": schedule.default_status.value,
            "run_config": request.run_config,
        }
    return {"assets": assets, "jobs": jobs, "schedules": schedules}


def render(snapshot: dict) -> str:
    """One line per asset, job and schedule: a change is a one-line diff."""
    lines = ["{"]
    for i, (section, entries) in enumerate(sorted(snapshot.items())):
        lines.append(f"  {json.dumps(section)}: {{")
        items = sorted(entries.items())
        for j, (name, entry) in enumerate(items):
            comma = "," if j < len(items) - 1 else ""
            lines.append(f"    {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}{comma}")
        lines.append("  }" + ("," if i < len(snapshot) - 1 else ""))
    lines.append("}")
    return "\n".join(lines) + "\n"


def test_every_table_is_a_source_and_a_target_asset_shaped_by_the_spec(defs):
    graph = {_key(spec.key): spec for spec in defs.resolve_all_asset_specs()}
    asset_checks = defs.resolve_asset_graph().asset_check_keys
    names = [t.name for t in SCHEMA.tables]
    assert set(graph) == {_key(source_key(n)) for n in names} | {f"pg/{n}" for n in names}
    for table in SCHEMA.tables:
        fks = [c.references.split(".")[0] for c in table.columns if c.references]
        source, target = graph[_key(source_key(table.name))], graph[f"pg/{table.name}"]
        assert (source.group_name, source.kinds, source.deps) == (
            table.section,
            {"cloudflare", "sqlite"},
            [],
        )
        assert target.group_name == table.section, table.name
        assert target.kinds == {"postgres"}, table.name
        assert {_key(d.asset_key) for d in target.deps} == {_key(source_key(table.name))} | {
            f"pg/{parent}" for parent in fks if parent != table.name
        }, table.name
        expected = TABLE_CHECKS | ({"no_orphaned_fks"} if fks else set())
        if table.name == "user_wallet":
            expected.add("wallet_matches_ledger")
        assert {k.name for k in asset_checks if k.asset_key == target.key} == expected
        assert {k.name for k in asset_checks if k.asset_key == source.key} == {
            "schema_matches_spec"
        }


def test_the_wallet_check_reads_the_ledger_and_the_schema_check_blocks(defs):
    """The wallet check waits for points_ledger too; drift blocks everything downstream."""
    graph = defs.resolve_asset_graph()
    [wallet] = [k for k in graph.asset_check_keys if k.name == "wallet_matches_ledger"]
    deps = {_key(d.asset_key) for d in graph.get_check_spec(wallet).additional_deps}
    assert deps == {"pg/points_ledger"}
    for key in graph.asset_check_keys:
        assert graph.get_check_spec(key).blocking == (key.name == "schema_matches_spec")


def test_jobs_and_the_schedule_sync_every_table_in_their_mode(defs):
    jobs = shape(defs)["jobs"]
    assert set(jobs) == {"migrate", "full_rebuild", "cutover_gate"}
    tables = len(SCHEMA.tables)
    for name, mode in (("migrate", "incremental"), ("full_rebuild", "full")):
        assert jobs[name]["selected_assets_by_prefix"] == {"pg": tables}
        assert jobs[name]["run_config"] == {"ops": {"migrate_tables": {"config": {"mode": mode}}}}
        assert jobs[name]["tags"] == definitions.SYNC_TAG
    resync = shape(defs)["schedules"]["resync"]
    assert resync["job"] == "migrate"
    assert resync["run_config"] == jobs["migrate"]["run_config"]
    assert resync["default_status"] == "STOPPED"


def test_definitions_match_the_committed_snapshot(defs):
    """A failure here is a diff to review: if the change is intended, regenerate the snapshot
    (see the module docstring) and commit it with the change."""
    assert render(shape(defs)).splitlines() == SNAPSHOT.read_text().splitlines()


if __name__ == "__main__":
    if os.environ.pop(definitions.CRON_ENV, None):  # the snapshot records the default cron
        importlib.reload(definitions)
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(render(shape(definitions.defs)))
    print(f"wrote {SNAPSHOT}")
