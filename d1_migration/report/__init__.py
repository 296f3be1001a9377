"""The operator's view of a target: its state read from Postgres's bookkeeping and Dagster's
storage (``state``), rendered as the migration report (``render``: Markdown for the UI, an HTML
file on disk, matplotlib charts) and as the ``migration_report`` asset (``asset``)."""
