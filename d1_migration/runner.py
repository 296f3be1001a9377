"""Materialize every table and run every check in one process; used by the CLI and the tests."""

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

from dagster import (
    AssetSelection,
    DagsterEventType,
    DagsterInstance,
    EventLogEntry,
    ExecuteInProcessResult,
    RunConfig,
    RunsFilter,
    materialize,
)
from dagster_shared.error import SerializableErrorInfo

from d1_migration.definitions import ASSET_CHECKS, ASSETS
from d1_migration.defs.assets import TABLE_STEP, SyncConfig
from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings

# Tagged on every run the runner starts, so that a watcher finds the run it is following.
INVOCATION_TAG = "d1_migration/invocation"
POLL_SECONDS = 0.5


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
    run_id: str = ""

    def check(self, table: str, name: str) -> CheckOutcome:
        return next(c for c in self.checks if c.asset == f"pg/{table}" and c.check == name)

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]

    def rows(self, name: str) -> int:
        """A per-table count (inserted, updated, deleted, quarantined_this_run) summed."""
        return sum(int(metadata.get(name) or 0) for metadata in self.tables.values())

    def failed_by_severity(self) -> dict[str, int]:
        """Checks that did not pass, by severity (ERROR, WARN), most severe first."""
        counts = Counter(c.severity for c in self.failed_checks)
        return dict(sorted(counts.items(), key=lambda item: item[0] != "ERROR"))

    def totals(self) -> str:
        """What the run did, in two lines: for the end of every terminal run."""
        failed = self.failed_by_severity()
        checks = ", ".join(f"{n} {s}" for s, n in failed.items()) if failed else "none"
        open_entries = sum(
            int(c.metadata.get("quarantined_rows") or 0)
            for c in self.checks
            if c.check == "quarantine"
        )
        return (
            f"Tables synced: {len(self.tables)}; rows inserted {self.rows('inserted')}, "
            f"updated {self.rows('updated')}, deleted {self.rows('deleted')}, quarantined "
            f"{self.rows('quarantined_this_run')} (open in quarantine: {open_entries})\n"
            f"Checks: {len(self.checks) - len(self.failed_checks)} of {len(self.checks)} passed;"
            f" failed by severity: {checks}"
        )


def summarize(result: ExecuteInProcessResult) -> RunSummary:
    """The run as the CLI and the tests read it, through Dagster's public result API."""
    tables = {}
    for event in result.get_asset_materialization_events():
        mat = event.materialization
        if mat.asset_key.path[0] == "pg":
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
    return RunSummary(result.success, tables, checks, failure, retries, result.run_id)


def _with_causes(error: SerializableErrorInfo | None) -> str:
    """A step's error and what caused it: Dagster wraps the exception raised in the step (D1's
    or Postgres's own words) as the cause of its own "error occurred while executing"."""
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    return "\n".join(messages)


class RunWatcher:
    """Follows a run in the instance's event log from another thread while it executes:
    ``on_event`` gets each stored event (a table's materialization as soon as the table is
    committed). Reading the event log, a public API every storage offers, keeps the run
    itself untouched; an error while watching only ends the watching."""

    def __init__(
        self, instance: DagsterInstance, invocation: str, on_event: Callable[[EventLogEntry], None]
    ):
        self.instance, self.invocation, self.on_event = instance, invocation, on_event
        self.error: Exception | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="run-watcher", daemon=True)

    def __enter__(self) -> "RunWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _watch(self) -> None:
        run_id, cursor = None, None
        try:
            while True:
                finished = self._done.is_set()  # read once more after the run ended
                if run_id is None:
                    ids = self.instance.get_run_ids(
                        RunsFilter(tags={INVOCATION_TAG: self.invocation}), limit=1
                    )
                    run_id = ids[0] if ids else None
                if run_id is not None:
                    while True:
                        page = self.instance.get_records_for_run(run_id, cursor, limit=500)
                        for record in page.records:
                            self.on_event(record.event_log_entry)
                        cursor = page.cursor
                        if not page.has_more:
                            break
                if finished:
                    return
                self._done.wait(POLL_SECONDS)
        except Exception as error:  # the progress display stops; the run goes on
            self.error = error


def materialize_all(
    d1: D1Source,
    postgres: PostgresTarget,
    instance: DagsterInstance | None = None,
    sync: SyncSettings | None = None,
    selection: str | AssetSelection = "key:pg/*",
    config: SyncConfig | None = None,
    log_level: str | None = None,
    on_event: Callable[[EventLogEntry], None] | None = None,
    tags: dict[str, str] | None = None,
) -> RunSummary:
    """Every table and check (or ``selection`` of them), as `Materialize all` runs them (with
    the table step's ``config``: incremental by default, like the UI); in a
    throwaway instance unless one is given (disposed here, so that its storage is not left to
    the garbage collector of whichever thread happens to run it).

    ``log_level`` sets Dagster's console logger (default: Dagster's, which prints every event
    at DEBUG); ``on_event`` is called, from another thread, with each event the run stores."""
    invocation = str(uuid.uuid4())
    run_config = RunConfig(
        ops={TABLE_STEP: config or SyncConfig()},
        loggers={"console": {"config": {"log_level": log_level}}} if log_level else None,
    )
    with ExitStack() as stack:
        instance = instance or stack.enter_context(DagsterInstance.ephemeral())
        if on_event is not None:
            stack.enter_context(RunWatcher(instance, invocation, on_event))
        result = materialize(
            [*ASSETS, *ASSET_CHECKS],
            resources={"d1": d1, "postgres": postgres, "sync": sync or SyncSettings()},
            instance=instance,
            selection=selection,
            run_config=run_config,
            tags={**(tags or {}), INVOCATION_TAG: invocation},
            raise_on_error=False,
        )
        return summarize(result)
