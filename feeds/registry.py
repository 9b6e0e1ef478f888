"""Venue name -> adapter class. Modules are imported on first use, so a CLI run that needs one
venue does not pay for the others."""

from __future__ import annotations

import importlib

from feeds.base import VenueBookFeed

__all__ = ["VENUES", "adapter_class"]

#: Venue name -> "module:Class" of its adapter.
VENUES: dict[str, str] = {
    "binance": "feeds.binance:BinanceBookFeed",
    "bitget": "feeds.bitget:BitgetBookFeed",
    "bybit": "feeds.bybit:BybitBookFeed",
    "coinbase": "feeds.coinbase:CoinbaseBookFeed",
    "coinbase_legacy": "feeds.coinbase:CoinbaseLegacyBookFeed",
    "kraken": "feeds.kraken:KrakenBookFeed",
    "okx": "feeds.okx:OkxBookFeed",
}


def adapter_class(venue: str) -> type[VenueBookFeed]:
    """The adapter class of ``venue``.

    Raises:
        KeyError: unknown venue (the message lists the known ones).
    """
    try:
        target = VENUES[venue]
    except KeyError:
        raise KeyError(f"unknown venue {venue!r}; known: {', '.join(sorted(VENUES))}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, VenueBookFeed)):
        raise TypeError(f"{target} is not a VenueBookFeed")
    return cls
