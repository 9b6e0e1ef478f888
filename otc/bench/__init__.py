"""Benchmarks behind ``otc bench``: ours next to a baseline, in one process, ratios printed.

Each module is one benchmark with a ``run()`` that prints a report and returns its figures as
JSON-ready builtins. :mod:`otc.bench.book`: book updates, walks and memory; :mod:`otc.bench.feeds`:
venue adapters' decode + apply on recorded traffic next to json and cryptofeed.
"""
