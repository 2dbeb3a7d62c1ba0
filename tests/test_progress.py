"""The sweep's progress line: counts per state and the ETA from measured epochs (pure functions, no Ray)."""

import pytest

from sweep.progress import format_duration, summarize


def test_counts_every_cell_once_and_unnamed_cells_are_pending():
    total = {"a": 4, "b": 4, "c": 4, "d": 4, "e": 4}
    p = summarize(total, {}, {"a": "finished", "b": "running", "c": "failed", "zz": "running"}, [], slots=2)
    assert (p.finished, p.running, p.failed, p.pending) == (1, 1, 1, 2)  # 'zz' is not one of the sweep's cells
    assert p.finished + p.running + p.failed + p.pending == len(total)


def test_eta_is_epochs_left_times_mean_epoch_over_the_slots_in_use():
    total = {"a": 4, "b": 4, "c": 6}
    done = {"a": 4, "b": 1}
    states = {"a": "finished", "b": "running"}
    p = summarize(total, done, states, [8.0, 12.0, 10.0], slots=2)
    assert p.epochs_left == 3 + 6 and p.measured == 3
    assert p.eta_s == pytest.approx(9 * 10.0 / 2)
    # more slots than open cells: only the open cells run at once
    assert summarize(total, done, states, [10.0], slots=8).eta_s == pytest.approx(9 * 10.0 / 2)
    # failed and finished cells have no epochs left, whatever they did
    p = summarize(total, {"a": 1}, {"a": "failed", "b": "finished"}, [10.0], slots=1)
    assert p.epochs_left == 6 and p.eta_s == pytest.approx(60.0)


def test_line_before_any_epoch_and_when_done():
    total = {"a": 2, "b": 2}
    first = summarize(total, {}, {"a": "running"}, [], slots=2)
    assert first.eta_s is None
    assert first.line() == "progress: 0 finished, 1 running, 0 failed, 1 pending; ETA after the first epoch"
    done = summarize(total, {"a": 2, "b": 2}, {"a": "finished", "b": "finished"}, [3.0] * 4, slots=2)
    assert done.epochs_left == 0 and done.eta_s == 0
    mid = summarize(total, {"a": 1}, {"a": "running"}, [30.0], slots=1)
    assert mid.line() == ("progress: 0 finished, 1 running, 0 failed, 1 pending; 3 epochs left, ETA 1m30s "
                          "(from 1 epochs)")


def test_format_duration_and_refusals():
    assert [format_duration(s) for s in (0, 59.4, 61, 3600, 7384)] == ["0s", "59s", "1m01s", "1h00m", "2h03m"]
    with pytest.raises(ValueError, match="slots=0"):
        summarize({"a": 1}, {}, {}, [], slots=0)
    with pytest.raises(ValueError, match="'done'"):
        summarize({"a": 1}, {}, {"a": "done"}, [], slots=1)
