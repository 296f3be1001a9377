"""The jobs besides Materialize all: the cutover gate as a Dagster job."""

from dagster import Failure, MetadataValue, OpExecutionContext, job, op

from d1_migration.defs.resources import D1Source, PostgresTarget, SyncSettings
from d1_migration.spec.model import Schema
from d1_migration.sync.target_lock import TARGET_POOL
from d1_migration.verify.cutover import cutover_check


def build_cutover_job(schema: Schema):
    @op(
        name="final_sync_and_checks",
        pool=TARGET_POOL,
        description="Final sync, a second sync that must change nothing, every check blocking.",
    )
    def cutover_gate(
        context: OpExecutionContext, d1: D1Source, postgres: PostgresTarget, sync: SyncSettings
    ) -> bool:
        verdict = cutover_check(d1, postgres, sync, schema, run_id=context.run.run_id)
        context.log.info(verdict.render())
        metadata = {
            "ready": verdict.ready,
            "reasons": MetadataValue.json(verdict.reasons),
            "tables": MetadataValue.json(verdict.tables),
        }
        if not verdict.ready:
            raise Failure(
                description="NOT READY for cutover: " + "; ".join(verdict.reasons[:5]),
                metadata=metadata,
            )
        context.add_output_metadata(metadata)
        return True

    @job(name="cutover_gate", description="May Postgres take over from D1 now? (see README)")
    def cutover_gate_job() -> None:
        cutover_gate()

    return cutover_gate_job
