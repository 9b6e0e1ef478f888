"""otc.book: L2Book snapshot/delta semantics, ConsolidatedBook exclusions, ladder caching."""

from __future__ import annotations

import pytest

from otc.book import ConsolidatedBook, Exclusion, L2Book, apply_event
from otc.errors import OtcError
from otc.model import BookDelta, BookSnapshot, Scale, Side

SCALE = Scale(2, 3)
MS = 1_000_000  # ns per ms


def book_with(bids: list[tuple[int, int]], asks: list[tuple[int, int]], venue: str = "x") -> L2Book:
    book = L2Book(venue, "BTC-USDT", SCALE)
    book.apply_snapshot(bids, asks)
    book._check()
    return book


# -- L2Book: snapshots -------------------------------------------------------------------------


def test_snapshot_replaces_everything_and_ignores_size_zero_levels() -> None:
    book = book_with([(100, 5), (99, 1)], [(101, 2)])
    book.apply_snapshot([(90, 3), (95, 0)], [(110, 4), (105, 1)], sequence=7)
    book._check()
    assert list(book.bids()) == [(90, 3)]
    assert list(book.asks()) == [(105, 1), (110, 4)]
    assert (book.best_bid, book.best_ask) == (90, 105)
    assert book.bid_size(100) == 0  # the old level is gone
    assert book.bid_size(95) == 0  # a size-0 level in a snapshot is not a level
    assert len(book) == 3
    assert book.sequence == 7


@pytest.mark.parametrize(
    ("bids", "asks", "match"),
    [
        ([(100, -1)], [], "negative bid size -1 at price 100"),
        ([], [(101, -5)], "negative ask size -5 at price 101"),
        ([(100, 1), (100, 2)], [], "bid price 100 given twice"),
        ([], [(101, 1), (102, 1), (101, 1)], "ask price 101 given twice"),
        ([(100, 0), (100, 1)], [], "bid price 100 given twice"),  # even if one is a size 0
        ([(0, 1)], [], "non-positive bid price 0"),
        ([], [(-3, 1)], "non-positive ask price -3"),
    ],
)
def test_snapshot_rejects_bad_levels(
    bids: list[tuple[int, int]], asks: list[tuple[int, int]], match: str
) -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    with pytest.raises(ValueError, match=match):
        book.apply_snapshot(bids, asks)


def test_refused_snapshot_leaves_the_book_unchanged() -> None:
    # The bids were once replaced before the asks were checked: half a new book.
    book = book_with([(100, 5)], [(101, 2)])
    with pytest.raises(ValueError, match="ask price 103 given twice"):
        book.apply_snapshot([(90, 3)], [(103, 1), (103, 2)], sequence=7)
    book._check()
    assert (list(book.bids()), list(book.asks())) == ([(100, 5)], [(101, 2)])
    assert book.sequence is None


# -- L2Book: deltas ----------------------------------------------------------------------------


def test_size_zero_deletes_a_level() -> None:
    book = book_with([(100, 5), (99, 1)], [(101, 2), (102, 3)])
    book.update_bid(99, 0)
    book.update_ask(102, 0)
    book._check()
    assert list(book.bids()) == [(100, 5)]
    assert list(book.asks()) == [(101, 2)]
    assert book.bid_size(99) == 0
    assert len(book) == 2


def test_deleting_a_missing_level_is_a_no_op() -> None:
    book = book_with([(100, 5)], [(101, 2)])
    twin = book_with([(100, 5)], [(101, 2)])
    book.update_bid(42, 0)
    book.update_ask(4242, 0)
    book.update_bid(101, 0)  # an ask price, but not a bid
    book._check()
    assert book == twin
    assert list(book.bids()) == [(100, 5)]
    assert list(book.asks()) == [(101, 2)]
    assert (book.best_bid, book.best_ask) == (100, 101)


