"""otc.model: exact fixed-point parsing, plain decimal text, fee bounds, JSON-ready documents."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otc.errors import OtcError, ValueParseError
from otc.model import (
    FEE_DENOMINATOR,
    InstrumentId,
    Scale,
    Side,
    decimal_text,
    decimals_of,
    parse_fee_bps,
    parse_fixed,
    plain,
    to_decimal,
)

# -- parse_fixed: the fast path (plain "123.456" strings) ---------------------------------------


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("64000.15", 2, 6_400_015),
        ("64000.15", 8, 6_400_015_000_000),
        ("64000", 3, 64_000_000),
        ("0", 8, 0),
        ("0.00000001", 8, 1),
        ("007.5", 1, 75),  # leading zeros are digits like any other
        ("1.50000000000", 1, 15),  # trailing zeros beyond the scale are not extra precision
        ("12", 0, 12),
        ("-1.5", 2, -150),
        ("-0.5", 1, -5),
        ("-0", 4, 0),
    ],
)
def test_parse_fixed_plain_text(text: str, decimals: int, expected: int) -> None:
    assert parse_fixed(text, decimals) == expected


# -- parse_fixed: the Decimal path (exponents, Decimal instances, odd but valid forms) ----------


@pytest.mark.parametrize(
    ("text", "decimals", "expected"),
    [
        ("1e-5", 8, 1_000),
        ("1E+2", 2, 10_000),
        ("6.4E+4", 0, 64_000),
        ("1.5e1", 1, 150),
        ("-2.5E-3", 4, -25),
        ("1200E-2", 0, 12),  # an exponent that cancels the "extra" digits is exact
        (".5", 1, 5),
        ("-.5", 1, -5),
        ("1.", 0, 1),
        ("+3", 2, 300),
        ("  7.25 ", 2, 725),
    ],
)
def test_parse_fixed_decimal_path_text(text: str, decimals: int, expected: int) -> None:
    assert parse_fixed(text, decimals) == expected


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (Decimal("64000.15"), 2, 6_400_015),
        (Decimal("8E+1"), 0, 80),
        (Decimal("5E-8"), 8, 5),
        (Decimal("1.2300"), 2, 123),
        (Decimal(-3), 1, -30),
    ],
)
def test_parse_fixed_decimal_instances(value: Decimal, decimals: int, expected: int) -> None:
    assert parse_fixed(value, decimals) == expected


def test_parse_fixed_is_exact_beyond_28_significant_digits() -> None:
    # 29 significant digits: the default decimal context (28 digits) would round these.
    assert parse_fixed("123456789012345678901.23456789", 8) == 12345678901234567890123456789
    assert (
        parse_fixed(Decimal("123456789012345678901.23456789"), 8) == 12345678901234567890123456789
    )
    assert parse_fixed(Decimal("1234567890123456789.0123456789"), 10) == (
        12345678901234567890123456789
    )


def test_parse_fixed_refuses_a_fraction_hidden_beyond_28_digits() -> None:
    # Nine decimals at a scale of eight, in a Decimal of 30 significant digits.
    with pytest.raises(ValueParseError, match="more than 8 decimal places"):
        parse_fixed(Decimal("123456789012345678901.234567891"), 8)


@pytest.mark.parametrize("decimals", [0, 2, 8])
@given(
    units=st.integers(min_value=-(10**30), max_value=10**30),
    exponent=st.integers(min_value=-8, max_value=6),
)
@settings(max_examples=200, deadline=None)
def test_both_paths_agree_with_exact_arithmetic(decimals: int, units: int, exponent: int) -> None:
    exact = Fraction(units) * Fraction(10) ** exponent * 10**decimals
    value = Decimal(f"{units}E{exponent}")  # exact: the constructor never rounds
    forms = [
        str(value),  # may use an exponent: the Decimal path
        format(value, "f"),  # plain text: the fast path
        value,
    ]
    for form in forms:
        if exact.denominator == 1:
            assert parse_fixed(form, decimals) == exact, form
        else:
            with pytest.raises(ValueParseError, match="decimal places"):
                parse_fixed(form, decimals)


# -- parse_fixed: refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["NaN", "nan", "-NaN", "sNaN", "Infinity", "-Infinity", "inf", "-inf", Decimal("NaN")],
)
def test_parse_fixed_refuses_non_finite(text: str | Decimal) -> None:
    with pytest.raises(ValueParseError, match="finite"):
        parse_fixed(text, 8)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "abc",
        "1.2.3",
        "1,5",
        "0x10",
        "--1",
        "-",
        ".",
        "1e",
        "e5",
        "1 000",
        "1_000",  # Python literal syntax, not a decimal text
        "1.5_0",
        "\u0661\u0662",  # Arabic-Indic digits: not something any venue sends as a number
        "\uff11",  # a full-width one
    ],
)
def test_parse_fixed_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueParseError, match="not a number"):
        parse_fixed(text, 8)


@pytest.mark.parametrize("value", [1.5, 2, None, b"1"])
def test_parse_fixed_refuses_non_text(value: object) -> None:
    with pytest.raises(ValueParseError, match="decimal string"):
        parse_fixed(value, 8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "decimals"),
    [
        ("0.123", 2),  # fast path
        ("-0.001", 2),
        ("1.000000001", 8),
        ("1.5", 0),
        ("1.50001", 4),
        ("5E-9", 8),  # Decimal path
        ("1.25e-1", 2),
        (Decimal("0.001"), 2),
    ],
)
def test_parse_fixed_refuses_more_decimals_than_the_scale(
    text: str | Decimal, decimals: int
) -> None:
    with pytest.raises(ValueParseError, match=f"more than {decimals} decimal places"):
        parse_fixed(text, decimals, what="price")


def test_parse_fixed_names_what_it_parses() -> None:
    with pytest.raises(ValueParseError, match=r"^size '0\.001' has more than 2 decimal places$"):
        parse_fixed("0.001", 2, what="size")


@pytest.mark.parametrize("text", ["1E+999990", "1e999999999", "-1E+100000", "9" * 5000])
def test_parse_fixed_refuses_absurd_magnitudes_quickly(text: str) -> None:
    # Without a bound these hang for many seconds building a huge int, or leak
    # decimal.Overflow / int's digit limit instead of a ValueParseError.
    with pytest.raises(ValueParseError, match="out of range"):
        parse_fixed(text, 8)


def test_value_parse_error_is_in_the_error_tree_and_a_value_error() -> None:
    with pytest.raises(OtcError):
        parse_fixed("x", 2)
    with pytest.raises(ValueError, match="not a number"):
        parse_fixed("x", 2)


# -- Scale --------------------------------------------------------------------------------------


def test_scale_price_must_be_positive_and_size_non_negative() -> None:
    scale = Scale(2, 3)
    assert scale.notional_decimals == 5
    assert scale.price("64000.15") == 6_400_015
    assert scale.size("0") == 0  # a size of 0 deletes a level
    assert scale.size("1.5") == 1_500
    with pytest.raises(ValueParseError, match="price must be positive"):
        scale.price("0")
    with pytest.raises(ValueParseError, match="price must be positive"):
        scale.price("-1")
    with pytest.raises(ValueParseError, match="size must not be negative"):
        scale.size("-0.001")
    with pytest.raises(ValueParseError, match="more than 3 decimal places"):
        scale.size("0.0001")


def test_scale_text_round_trips() -> None:
    scale = Scale(8, 8)
    assert scale.price_text(6_400_015_000_000) == Decimal("64000.15")
    assert scale.size_text(1) == Decimal("0.00000001")
    assert decimal_text(scale.size_text(1)) == "0.00000001"


def test_decimals_of() -> None:
    assert decimals_of("64000.10") == 2
    assert decimals_of("64000") == 0
    assert decimals_of("1E-8") == 8
    assert decimals_of("1.5E+3") == 0
    with pytest.raises(ValueParseError, match="not a number"):
        decimals_of("abc")
    with pytest.raises(ValueParseError, match="finite"):
        decimals_of("NaN")


# -- to_decimal / decimal_text ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        (6_400_015, 2, "64000.15"),
        (5, 8, "0.00000005"),
        (-150, 2, "-1.50"),
        (0, 4, "0.0000"),
        (12345678901234567890123456789, 24, "12345.678901234567890123456789"),  # 29 digits
    ],
)
def test_to_decimal_is_exact(value: int, decimals: int, expected: str) -> None:
    result = to_decimal(value, decimals)
    assert result == Decimal(expected)
    assert format(result, "f") == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("8E+1"), "80"),
        (Decimal("5E-8"), "0.00000005"),
        (Decimal("6.4E+4"), "64000"),
        (Decimal("64000.1500"), "64000.15"),
        (Decimal("1.000"), "1"),
        (Decimal("100"), "100"),  # zeros before the point are kept
        (Decimal("0E-8"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("-0.000"), "0"),
        (Decimal("-1.50"), "-1.5"),
        (Decimal("1E-20"), "0.00000000000000000001"),
        (Decimal("1.23E+30"), "1230000000000000000000000000000"),
        (Decimal("123456789012345678901234567890.5"), "123456789012345678901234567890.5"),
    ],
)
def test_decimal_text_never_uses_exponent_notation(value: Decimal, text: str) -> None:
    assert decimal_text(value) == text
    assert "E" not in text.upper()
    assert Decimal(text) == value  # and loses nothing


@given(
    units=st.integers(min_value=-(10**40), max_value=10**40),
    exponent=st.integers(min_value=-30, max_value=30),
)
@settings(max_examples=200, deadline=None)
def test_decimal_text_is_plain_and_exact(units: int, exponent: int) -> None:
    value = Decimal(f"{units}E{exponent}")
    text = decimal_text(value)
    assert Decimal(text) == value
    assert "e" not in text.lower()
    assert text != "-0"
    if "." in text:
        assert not text.endswith(("0", "."))


# -- parse_fee_bps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("2.5", 25_000),
        ("10", 100_000),
        ("0.0001", 1),
        (Decimal("2.6"), 26_000),
        (Decimal("1E+1"), 100_000),
        ("9999.9999", FEE_DENOMINATOR - 1),  # the largest fee below 100 %
    ],
)
def test_parse_fee_bps(text: str | Decimal, expected: int) -> None:
    assert parse_fee_bps(text) == expected


@pytest.mark.parametrize("text", ["10000", "-0.0001", "-1", "20000", Decimal("1E+4")])
def test_parse_fee_bps_refuses_fees_outside_0_to_10000(text: str | Decimal) -> None:
    with pytest.raises(ValueParseError, match=r"fee must be in \[0, 10000\) bps"):
        parse_fee_bps(text)


@pytest.mark.parametrize(("text", "match"), [("0.00001", "decimal places"), ("NaN", "finite")])
def test_parse_fee_bps_refuses_unrepresentable_fees(text: str, match: str) -> None:
    with pytest.raises(ValueParseError, match=match):
        parse_fee_bps(text)


# -- plain --------------------------------------------------------------------------------------


class _Doc(msgspec.Struct):
    price: Decimal
    levels: list[tuple[Decimal, Decimal]]
    by_venue: dict[str, Decimal]
    side: Side
    instrument: InstrumentId
    note: str | None = None


def test_plain_renders_every_decimal_as_plain_text() -> None:
    doc = _Doc(
        price=Decimal("8E+1"),
        levels=[(Decimal("5E-8"), Decimal("1.500"))],
        by_venue={"okx": Decimal("6.4E+4")},
        side=Side.BUY,
        instrument=InstrumentId("BTC-USDT", "okx"),
    )
    assert plain(doc) == {
        "price": "80",
        "levels": [["0.00000005", "1.5"]],
        "by_venue": {"okx": "64000"},
        "side": "buy",
        "instrument": {"symbol": "BTC-USDT", "venue": "okx"},
        "note": None,
    }
    # msgspec alone would write exponents: this is what plain() is for.
    assert b"8E+1" in msgspec.json.encode(doc)
    assert b"E" not in msgspec.json.encode(plain(doc))


def test_side_and_instrument_id() -> None:
    assert Side.BUY.opposite is Side.SELL
    assert Side.SELL.opposite is Side.BUY
    assert str(InstrumentId("BTC-USDT", "binance")) == "BTC-USDT.binance"
    assert InstrumentId("A", "b") < InstrumentId("A", "c") < InstrumentId("B", "a")
