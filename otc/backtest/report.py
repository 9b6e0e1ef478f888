"""Backtest output: ``summary.json``, ``rfqs.csv``, ``report.html`` and the terminal table.

``report.html`` is one self-contained page (works offline): matplotlib (Agg backend) draws each
chart as SVG, inlined into the page. Charts: consolidated mid and depth within 25 bps all-in
(fees included) over time per symbol, the estimate-error distribution, markouts by size
bucket, cumulative P&L over time, and the beyond-depth model check when it ran.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from otc.backtest.runner import DEPTH_BPS, HORIZONS_MS, Backtest
from otc.backtest.scores import score, summary, write_rfqs_csv
from otc.model import decimal_text

__all__ = ["format_table", "write_outputs", "write_report"]


def write_outputs(
    bt: Backtest, out_dir: Path, files: Sequence[str], *, report: bool = True
) -> dict[str, Any]:
    """Write summary.json, rfqs.csv and (unless ``report`` is false) report.html."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = summary(bt, files)
    encoded = msgspec.json.format(msgspec.json.encode(figures), indent=2)
    (out_dir / "summary.json").write_bytes(encoded + b"\n")
    with (out_dir / "rfqs.csv").open("w", newline="", encoding="utf-8") as fh:
        write_rfqs_csv(bt, fh)
    if report:
        write_report(bt, figures, out_dir / "report.html")
    return figures


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _rows(figures: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    sections = (
        ("all", {"": figures}),
        ("size", figures["by_size_bucket"]),
        ("symbol", figures["by_symbol"]),
        ("tier", figures["by_tier"]),
    )
    for section, groups in sections:
        for key, g in groups.items():
            error = g["estimate_error_bps"]
            rows.append(
                (
                    f"{section} {key}".strip(),
                    str(g["rfqs"]),
                    str(g["quotes"]),
                    str(g["fills"]),
                    _cell(g["fill_ratio"]),
                    _cell(error["mean"]),
                    _cell(error["p95"]),
                    *(_cell(g["markout_bps"][h]) for h in HORIZONS_MS),
                    " ".join(f"{v} {c}" for c, v in g["pnl"].items()) or "-",
                )
            )
    return rows


_HEADER = (
    "group",
    "rfqs",
    "quotes",
    "fills",
    "fill ratio",
    "err mean bps",
    "err p95 bps",
    *(f"mkout {h} bps" for h in HORIZONS_MS),
    "pnl",
)


def format_table(figures: dict[str, Any]) -> str:
    """The terminal summary: one row for everything, then per size bucket, symbol and tier."""
    rows = [_HEADER, *_rows(figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _charts(bt: Backtest, figures: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    charts: list[tuple[str, str]] = []
    start = bt.first_ns or 0
    symbols = sorted({s.symbol for s in bt.samples})
    for symbol in symbols:
        points = [s for s in bt.samples if s.symbol == symbol]
        xs = [(p.ts_ns - start) / 1e9 for p in points]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
        top.plot(xs, [float(p.mid) for p in points], lw=1)
        top.set_ylabel("mid")
        top.set_title(f"{symbol}: consolidated mid and depth")
        bottom.plot(xs, [float(p.bid_depth) for p in points], lw=1, label="bid side")
        bottom.plot(xs, [float(p.ask_depth) for p in points], lw=1, label="ask side")
        bottom.set_ylabel(f"qty within {decimal_text(DEPTH_BPS)} bps all-in")
        bottom.set_xlabel("recorded seconds")
        bottom.legend()
        charts.append((f"{symbol} mid and depth", _svg(fig)))
    edges = bt.scenario.size_buckets
    scored = [(r, score(r, edges)) for r in bt.records if r.outcome != "not_reached"]
    errors = [float(s.estimate_error_bps) for _, s in scored if s.estimate_error_bps is not None]
    if errors:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.hist(errors, bins=30)
        ax.set_xlabel("estimate error, bps (positive: the hedge cost more than estimated)")
        ax.set_ylabel("fills")
        charts.append(("Estimate error distribution", _svg(fig)))
    buckets = figures["by_size_bucket"]
    if buckets:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        names = list(buckets)
        width = 0.8 / len(HORIZONS_MS)
        for i, h in enumerate(HORIZONS_MS):
            values = [float(buckets[b]["markout_bps"][h] or 0) for b in names]
            ax.bar([x + i * width for x in range(len(names))], values, width, label=h)
        ax.set_xticks([x + width for x in range(len(names))], names)
        ax.set_ylabel("mean markout, bps")
        ax.set_xlabel("size bucket (notional at mid)")
        ax.legend()
        charts.append(("Markouts by size bucket", _svg(fig)))
    fills = sorted(
        ((r.hedge.ts_ns, s.pnl) for r, s in scored if r.hedge is not None and s.pnl is not None),
    )
    if fills:
        total = Decimal(0)
        xs, ys = [], []
        for ts, pnl in fills:
            total += pnl
            xs.append((ts - start) / 1e9)
            ys.append(float(total))
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.step(xs, ys, where="post")
        ax.set_xlabel("recorded seconds")
        ax.set_ylabel("cumulative desk P&L (quote ccy)")
        charts.append(("P&L over time", _svg(fig)))
    checks = [c for r, _ in scored for c in r.model_checks]
    if checks:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        ax.scatter(
            [float(c.qty / c.truncated_depth) for c in checks],
            [float(c.error_bps) for c in checks],
            s=10,
        )
        ax.set_xlabel(f"qty / visible depth of the top {bt.scenario.model_check_levels} levels")
        ax.set_ylabel("model - full-book walk, bps")
        charts.append(("Beyond-depth model check", _svg(fig)))
    return charts


def write_report(bt: Backtest, figures: dict[str, Any], path: Path) -> None:
    """One offline HTML page: the summary table and the charts (inline SVG)."""
    table = format_table(figures)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>otc backtest</title>",
        "<style>body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "pre{background:#f4f4f4;padding:1em;overflow-x:auto}</style></head><body>",
        "<h1>otc backtest</h1>",
        f"<p>{figures['rfqs']} RFQs, {figures['quotes']} quotes, {figures['fills']} fills over "
        f"{figures['replay_seconds']} recorded seconds ({figures['deltas_replayed']} deltas) "
        f"from {html.escape(', '.join(figures['inputs']))}.</p>",
        f"<pre>{html.escape(table)}</pre>",
    ]
    for title, svg in _charts(bt, figures):
        parts.append(f"<h2>{html.escape(title)}</h2>{svg}")
    parts.append(
        "<h2>summary.json</h2><pre>"
        + html.escape(msgspec.json.format(msgspec.json.encode(figures), indent=2).decode())
        + "</pre></body></html>\n"
    )
    path.write_text("".join(parts), encoding="utf-8")