@pytest.mark.parametrize(
    ("side", "price", "size", "match"),
    [
        ("bid", 100, -1, "negative bid size -1 at price 100"),  # an existing level
        ("bid", 97, -2, "negative bid size -2 at price 97"),  # a new one
        ("ask", 101, -5, "negative ask size -5 at price 101"),
        ("ask", 105, -5, "negative ask size -5 at price 105"),
        ("bid", 0, 1, "non-positive bid price 0"),
        ("ask", -3, 1, "non-positive ask price -3"),
    ],
)
def test_a_delta_refuses_bad_levels_and_leaves_the_book_unchanged(
    side: str, price: int, size: int, match: str
) -> None:
    # A negative size was stored as a level (a recording's delta, replayed): walks then took
    # negative quantities, and the backtest priced through them without a word.
    book = book_with([(100, 5), (99, 1)], [(101, 2), (102, 3)])
    twin = book_with([(100, 5), (99, 1)], [(101, 2), (102, 3)])
    update = book.update_bid if side == "bid" else book.update_ask
    with pytest.raises(ValueError, match=match):
        update(price, size)
    levels = [(price, size)]
    delta = BookDelta(
        "x", "BTC-USDT", levels if side == "bid" else [], [] if side == "bid" else levels, 9, 0, 5
    )
    with pytest.raises(ValueError, match=match):
        apply_event(book, delta)
    book._check()
    assert book == twin
    assert (book.best_bid, book.best_ask) == (100, 101)
    assert book.sequence is None


def test_size_change_at_an_existing_level_keeps_the_touch() -> None:
    book = book_with([(100, 5), (99, 1)], [(101, 2)])
    book.update_bid(99, 7)
    book.update_bid(100, 1)
    book._check()
    assert list(book.bids()) == [(100, 1), (99, 7)]
    assert book.best_bid == 100


def test_best_bid_and_ask_follow_inserts_and_deletes() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    assert (book.best_bid, book.best_ask) == (None, None)
    book.update_bid(100, 1)
    assert book.best_bid == 100
    book.update_bid(98, 1)  # worse: the touch stays
    assert book.best_bid == 100
    book.update_bid(102, 1)  # better: a new touch
    assert book.best_bid == 102
    book.update_ask(110, 1)
    book.update_ask(112, 1)
    book.update_ask(105, 1)
    assert book.best_ask == 105
    book._check()

    book.update_bid(102, 0)  # the best bid itself is deleted: the next one takes over
    assert book.best_bid == 100
    book.update_ask(105, 0)
    assert book.best_ask == 110
    book.update_bid(98, 0)  # deleting below the touch changes nothing at the touch
    assert book.best_bid == 100
    book._check()

    book.update_bid(100, 0)  # the last bid
    book.update_ask(110, 0)
    book.update_ask(112, 0)  # the last ask
    assert (book.best_bid, book.best_ask) == (None, None)
    assert len(book) == 0
    book._check()


def test_update_by_side_validates_and_routes() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    book.update(Side.SELL, 100, 3)  # a seller hits bids
    book.update(Side.BUY, 101, 4)  # a buyer lifts asks
    assert list(book.levels(Side.SELL)) == [(100, 3)]
    assert list(book.levels(Side.BUY)) == [(101, 4)]
    assert book.depth(Side.SELL) == 1
    assert book.depth(Side.BUY) == 1
    with pytest.raises(ValueError, match="negative size -1"):
        book.update(Side.BUY, 101, -1)
    with pytest.raises(ValueError, match="non-positive price 0"):
        book.update(Side.SELL, 0, 1)
    book._check()


def test_spread_and_crossed() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    assert book.spread is None
    assert not book.crossed
    book.update_bid(100, 1)
    assert book.spread is None  # one side empty
    assert not book.crossed
    book.update_ask(103, 1)
    assert book.spread == 3
    assert not book.crossed
    book.update_ask(100, 1)  # locked: bid == ask counts as crossed
    assert book.spread == 0
    assert book.crossed
    book.update_bid(101, 1)
    assert book.spread == -1
    assert book.crossed
    book.update_bid(101, 0)
    book.update_ask(100, 0)
    assert book.spread == 3
    assert not book.crossed


def test_iteration_runs_from_the_touch_outward() -> None:
    book = book_with(
        [(95, 1), (100, 2), (97, 3), (99, 4)],
        [(110, 1), (101, 2), (105, 3)],
    )
    book.update_bid(98, 5)
    book.update_ask(103, 6)
    assert list(book.bids()) == [(100, 2), (99, 4), (98, 5), (97, 3), (95, 1)]
    assert list(book.asks()) == [(101, 2), (103, 6), (105, 3), (110, 1)]
    assert list(book.levels(Side.SELL)) == list(book.bids())
    assert list(book.levels(Side.BUY)) == list(book.asks())
    assert book.depth(Side.SELL) == 5
    assert book.depth(Side.BUY) == 4


