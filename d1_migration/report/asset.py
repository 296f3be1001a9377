"""The ``migration_report`` asset, downstream of every ``pg/`` table: the report in the UI (as
Markdown metadata, charts included) and on disk (the HTML file whose path it records). Part of
Materialize all; the sync jobs and the schedule leave it out (it reads every table's history,
which a re-sync every 10 minutes need not pay for): materialize it, or run
``d1-migration report``, when you want it."""

from pathlib import Path

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from d1_migration.defs.keys import target_key
from d1_migration.defs.resources import DEFAULT_WORKDIR, PostgresTarget
from d1_migration.report.render import CHART_TITLES, data_uri, markdown, write_report
from d1_migration.report.state import read_state
from d1_migration.spec.model import Schema

REPORT_KEY = "migration_report"


def report_path(postgres: PostgresTarget) -> Path:
    """Beside the project's other local files (the postgres resource's workdir)."""
    return Path(postgres.workdir) / "report" / "index.html"


def build_report_asset(schema: Schema):
    @asset(
        name=REPORT_KEY,
        deps=[target_key(t.name) for t in schema.tables],
        group_name="report",
        kinds={"html"},
        description="Per-table parity, the quarantine by table and reason, check status, the "
        "drifted wallets, and charts of rows per table and sync duration over time. Also "
        f"written as HTML to {DEFAULT_WORKDIR / 'report' / 'index.html'} (`d1-migration "
        "report` writes it from a terminal).",
    )
    def migration_report(context: AssetExecutionContext, postgres: PostgresTarget):
        with postgres.connect() as conn:
            state = read_state(conn, context.instance, schema, history=True)
        target = postgres.describe()
        written, pngs = write_report(state, target, report_path(postgres))
        context.log.info(f"Migration report written to {written}")
        failed = state.failed_by_severity()
        return MaterializeResult(
            metadata={
                "report": MetadataValue.md(markdown(state, target)),
                **{
                    CHART_TITLES[name]: MetadataValue.md(
                        f"![{CHART_TITLES[name]}]({data_uri(png)})"
                    )
                    for name, png in pngs.items()
                },
                "html_file": MetadataValue.path(str(written)),
                "quarantined_rows": state.quarantined_rows,
                "drifted_wallets": len(state.drifted_wallets),
                "failed_checks_error": failed.get("ERROR", 0),
                "failed_checks_warn": failed.get("WARN", 0),
            }
        )

    return migration_report
