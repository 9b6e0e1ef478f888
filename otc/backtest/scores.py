"""Scores of a backtest: per RFQ, and aggregated by size bucket, symbol and client tier.

Definitions (all from the desk's side; ``P`` our price on the client's side, ``Q`` the filled
qty, ``mid_q`` the consolidated mid the quote was priced at; prices in quote currency):

* **estimate error** (bps, fills only): the engine's estimated hedge all-in price ``E`` (the
  journaled explanation) against the realised all-in average ``R`` of the hedge walked on the
  recorded books at accept + latency: ``(R - E) / E x 1e4`` for a client buy (we buy the
  hedge), ``(E - R) / E x 1e4`` for a client sell. Positive: the hedge cost more than
  estimated. ``mean`` is signed (the bias); ``p50``, ``p95`` and ``max_abs`` are of the absolute
  error (nearest rank).
* **markouts** (bps, every quote, on the client's side): against the consolidated mid ``M_h``
  1 s, 10 s and 60 s after the quote, ``(P - M_h) / M_h x 1e4`` for a client buy and
  ``(M_h - P) / M_h x 1e4`` for a sell. Positive: the quote was good for the desk. A horizon
  past the end of the data (or without a usable mid) is left out. ``markout_bps`` averages all
  quotes, ``markout_bps_filled`` the filled ones.
* **P&L** (quote currency, fills): ``spread_captured = (P - mid_q) x Q`` (buy; sell
  ``(mid_q - P) x Q``), ``slippage`` the hedge's notional before fees against ``mid_q x Q``
  (what visible depth could not cover is marked at the mid at hedge time), ``fees`` the venue
  taker fees of the hedge; ``pnl = spread_captured - slippage - fees``.
* **fill ratio**: fills / quotes.
* **size bucket**: the RFQ's notional at mid (qty x mid, or the notional asked) against the
  scenario's ``size_buckets`` edges.

Numbers are exact decimals rounded half-even (bps to 4 decimals, money to 8), written as plain
decimal text: the same inputs always give the same bytes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any, TextIO

import msgspec

from otc.backtest.runner import HORIZONS_MS, Backtest, ModelCheck, RfqRecord
from otc.model import BPS_DENOMINATOR
from otc.model import decimal_text as text

__all__ = ["RfqScore", "bucket_label", "score", "summary", "write_rfqs_csv"]

_CTX = Context(prec=60)
_BPS = Decimal("0.0001")
_MONEY = Decimal("0.00000001")
_ZERO = Decimal(0)


def _bps(value: Decimal) -> Decimal:
    return value.quantize(_BPS, rounding=ROUND_HALF_EVEN, context=_CTX)


def _money(value: Decimal) -> Decimal:
    return value.quantize(_MONEY, rounding=ROUND_HALF_EVEN, context=_CTX)


def _t(value: Decimal | None) -> str | None:
    return None if value is None else text(value)


class RfqScore(msgspec.Struct, frozen=True, kw_only=True):
    """The scores of one RFQ (``None`` where they do not apply)."""

    notional_at_mid: Decimal | None
    bucket: str
    estimate_error_bps: Decimal | None
    markout_bps: dict[str, Decimal | None]
    spread_captured: Decimal | None
    slippage: Decimal | None
    fees: Decimal | None
    pnl: Decimal | None


def bucket_label(notional: Decimal | None, edges: Sequence[Decimal]) -> str:
    """``"<100000"``, ``"100000-1000000"``, ..., ``">=5000000"``; ``"unknown"`` without a size."""
    if notional is None:
        return "unknown"
    low: Decimal | None = None
    for edge in edges:
        if notional < edge:
            return f"<{text(edge)}" if low is None else f"{text(low)}-{text(edge)}"
        low = edge
    return f">={text(low)}" if low is not None else "all"


def score(record: RfqRecord, edges: Sequence[Decimal]) -> RfqScore:
    """Score one RFQ; see the module docstring."""
    mid_q = record.mid_at_quote
    if record.quote:
        notional = _CTX.multiply(Decimal(record.quote["qty"]), mid_q) if mid_q else None
    elif record.notional is not None:
        notional = record.notional
    elif record.qty is not None and mid_q is not None:
        notional = _CTX.multiply(record.qty, mid_q)
    else:
        notional = None
    buy = record.direction == "buy"
    price = record.quoted_price
    markouts: dict[str, Decimal | None] = {}
    for label in HORIZONS_MS:
        mid_h = record.markouts.get(label)
        if price is None or mid_h is None:
            markouts[label] = None
        else:
            move = price - mid_h if buy else mid_h - price
            markouts[label] = _bps(_CTX.divide(move * BPS_DENOMINATOR, mid_h))
    error = spread = slippage = fees = pnl = None
    hedge = record.hedge
    fill_price, qty = record.fill_price, record.fill_qty
    if hedge is not None and fill_price is not None and qty is not None and mid_q is not None:
        estimated = record.estimated_all_in.get("ask" if buy else "bid")
        realised = hedge.avg_price_all_in
        if estimated is not None and realised is not None:
            diff = realised - estimated if buy else estimated - realised
            error = _bps(_CTX.divide(diff * BPS_DENOMINATOR, estimated))
        mark = hedge.mid if hedge.mid is not None else mid_q
        hedged = _CTX.add(hedge.notional, _CTX.multiply(hedge.shortfall_qty, mark))
        at_mid = _CTX.multiply(mid_q, qty)
        if buy:
            spread = _CTX.multiply(fill_price - mid_q, qty)
            slippage = hedged - at_mid
        else:
            spread = _CTX.multiply(mid_q - fill_price, qty)
            slippage = at_mid - hedged
        fees = hedge.fees
        pnl = _money(spread - slippage - fees)
        spread, slippage, fees = _money(spread), _money(slippage), _money(fees)
    return RfqScore(
        notional_at_mid=notional,
        bucket=bucket_label(notional, edges),
        estimate_error_bps=error,
        markout_bps=markouts,
        spread_captured=spread,
        slippage=slippage,
        fees=fees,
        pnl=pnl,
    )


def error_stats(values: Iterable[Decimal]) -> dict[str, Any]:
    """``{"n", "mean", "p50", "p95", "max_abs"}``: signed mean, percentiles of |value|."""
    items = list(values)
    if not items:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max_abs": None}
    absolute = sorted(abs(v) for v in items)
    n = len(items)

    def rank(q: int) -> str:  # nearest rank: the ceil(q% x n)-th smallest
        return text(_bps(absolute[max(0, -(-q * n // 100) - 1)]))

    return {
        "n": n,
        "mean": text(_bps(_CTX.divide(sum(items, _ZERO), n))),
        "p50": rank(50),
        "p95": rank(95),
        "max_abs": text(_bps(absolute[-1])),
    }


def _mean(values: list[Decimal]) -> str | None:
    return text(_bps(_CTX.divide(sum(values, _ZERO), len(values)))) if values else None


class _Group:
    __slots__ = ("errors", "fills", "markouts", "markouts_filled", "pnl", "quotes", "rfqs")

    def __init__(self) -> None:
        self.rfqs = self.quotes = self.fills = 0
        self.errors: list[Decimal] = []
        self.markouts: dict[str, list[Decimal]] = {h: [] for h in HORIZONS_MS}
        self.markouts_filled: dict[str, list[Decimal]] = {h: [] for h in HORIZONS_MS}
        self.pnl: dict[str, Decimal] = {}

    def add(self, record: RfqRecord, s: RfqScore, currency: str) -> None:
        self.rfqs += 1
        self.quotes += record.outcome == "quote"
        filled = record.accept_outcome == "filled"
        self.fills += filled
        if s.estimate_error_bps is not None:
            self.errors.append(s.estimate_error_bps)
        for h, value in s.markout_bps.items():
            if value is not None:
                self.markouts[h].append(value)
                if filled:
                    self.markouts_filled[h].append(value)
        if s.pnl is not None:
            self.pnl[currency] = self.pnl.get(currency, _ZERO) + s.pnl

    def figures(self) -> dict[str, Any]:
        ratio = _bps(Decimal(self.fills) / self.quotes) if self.quotes else None
        return {
            "rfqs": self.rfqs,
            "quotes": self.quotes,
            "fills": self.fills,
            "fill_ratio": _t(ratio),
            "estimate_error_bps": error_stats(self.errors),
            "markout_bps": {h: _mean(v) for h, v in self.markouts.items()},
            "markout_bps_filled": {h: _mean(v) for h, v in self.markouts_filled.items()},
            "pnl": {c: text(v) for c, v in sorted(self.pnl.items())},
        }


def _ratio_bucket(check: ModelCheck) -> str:
    ratio = check.qty / check.truncated_depth if check.truncated_depth else Decimal("Infinity")
    if ratio <= 2:
        return "1-2x"
    return "2-5x" if ratio <= 5 else ">5x"


#: Data gaps listed one by one in ``summary.json`` (the longest first); the rest are counted.
MAX_GAPS_LISTED = 20


def _gaps(bt: Backtest) -> dict[str, Any]:
    """Silences longer than the engine's ``max_book_age_ms`` per venue book: count, total and
    the longest, with when they started (recorded seconds after the first event)."""
    first = bt.first_ns or 0
    longest = sorted(bt.gaps, key=lambda g: (g.start_ns - g.end_ns, g.start_ns, g.venue))
    return {
        "count": len(bt.gaps),
        "seconds": text(Decimal(sum(g.end_ns - g.start_ns for g in bt.gaps)).scaleb(-9)),
        "longest": [
            {
                "venue": g.venue,
                "symbol": g.symbol,
                "from_s": text(Decimal(g.start_ns - first).scaleb(-9)),
                "seconds": text(Decimal(g.end_ns - g.start_ns).scaleb(-9)),
            }
            for g in longest[:MAX_GAPS_LISTED]
        ],
    }


def summary(bt: Backtest, files: Sequence[str]) -> dict[str, Any]:
    """The figures of ``summary.json`` (deterministic: no wall-clock time, no paths)."""
    scenario = bt.scenario
    edges = scenario.size_buckets
    quote_ccy = {inst.symbol: inst.quote for inst in bt.config.instruments}
    total = _Group()
    groups: dict[str, dict[str, _Group]] = {"size_bucket": {}, "symbol": {}, "tier": {}}
    rejects: dict[str, int] = {}
    accept_outcomes: dict[str, int] = {}
    breakdown: dict[str, dict[str, Decimal]] = {}
    reached = [r for r in bt.records if r.outcome != "not_reached"]
    for record in reached:
        s = score(record, edges)
        currency = quote_ccy.get(record.symbol or "", "?")
        total.add(record, s, currency)
        for name, key in (
            ("size_bucket", s.bucket),
            ("symbol", record.symbol or ""),
            ("tier", record.tier),
        ):
            groups[name].setdefault(key, _Group()).add(record, s, currency)
        if record.outcome != "quote":
            rejects[record.outcome] = rejects.get(record.outcome, 0) + 1
        elif record.accept_outcome:
            accept_outcomes[record.accept_outcome] = (
                accept_outcomes.get(record.accept_outcome, 0) + 1
            )
        if s.pnl is not None:
            parts = breakdown.setdefault(
                currency, {"spread_captured": _ZERO, "slippage": _ZERO, "fees": _ZERO}
            )
            parts["spread_captured"] += s.spread_captured or _ZERO
            parts["slippage"] += s.slippage or _ZERO
            parts["fees"] += s.fees or _ZERO
    figures = total.figures()
    span = (bt.last_ns - bt.first_ns) if bt.first_ns is not None else 0
    out: dict[str, Any] = {
        "rfqs": figures["rfqs"],
        "quotes": figures["quotes"],
        "fills": figures["fills"],
        "fill_ratio": figures["fill_ratio"],
        "rejects": dict(sorted(rejects.items())),
        "accept_outcomes": dict(sorted(accept_outcomes.items())),
        "rfqs_not_reached": len(bt.records) - len(reached),
        "estimate_error_bps": figures["estimate_error_bps"],
        "markout_bps": figures["markout_bps"],
        "markout_bps_filled": figures["markout_bps_filled"],
        "pnl": figures["pnl"],
        "pnl_breakdown": {
            c: {k: text(v) for k, v in parts.items()} for c, parts in sorted(breakdown.items())
        },
        "deltas_replayed": bt.deltas,
        "snapshots_replayed": bt.snapshots,
        "events_ignored": bt.ignored,
        "deltas_before_snapshot": bt.unsynced,
        "events_out_of_order": bt.out_of_order,
        "data_gaps": _gaps(bt),
        "replay_seconds": text(Decimal(span).scaleb(-9)),
        "by_size_bucket": _groups(groups["size_bucket"], edges),
        "by_symbol": {k: g.figures() for k, g in sorted(groups["symbol"].items())},
        "by_tier": {k: g.figures() for k, g in sorted(groups["tier"].items())},
        "scenario": {
            "flow": "listed" if scenario.rfqs else "generated",
            "seed": scenario.flow.seed,
            "accept_model": type(scenario.accept).__struct_config__.tag,
            "accept_delay_ms": scenario.accept.delay_ms,
            "hedge_latency_ms": bt.hedge_latency_ns // 1_000_000,
            "hedge_consume": scenario.hedge.consume,
            "quote_ttl_ms": bt.config.quoting.quote_ttl_ms,
        },
        "inputs": list(files),
    }
    if scenario.model_check_levels:
        checks = [c for r in reached for c in r.model_checks]
        by_ratio: dict[str, list[Decimal]] = {"1-2x": [], "2-5x": [], ">5x": []}
        for check in checks:
            by_ratio[_ratio_bucket(check)].append(check.error_bps)
        out["model_check"] = {
            "levels": scenario.model_check_levels,
            "error_bps": error_stats(c.error_bps for c in checks),
            "unpriced_by_model": bt.model_unpriced,
            "by_qty_over_truncated_depth": {k: error_stats(v) for k, v in by_ratio.items()},
        }
    return out


def _groups(groups: dict[str, _Group], edges: Sequence[Decimal]) -> dict[str, Any]:
    order = [bucket_label(Decimal(0), edges)]
    order += [bucket_label(edge, edges) for edge in edges]
    order.append("unknown")
    return {k: groups[k].figures() for k in order if k in groups}


CSV_COLUMNS = [
    "rfq_id",
    "ts_ns",
    "client",
    "tier",
    "symbol",
    "side",
    "client_side",
    "qty_requested",
    "notional_requested",
    "size_bucket",
    "outcome",
    "reason",
    "quote_id",
    "qty",
    "bid",
    "ask",
    "mid_at_quote",
    "estimated_hedge_all_in",
    "accept_outcome",
    "fill_price",
    "fill_qty",
    "hedge_ts_ns",
    "hedge_qty_filled",
    "hedge_shortfall_qty",
    "hedge_all_in",
    "hedge_route",
    "estimate_error_bps",
    "markout_1s_bps",
    "markout_10s_bps",
    "markout_60s_bps",
    "spread_captured",
    "slippage",
    "fees",
    "pnl",
    "model_check_error_bps",
]


def write_rfqs_csv(bt: Backtest, out: TextIO) -> int:
    """One row per RFQ of the flow (``outcome`` ``not_reached`` past the data's end)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    edges = bt.scenario.size_buckets
    for r in bt.records:
        s = score(r, edges)
        key = "ask" if r.direction == "buy" else "bid"
        h = r.hedge
        row: list[object] = [
            r.rfq_id,
            r.at_ns,
            r.client,
            r.tier,
            r.symbol or "",
            r.side,
            r.direction,
            _t(r.qty),
            _t(r.notional),
            s.bucket,
            r.outcome,
            r.reason,
            r.quote_id,
            r.quote.get("qty"),
            r.quote.get("bid"),
            r.quote.get("ask"),
            _t(r.mid_at_quote),
            _t(r.estimated_all_in.get(key)),
            r.accept_outcome,
            _t(r.fill_price),
            _t(r.fill_qty),
            h.ts_ns if h else None,
            _t(h.qty_filled) if h else None,
            _t(h.shortfall_qty) if h else None,
            _t(h.avg_price_all_in) if h else None,
            " ".join(f"{v}:{text(q)}" for v, q in h.route.items()) if h else None,
            _t(s.estimate_error_bps),
            *(_t(s.markout_bps[label]) for label in HORIZONS_MS),
            _t(s.spread_captured),
            _t(s.slippage),
            _t(s.fees),
            _t(s.pnl),
            " ".join(text(_bps(c.error_bps)) for c in r.model_checks),
        ]
        writer.writerow(["" if v is None else v for v in row])
    return len(bt.records)