def test_truncate_keeps_the_best_levels() -> None:
    book = book_with([(100, 1), (99, 1), (98, 1)], [(101, 1), (102, 1), (103, 1)])
    assert book.truncate(2) == ([98], [103])
    book._check()
    assert list(book.bids()) == [(100, 1), (99, 1)]
    assert list(book.asks()) == [(101, 1), (102, 1)]
    assert book.truncate(5) == ([], [])


# -- L2Book: sequence, timestamps, versions ---------------------------------------------------


def test_set_meta_records_only_what_is_given() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    assert (book.sequence, book.ts_event_ns, book.ts_recv_ns) == (None, 0, 0)
    book.set_meta(sequence=5, ts_event_ns=1_000, ts_recv_ns=2_000)
    assert (book.sequence, book.ts_event_ns, book.ts_recv_ns) == (5, 1_000, 2_000)
    book.set_meta(ts_recv_ns=3_000)  # no sequence, no event time: both kept
    assert (book.sequence, book.ts_event_ns, book.ts_recv_ns) == (5, 1_000, 3_000)
    book.set_meta(sequence=0)  # 0 is a sequence like any other
    assert book.sequence == 0


def test_events_carry_sequence_and_timestamps() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    apply_event(book, BookSnapshot("x", "BTC-USDT", [(100, 1)], [(101, 1)], 10, 111, 222))
    assert (book.sequence, book.ts_event_ns, book.ts_recv_ns) == (10, 111, 222)
    apply_event(book, BookDelta("x", "BTC-USDT", [(100, 0), (99, 2)], [(102, 3)], 11, 333, 444))
    book._check()
    assert list(book.bids()) == [(99, 2)]
    assert list(book.asks()) == [(101, 1), (102, 3)]
    assert (book.sequence, book.ts_event_ns, book.ts_recv_ns) == (11, 333, 444)
    book.clear()
    assert len(book) == 0
    assert book.sequence is None
    assert (book.best_bid, book.best_ask) == (None, None)


def test_versions_bump_per_side() -> None:
    book = L2Book("x", "BTC-USDT", SCALE)
    book.apply_snapshot([(100, 1)], [(101, 1)])
    bid, ask = book.bid_version, book.ask_version
    book.update_bid(100, 2)  # a size change
    assert (book.bid_version, book.ask_version) == (bid + 1, ask)
    book.update_bid(99, 1)  # an insert
    book.update_bid(99, 0)  # a delete
    assert (book.bid_version, book.ask_version) == (bid + 3, ask)
    book.update_ask(101, 0)
    assert (book.bid_version, book.ask_version) == (bid + 3, ask + 1)
    assert book.side_version(Side.BUY) == book.ask_version
    assert book.side_version(Side.SELL) == book.bid_version
    book.apply_snapshot([], [])
    assert (book.bid_version, book.ask_version) == (bid + 4, ask + 2)


def test_equality_ignores_insertion_order_and_metadata() -> None:
    a = book_with([(100, 1), (99, 2), (98, 3)], [(101, 1), (102, 2)])
    b = L2Book("x", "BTC-USDT", SCALE)
    for price, size in [(98, 3), (100, 7), (99, 2), (97, 1)]:
        b.update_bid(price, size)
    b.update_bid(97, 0)
    b.update_bid(100, 1)
    b.update_ask(102, 2)
    b.update_ask(101, 1)
    b.set_meta(sequence=99, ts_recv_ns=5)
    assert a == b
    assert list(a.bids()) == list(b.bids())
    assert list(a.asks()) == list(b.asks())
    b.update_ask(102, 3)
    assert a != b
    assert a != book_with([(100, 1), (99, 2), (98, 3)], [(101, 1), (102, 2)], venue="y")
    assert a != "not a book"
    with pytest.raises(TypeError, match="unhashable"):
        hash(a)


# -- ConsolidatedBook: exclusions --------------------------------------------------------------


