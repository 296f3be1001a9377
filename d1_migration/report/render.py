"""The migration report: per-table parity, the quarantine by table and reason, check status,
the drifted wallets, and charts of rows per table and sync duration over time. One set of
sections rendered twice: Markdown (the ``migration_report`` asset's metadata in the UI) and a
self-contained HTML file (charts embedded as base64 PNG, so the file can be mailed or opened
from anywhere)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from d1_migration.private_files import private_dir, private_file
from d1_migration.report.state import TableState, TargetState

MAX_ROWS = 200  # rows of a Markdown table before it is cut (with a count of the rest)


@dataclass(frozen=True)
class Section:
    title: str
    intro: str
    headers: tuple[str, ...]
    rows: list[tuple]


def _when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "never"


def _checks(table: TableState) -> str:
    if not table.checks:
        return "none recorded"
    bad = [
        f"{c.name} {c.status}" + (f" ({c.severity})" if c.failed else "")
        for c in table.checks.values()
        if c.status != "passed"
    ]
    passed = sum(c.status == "passed" for c in table.checks.values())
    return f"{passed}/{len(table.checks)} passed" + ("; " + ", ".join(bad) if bad else "")


def _parity(table: TableState) -> str:
    return {True: "ok", False: "MISMATCH", None: "unknown"}[table.parity]


def summary_lines(state: TargetState) -> list[str]:
    synced = [t for t in state.tables if t.synced_at is not None]
    parity = [t for t in state.tables if t.parity]
    failed = state.failed_by_severity()
    quarantined_tables = {table for table, _ in state.quarantine}
    return [
        f"{len(synced)} of {len(state.tables)} tables synced; parity holds for {len(parity)}",
        f"{state.quarantined_rows} row(s) quarantined in {len(quarantined_tables)} table(s), "
        f"{len({code for _, code in state.quarantine})} reason(s)",
        "checks failed: "
        + (", ".join(f"{n} {severity}" for severity, n in failed.items()) if failed else "none"),
        f"{len(state.drifted_wallets)} wallet(s) differ from their ledger",
    ]


def sections(state: TargetState) -> list[Section]:
    wallets = Section(
        "Wallets that differ from their ledger",
        "user_wallet's coins and xp against the sum of the user's points_ledger rows "
        "(check wallet_matches_ledger).",
        ("user_id", "D1 user id", "wallet coins", "ledger coins", "wallet xp", "ledger xp"),
        [
            (
                w["user_id"],
                w["d1_user_id"],
                w["wallet_coins"],
                w["ledger_coins"],
                w["wallet_xp"],
                w["ledger_xp"],
            )
            for w in state.drifted_wallets
        ],
    )
    quarantine = Section(
        "Quarantine by table and reason",
        "Open entries of d1_migration.rejected_rows, with one example each; list them all with "
        "`d1-migration quarantine --table T --reason CODE`.",
        ("table", "reason", "rows", "example key", "column", "raw value", "why"),
        [
            (table, code, rows, ex.source_pk, ex.column or "", ex.excerpt, ex.reason)
            for (table, code), rows in sorted(state.quarantine.items())
            for ex in [state.examples[(table, code)]]
        ],
    )
    failed = Section(
        "Checks that did not pass",
        "The latest outcome of each check in Dagster's storage.",
        ("asset", "check", "status", "severity", "at"),
        [
            (f"pg/{table}", c.name, c.status, c.severity, _when(c.at))
            for table, c in sorted(state.failed_checks, key=lambda tc: (tc[1].severity, tc[0]))
        ],
    )
    tables = Section(
        "Tables",
        "D1 rows as of each table's last sync; Postgres rows and the open quarantine now. "
        "Parity: D1 = Postgres + quarantined.",
        (
            "table",
            "group",
            "last sync",
            "mode",
            "D1 rows",
            "Postgres rows",
            "quarantined",
            "parity",
            "checks",
        ),
        [
            (
                t.name,
                t.section,
                _when(t.synced_at),
                t.mode or "",
                "" if t.source_rows is None else t.source_rows,
                "" if t.target_rows is None else t.target_rows,
                t.quarantined,
                _parity(t),
                _checks(t),
            )
            for t in state.tables
        ],
    )
    runs = Section(
        "Recent syncs",
        "Dagster runs that synced tables (newest first).",
        ("run", "started", "seconds", "tables", "mode", "status"),
        [
            (p.run_id[:8], _when(p.started), f"{p.seconds:.1f}", p.tables, p.mode, p.status)
            for p in reversed(state.history[-20:])
        ],
    )
    return [wallets, quarantine, failed, tables, runs]


# --- charts -----------------------------------------------------------------------------


def charts(state: TargetState) -> dict[str, bytes]:
    """PNG charts (matplotlib, Agg: no display needed): rows per table, sync duration over time."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib import pyplot as plt

    out: dict[str, bytes] = {}
    tables = [t for t in state.tables if t.target_rows is not None]
    if tables:
        tables.sort(key=lambda t: (t.target_rows or 0) + t.quarantined)
        fig, ax = plt.subplots(figsize=(8, max(3.0, 0.17 * len(tables) + 1)), dpi=80)
        names = [t.name for t in tables]
        ax.barh(names, [t.target_rows or 0 for t in tables], color="#4c72b0", label="in Postgres")
        ax.barh(
            names,
            [t.quarantined for t in tables],
            left=[t.target_rows or 0 for t in tables],
            color="#dd8452",
            label="quarantined",
        )
        if max((t.target_rows or 0) for t in tables) > 1000:
            ax.set_xscale("symlog")
        ax.set_xlabel("rows")
        ax.set_title("Rows per table")
        ax.tick_params(axis="y", labelsize=7)
        ax.legend(loc="lower right")
        ax.margins(y=0.005)
        fig.tight_layout()
        out["rows_per_table"] = _png(fig, plt)
    if state.history:
        fig, ax = plt.subplots(figsize=(9, 3.2), dpi=80)
        for mode, marker, color in (("full", "s", "#c44e52"), ("incremental", "o", "#4c72b0")):
            points = [p for p in state.history if p.mode == mode]
            if points:
                ax.plot(
                    [p.started for p in points],
                    [p.seconds for p in points],
                    marker=marker,
                    linestyle="-" if mode == "incremental" else "none",
                    color=color,
                    label=f"{mode} run",
                )
        ax.plot(
            [p.started for p in state.history],
            [p.table_seconds for p in state.history],
            linestyle=":",
            marker=".",
            color="#55a868",
            label="tables' own sync time",
        )
        times = [p.started for p in state.history]
        if times[0] == times[-1]:  # one run: an hour either side, not Matplotlib's years
            ax.set_xlim(times[0] - timedelta(hours=1), times[0] + timedelta(hours=1))
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.set_title("Sync duration over time")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        out["sync_duration"] = _png(fig, plt)
    return out


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


