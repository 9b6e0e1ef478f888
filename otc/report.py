"""Human-readable rendering of estimates: the tables ``otc estimate`` and ``otc demo`` print."""

from __future__ import annotations

from decimal import Context, Decimal

from otc.model import decimal_text, plain
from otc.slippage import MaxQty, SlippageEstimate

__all__ = ["estimate_json", "format_estimate", "format_max_qty"]

_CENT = Decimal("0.01")


def _t(value: Decimal | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    return decimal_text(value) + (f" {unit}" if unit else "")


def _grouped(value: Decimal | None) -> str:
    """A money amount with thousands separators and 2 decimals, for reading (not for wire)."""
    if value is None:
        return "n/a"
    # Quantized at the value's own precision (the context's 28 digits would refuse 1e27), with
    # room for one more digit: 9.996 is 10.00.
    digits = max(value.adjusted() + 4, 1)
    return f"{value.quantize(_CENT, context=Context(prec=digits)):,}"


def format_estimate(est: SlippageEstimate, *, base: str = "", quote: str = "") -> str:
    """A multi-line table: request, fill, prices, slippage, route per venue, exclusions."""
    if est.qty_requested is not None:
        request = f"{est.side.value} {decimal_text(est.qty_requested)} {base}".rstrip()
    else:
        assert est.notional_requested is not None
        request = f"{est.side.value} {_grouped(est.notional_requested)} {quote} notional".rstrip()
    lines = [f"{est.symbol}  {request}"]
    rows = [
        ("qty filled", _t(est.qty_filled, base)),
        ("notional (pre-fee)", f"{_grouped(est.notional_filled)} {quote}".rstrip()),
        ("fees", f"{_grouped(est.fees)} {quote}".rstrip()),
        ("vwap (pre-fee)", _t(est.vwap)),
        ("avg price all-in", _t(est.avg_price_all_in)),
        ("worst price", _t(est.worst_price)),
        ("touch", _t(est.touch)),
        ("mid", _t(est.mid)),
        ("slippage vs mid", _t(est.slippage_bps_mid, "bps (all-in)")),
        ("slippage vs touch", _t(est.slippage_bps_touch, "bps (vwap)")),
        ("levels consumed", str(est.levels)),
    ]
    if est.shortfall_qty is not None:
        rows.append(("shortfall", _t(est.shortfall_qty, base)))
    if est.shortfall_notional is not None:
        rows.append(("shortfall notional", f"{_grouped(est.shortfall_notional)} {quote}".rstrip()))
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    if est.depth_exhausted:
        lines.append(
            "  !! size beyond visible depth: the figures above cover the visible part only"
        )
    if est.allocation:
        lines.append("  route:")
        venue_w = max(len(v) for v in est.allocation)
        qty_texts = {v: decimal_text(f.qty) for v, f in est.allocation.items()}
        qty_w = max(len(t) for t in qty_texts.values())
        for venue, fill in sorted(est.allocation.items(), key=lambda kv: -kv[1].qty):
            share = fill.qty / est.qty_filled * 100 if est.qty_filled else Decimal(0)
            lines.append(
                f"    {venue:<{venue_w}}  {qty_texts[venue]:>{qty_w}} {base}  "
                f"{_grouped(fill.notional):>18} {quote}  {share:5.1f} %"
            )
    for ex in est.excluded:
        lines.append(f"  excluded {ex.venue}: {ex.reason} ({ex.detail})")
    if est.impact is not None:
        imp = est.impact
        lines += [
            f"  impact model ({imp.model}), {imp.label}:",
            f"    shortfall {decimal_text(imp.qty)} {base} at ~{_t(imp.avg_price_all_in)} all-in; "
            f"model impact {_t(imp.impact_bps)} bps",
            f"    whole block ~{_t(imp.total_avg_price_all_in)} all-in, "
            f"~{_t(imp.total_slippage_bps_mid)} bps vs mid",
        ]
    return "\n".join(lines)


def format_max_qty(result: MaxQty, est: SlippageEstimate | None, *, base: str = "") -> str:
    head = (
        f"largest qty within {decimal_text(result.bps)} bps of mid (all-in): "
        f"{decimal_text(result.qty)} {base}".rstrip()
    )
    head += f"\n  all-in limit price {decimal_text(result.limit_price_all_in)}"
    if result.capped_by_depth:
        head += "\n  (all visible depth fits within the bound)"
    if est is None:
        return head + "\n  nothing fits: the first level alone is beyond the bound"
    return head + "\n" + format_estimate(est, base=base)


def estimate_json(est: SlippageEstimate) -> dict[str, object]:
    """The JSON object of an estimate: every number as plain decimal text."""
    doc = plain(est)
    assert isinstance(doc, dict)
    doc["depth_exhausted"] = est.depth_exhausted
    return doc
