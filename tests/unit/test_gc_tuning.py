"""otc.app.tune_gc: what `otc serve` does to the process's garbage collector once it is up."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from otc.app import GC_MIDDLE_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.unfreeze()  # whatever another test left frozen
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_the_start_up_heap_is_frozen_and_the_middle_generation_collected_less_often() -> None:
    gc.set_threshold(700, 10, 10)  # CPython's defaults, whatever ran before
    survivor = [object()]  # tracked, alive: frozen with the rest
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (700, GC_MIDDLE_THRESHOLD, 10)
    assert GC_MIDDLE_THRESHOLD > 10
    assert survivor not in gc.get_objects()  # out of every generation: frozen


@pytest.mark.usefixtures("restored_gc")
def test_the_young_and_old_thresholds_are_kept() -> None:
    gc.set_threshold(1234, 10, 7)
    tune_gc()
    assert gc.get_threshold() == (1234, GC_MIDDLE_THRESHOLD, 7)