def consolidated(max_book_age_ms: int | None = None) -> ConsolidatedBook:
    book = ConsolidatedBook("BTC-USDT", SCALE, max_book_age_ms=max_book_age_ms)
    for venue, bid, ask in [("alpha", 100, 102), ("beta", 101, 103), ("gamma", 99, 104)]:
        l2 = book_with([(bid, 1)], [(ask, 1)], venue=venue)
        l2.set_meta(ts_recv_ns=1_000 * MS)
        book.add_venue(l2, 0)
    return book


def test_all_venues_included_when_fit() -> None:
    view = consolidated(max_book_age_ms=500).view(now_ns=1_000 * MS)
    assert list(view.included) == ["alpha", "beta", "gamma"]
    assert view.excluded == []
    assert (view.best_bid, view.best_ask) == (101, 102)
    assert view.mid2 == 203
    assert view.touch(Side.BUY) == 102
    assert view.touch(Side.SELL) == 101


def test_stale_venue_is_excluded_with_its_age() -> None:
    book = consolidated(max_book_age_ms=500)
    book.venues["beta"].book.set_meta(ts_recv_ns=1_300 * MS)
    # alpha and gamma were last updated at 1000 ms, beta at 1300 ms.
    view = book.view(now_ns=1_500 * MS)  # age exactly 500 ms: not yet stale
    assert view.excluded == []
    view = book.view(now_ns=1_501 * MS)
    assert view.excluded == [
        Exclusion("alpha", "stale", "last update 501 ms ago > 500 ms"),
        Exclusion("gamma", "stale", "last update 501 ms ago > 500 ms"),
    ]
    assert list(view.included) == ["beta"]
    assert (view.best_bid, view.best_ask) == (101, 103)  # from beta alone


@pytest.mark.parametrize(
    "age_ns", [0, 500 * MS - 1, 500 * MS, 501 * MS - 1, 501 * MS, 501 * MS + 1, -5 * MS]
)
def test_the_view_and_exclusion_agree_at_the_staleness_edge(age_ns: int) -> None:
    """The view decides the usual case inline; at every age around the limit it must say
    what :meth:`exclusion` says (500 ms: fresh until the age reaches 501 whole ms)."""
    book = consolidated(max_book_age_ms=500)
    now = 1_000 * MS + age_ns
    view = book.view(now_ns=now)
    expected = [why for name in book.venues if (why := book.exclusion(name, now)) is not None]
    assert view.excluded == expected
    assert set(view.included) == set(book.venues) - {why.venue for why in expected}
    assert bool(view.excluded) == (age_ns >= 501 * MS)


def test_staleness_is_skipped_without_a_clock_or_a_limit() -> None:
    assert consolidated(max_book_age_ms=500).view().excluded == []  # now_ns=None
    assert consolidated(max_book_age_ms=None).view(now_ns=10**18).excluded == []


def test_a_book_never_updated_is_stale() -> None:
    book = ConsolidatedBook("BTC-USDT", SCALE, max_book_age_ms=2_000)
    book.add_venue(book_with([(100, 1)], [(101, 1)]), 0)  # ts_recv_ns = 0
    [why] = book.view(now_ns=10_000 * MS).excluded
    assert (why.venue, why.reason) == ("x", "stale")


def test_crossed_and_locked_venues_are_excluded() -> None:
    book = consolidated()
    book.venues["alpha"].book.update_bid(105, 1)  # alpha: bid 105 over ask 102
    book.venues["gamma"].book.update_ask(99, 1)  # gamma: locked at 99
    view = book.view()
    assert view.excluded == [
        Exclusion("alpha", "crossed", "best bid 1.05 >= best ask 1.02"),
        Exclusion("gamma", "crossed", "best bid 0.99 >= best ask 0.99"),
    ]
    assert list(view.included) == ["beta"]
    assert (view.best_bid, view.best_ask) == (101, 103)


def test_crossed_detail_prints_plain_prices() -> None:
    scale = Scale(8, 8)
    book = ConsolidatedBook("BTC-USDT", scale)
    l2 = L2Book("x", "BTC-USDT", scale)
    l2.apply_snapshot([(5, 1)], [(5, 1)])  # 0.00000005: str(Decimal) would print 5E-8
    book.add_venue(l2, 0)
    [why] = book.view().excluded
    assert why.detail == "best bid 0.00000005 >= best ask 0.00000005"