CHART_TITLES = {"rows_per_table": "Rows per table", "sync_duration": "Sync duration over time"}


# --- Markdown ---------------------------------------------------------------------------


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(section: Section, limit: int = MAX_ROWS) -> str:
    if not section.rows:
        return "_none_"
    lines = [
        "| " + " | ".join(section.headers) + " |",
        "|" + "---|" * len(section.headers),
    ]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in section.rows[:limit]]
    if len(section.rows) > limit:
        lines.append(f"\n…and {len(section.rows) - limit} more")
    return "\n".join(lines)


def markdown(state: TargetState, target: str, with_charts: dict[str, bytes] | None = None) -> str:
    parts = [
        "# Migration report",
        f"Target {target}; read {_when(state.read_at)}.",
        "\n".join(f"- {line}" for line in summary_lines(state)),
    ]
    for name, png in (with_charts or {}).items():
        parts.append(f"![{CHART_TITLES[name]}]({data_uri(png)})")
    for section in sections(state):
        parts += [f"## {section.title}", section.intro, md_table(section)]
    return "\n\n".join(parts) + "\n"


# --- HTML -------------------------------------------------------------------------------

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; }
.bad { color: #b00020; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _html_cell(value) -> str:
    text = html.escape(str(value))
    cls = []
    if isinstance(value, int | float) and not isinstance(value, bool):
        cls.append("num")
    if str(value) in ("MISMATCH", "failed") or str(value).startswith("failed"):
        cls.append("bad")
    return f'<td class="{" ".join(cls)}">{text}</td>' if cls else f"<td>{text}</td>"


def html_report(state: TargetState, target: str, pngs: dict[str, bytes]) -> str:
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Migration report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>Migration report</h1>",
        f"<p>Target {html.escape(target)}; read {_when(state.read_at)}.</p>",
        "<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in summary_lines(state)) + "</ul>",
    ]
    for name, png in pngs.items():
        out.append(f'<h2>{CHART_TITLES[name]}</h2><img alt="{name}" src="{data_uri(png)}">')
    for section in sections(state):
        out += [f"<h2>{html.escape(section.title)}</h2>", f"<p>{html.escape(section.intro)}</p>"]
        if not section.rows:
            out.append("<p><em>none</em></p>")
            continue
        out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in section.headers))
        out += ["<tr>" + "".join(_html_cell(v) for v in row) + "</tr>" for row in section.rows]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(state: TargetState, target: str, path: Path) -> tuple[Path, dict[str, bytes]]:
    """The HTML report at ``path`` (its directory private: it names quarantined rows' values)
    and the charts it embeds."""
    pngs = charts(state)
    private_file(private_dir(path.parent) / path.name)
    path.write_text(html_report(state, target, pngs), encoding="utf-8")
    return path.resolve(), pngs
