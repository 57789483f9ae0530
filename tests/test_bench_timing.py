"""The benchmark's timing loop: short rows get more rounds, within bounds."""

import time

import pytest
import torch

from gatedrnn import bench


class SleepRow:
    """A stand-in for bench.Row whose step takes about a millisecond on either side."""
    ref, ours = "torch", "gatedrnn"

    def step(self, module):
        time.sleep(0.001)


def test_short_rows_get_enough_rounds_for_min_time():
    _, rounds = bench.time_row(SleepRow(), torch.device("cpu"), 3, 1, min_time=0.03)
    # ceil(0.03 s / the slowest warm-up step, a bit over 1 ms): 30 or a few fewer.
    assert 10 <= rounds <= 30


def test_repeats_is_a_floor_and_min_time_zero_keeps_it():
    medians, rounds = bench.time_row(SleepRow(), torch.device("cpu"), 4, 1, min_time=0.0)
    assert rounds == 4
    assert set(medians) == {"torch", "gatedrnn"}
    assert all(0.001 <= m < 0.05 for m in medians.values())


def test_rounds_are_capped(monkeypatch):
    monkeypatch.setattr(bench, "MAX_REPEATS", 6)
    _, rounds = bench.time_row(SleepRow(), torch.device("cpu"), 2, 1, min_time=100.0)
    assert rounds == 6


class ThreeSleepRow(SleepRow):
    def peer(self):
        time.sleep(0.001)


def test_a_peer_is_timed_in_the_same_rounds():
    medians, rounds = bench.time_row(ThreeSleepRow(), torch.device("cpu"), 3, 1, min_time=0.0)
    assert rounds == 3
    assert set(medians) == {"torch", "gatedrnn", "onnxruntime"}


def test_onnxruntime_peer_agrees_with_torch_nn():
    import onnxruntime  # noqa: F401  (a test dependency: pyproject.toml)
    row = bench.Row("gru", "tiny", "inference", torch.float32, torch.device("cpu"))
    row.peer = bench.OnnxRuntimePeer.for_row(row, torch.device("cpu"))
    assert row.peer is not None
    row.check()  # raises if onnxruntime's output is not torch.nn's
    training = bench.Row("gru", "tiny", "training", torch.float32, torch.device("cpu"))
    assert bench.OnnxRuntimePeer.for_row(training, torch.device("cpu")) is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_rows_check(dtype):
    bench.Row("lstm", "tiny", "training", dtype, torch.device("cpu")).check()