def test_out_of_sync_venue_is_excluded_with_the_feed_detail() -> None:
    book = consolidated()
    book.set_in_sync("beta", False, "sequence gap: expected 12, got 15")
    book.set_in_sync("gamma", False)
    view = book.view()
    assert view.excluded == [
        Exclusion("beta", "out_of_sync", "sequence gap: expected 12, got 15"),
        Exclusion("gamma", "out_of_sync", "feed not in sync"),
    ]
    assert list(view.included) == ["alpha"]
    book.set_in_sync("beta", True)
    assert list(book.view().included) == ["alpha", "beta"]


def test_a_venue_added_out_of_sync_is_excluded_until_synced() -> None:
    book = ConsolidatedBook("BTC-USDT", SCALE)
    book.add_venue(book_with([(100, 1)], [(101, 1)]), 0, in_sync=False)
    assert [e.reason for e in book.view().excluded] == ["out_of_sync"]
    book.set_in_sync("x", True)
    assert book.view().excluded == []


def test_disabled_venue_is_excluded_first() -> None:
    book = consolidated(max_book_age_ms=1)
    book.set_in_sync("alpha", False, "gap")
    book.set_enabled("alpha", False)
    view = book.view(now_ns=1_000 * MS)
    assert view.excluded == [Exclusion("alpha", "disabled", "disabled by operator")]
    book.set_enabled("alpha", True)
    assert book.view(now_ns=1_000 * MS).excluded == [Exclusion("alpha", "out_of_sync", "gap")]


def test_no_venue_left_gives_an_empty_view() -> None:
    book = consolidated()
    for name in list(book.venues):
        book.set_enabled(name, False)
    view = book.view()
    assert view.included == {}
    assert (view.best_bid, view.best_ask, view.mid2) == (None, None, None)
    assert len(view.ladder(Side.BUY).build_all()) == 0


def test_add_venue_checks_symbol_scale_and_duplicates() -> None:
    book = consolidated()
    with pytest.raises(OtcError, match="book of ETH-USDT added to consolidated BTC-USDT"):
        book.add_venue(L2Book("delta", "ETH-USDT", SCALE), 0)
    with pytest.raises(OtcError, match="delta book scale"):
        book.add_venue(L2Book("delta", "BTC-USDT", Scale(2, 4)), 0)
    with pytest.raises(OtcError, match="venue alpha added twice"):
        book.add_venue(L2Book("alpha", "BTC-USDT", SCALE), 0)


# -- ConsolidatedBook: ladder caching ------------------------------------------------------------


def test_ladder_is_reused_while_nothing_changed() -> None:
    book = consolidated()
    ladder = book.view().ladder(Side.BUY)
    assert book.view().ladder(Side.BUY) is ladder
    assert book.view().ladder(Side.SELL) is not ladder
    assert book.view().ladder(Side.SELL) is book.view().ladder(Side.SELL)


def test_an_update_on_a_side_gives_that_side_a_new_ladder_only() -> None:
    book = consolidated()
    buy = book.view().ladder(Side.BUY)
    sell = book.view().ladder(Side.SELL)
    book.venues["beta"].book.update_ask(103, 9)  # a size change on the ask side
    new_buy = book.view().ladder(Side.BUY)
    assert new_buy is not buy
    assert book.view().ladder(Side.SELL) is sell  # the bid side did not change
    assert new_buy.build_all().sizes == [1, 9, 1]
    book.venues["gamma"].book.update_bid(98, 1)
    assert book.view().ladder(Side.BUY) is new_buy
    assert book.view().ladder(Side.SELL) is not sell


def test_a_change_of_included_venues_or_fees_gives_a_new_ladder() -> None:
    book = consolidated()
    ladder = book.view().ladder(Side.BUY)
    book.set_enabled("gamma", False)
    smaller = book.view().ladder(Side.BUY)
    assert smaller is not ladder
    assert smaller.build_all().venues == ["alpha", "beta"]
    book.venues["alpha"].fee = 1_000_000  # 100 bps: alpha 1.02 x 1.01 = 1.0302 > beta 1.03
    dearer = book.view().ladder(Side.BUY)
    assert dearer is not smaller
    assert dearer.build_all().venues == ["beta", "alpha"]
