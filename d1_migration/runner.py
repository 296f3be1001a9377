"""Materialize every table and run every check in one process; used by the CLI and the tests."""

from contextlib import ExitStack
from dataclasses import dataclass, field

from dagster import (
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    RunConfig,
    materialize,
)
from dagster_shared.error import SerializableErrorInfo

from d1_migration.definitions import ASSET_CHECKS, ASSETS
from d1_migration.defs.assets import TABLE_STEP, SyncConfig
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings


@dataclass(frozen=True)
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    severity: str
    metadata: dict = field(hash=False)


@dataclass
class RunSummary:
    success: bool
    tables: dict[str, dict]  # asset metadata per table
    checks: list[CheckOutcome]
    failure: str = ""  # what failed steps said
    retries: int = 0  # step attempts that failed and were run again (a lost target)

    def check(self, table: str, name: str) -> CheckOutcome:
        return next(c for c in self.checks if c.asset == f"pg/{table}" and c.check == name)

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]


def summarize(result: ExecuteInProcessResult) -> RunSummary:
    """The run as the CLI and the tests read it, through Dagster's public result API."""
    tables = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        tables[mat.asset_key.path[-1]] = {k: v.value for k, v in mat.metadata.items()}
    checks = [
        CheckOutcome(
            asset=evaluation.asset_key.to_user_string(),
            check=evaluation.check_name,
            passed=evaluation.passed,
            severity=evaluation.severity.value,
            metadata={k: v.value for k, v in evaluation.metadata.items()},
        )
        for evaluation in result.get_asset_check_evaluations()
    ]
    failure = "\n".join(
        _with_causes(event.step_failure_data.error) for event in result.get_step_failure_events()
    )
    retries = sum(e.event_type is DagsterEventType.STEP_UP_FOR_RETRY for e in result.all_events)
    return RunSummary(result.success, tables, checks, failure, retries)


def _with_causes(error: SerializableErrorInfo | None) -> str:
    """A step's error and what caused it: Dagster wraps the exception raised in the step (D1's
    or Postgres's own words) as the cause of its own "error occurred while executing"."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return "\n".join(messages)


def materialize_all(
    d1: D1Source,
    postgres: PostgresTarget,
    instance: DagsterInstance | None = None,
    sync: SyncSettings | None = None,
    selection: str | AssetSelection = "key:pg/*",
    config: SyncConfig | None = None,
) -> RunSummary:
    """Every table and check (or ``selection`` of them), as `Materialize all` runs them (with
    the table step's ``config``: incremental by default, like the UI); in a
    throwaway instance unless one is given (disposed here, so that its storage is not left to
    the garbage collector of whichever thread happens to run it)."""
    with ExitStack() as stack:
        result = materialize(
            [*ASSETS, *ASSET_CHECKS],
            resources={"d1": d1, "postgres": postgres, "sync": sync or SyncSettings()},
            instance=instance or stack.enter_context(DagsterInstance.ephemeral()),
            selection=selection,
            run_config=RunConfig(ops={TABLE_STEP: config or SyncConfig()}),
            raise_on_error=False,
        )
        return summarize(result)
