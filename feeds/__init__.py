"""Venue feeds: adapters that turn exchange market data into book events for ``otc``."""
