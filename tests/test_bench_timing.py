"""The benchmark: its timing loop (short rows get more rounds, within bounds), its peers,
its configs and its report."""

import time

import pytest
import torch

from gatedrnn import bench


class SleepRow:
    """A stand-in for bench.Row whose step takes about a millisecond on either side."""
    ref, ours = "torch", "gatedrnn"

    def step(self, module):
        time.sleep(0.001)


def test_short_rows_get_enough_rounds_for_min_time(monkeypatch):
    # Every step timed at 1.5 ms (a real sleep's time moves with the scheduler: one
    # warm-up step of over 3 ms failed the former bounds of this test once).
    monkeypatch.setattr(bench, "_timed", lambda fn, device: 0.0015)
    _, rounds = bench.time_row(SleepRow(), torch.device("cpu"), 3, 1, min_time=0.03)
    assert rounds == 20  # ceil(0.03 s / the slowest warm-up step)


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


class ThreadCountRow(SleepRow):
    """Records torch's thread count at each step of each side."""
    def __init__(self):
        self.seen = {"torch": set(), "gatedrnn": set()}

    def step(self, module):
        self.seen[module].add(torch.get_num_threads())


def test_one_and_all_threads_are_timed_in_the_same_rounds():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        row = ThreadCountRow()
        medians, rounds = bench.time_row(row, torch.device("cpu"), 3, 1, min_time=0.0,
                                         one_thread=True)
        assert rounds == 3
        assert set(medians) == {"torch", "gatedrnn", "one_thread", "all_threads"}
        # ours ran on 2 threads and on 1 ("one_thread"); torch.nn only on 2
        assert row.seen == {"torch": {2}, "gatedrnn": {1, 2}}
        assert torch.get_num_threads() == 2  # set back after every one-thread step
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_thread_count_step_is_timed_between_untimed_steps_after_each_switch(threads):
    """The first call after a thread-count switch pays for waking or parking OpenMP's
    worker: neither the timed call nor the next contender's may be that call."""
    class Calls(SleepRow):
        log = []

        def step(self, module):
            self.log.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        contender = bench._OnThreads(Calls(), threads)
        contender.before()
        timed_from = len(Calls.log)
        contender()
        timed_to = len(Calls.log)
        contender.after()
        assert Calls.log[:timed_from] == [threads] and Calls.log[timed_from:timed_to] == [threads]
        assert Calls.log[timed_to:] == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_one_thread_rows_run_from_the_command_line(tmp_path):
    """`python -m gatedrnn.bench --one-thread ...`: one_thread_ms and all_threads_ms per row,
    and their table."""
    import json

    bench.main(["--configs", "tiny", "--cells", "rnn", "--modes", "inference", "--repeats",
                "1", "--warmup", "1", "--min-time", "0", "--no-memory", "--no-onnxruntime",
                "--one-thread", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    [row] = result["rows"]
    assert row["one_thread_ms"] > 0 and row["all_threads_ms"] > 0
    assert result["threads"] == torch.get_num_threads()
    report = (tmp_path / "bench.md").read_text()
    table = report.split("(`--one-thread`)")[1]
    assert f"| {result['threads']} threads ms | one thread ms | ratio |" in table
    assert "| rnn | tiny (200, 1, 64, 64) | inference |" in table


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


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_layer_norm_rows_check_bf16_against_the_loop_in_float32(mode):
    """In bfloat16 the reference loop itself parts from the exact result (it rounds every
    step's LayerNorms): ours is checked against that loop run in float32 on the same
    values, and a wrong reference step is still caught."""
    row = bench.LayerNormRow("ln-lstm", "small", mode, torch.bfloat16, torch.device("cpu"))
    row.check()
    step = row.step_fn
    row.step_fn = lambda *args: tuple(0.9 * t for t in step(*args))
    with pytest.raises(RuntimeError, match="differs"):
        row.check()


# ---- configs and the report ----------------------------------------------------------


def test_gpu_configs_are_default_on_cuda_only():
    cpu, cuda = bench.default_configs("cpu"), bench.default_configs("cuda")
    assert not set(bench.GPU_CONFIGS) & set(cpu)
    assert cuda == cpu + list(bench.GPU_CONFIGS)
    shapes = {bench.CONFIGS[c][:4] for c in bench.GPU_CONFIGS}
    assert shapes == {(100, N, H, H) for N in (1, 4, 8) for H in (256, 512, 1024)}


def _report(rows):
    result = {"gatedrnn": "0", "torch": "0", "machine": "m", "dtype": "float32", "repeats": 1,
              "min_time": 0, "peak_gflops": 1.0, "peak_source": "s", "rows": rows}
    return [line for line in bench.markdown(result).splitlines() if line.startswith("|")]


def _row(**extra):
    return dict(cell="lstm", config="n1-h256", mode="inference", torch_ms=2.0, gatedrnn_ms=1.0,
                speedup=2.0, gatedrnn_gflops=1.0, peak_fraction=0.5, torch_peak_mib=None,
                gatedrnn_peak_mib=None, **extra)


@pytest.mark.parametrize("paths", [None, {"gatedrnn": "persistent",
                                          "torch.nn": "cuDNN standard"}])
def test_report_has_a_paths_column_exactly_on_cuda_rows(paths):
    lines = _report([_row(paths=paths), _row(paths=paths)])
    columns = {line.count("|") for line in lines}
    assert len(columns) == 1, lines  # header, separator and rows agree
    assert ("paths (gatedrnn / torch.nn)" in lines[0]) == (paths is not None)
    if paths is not None:
        assert lines[2].endswith(" persistent / cuDNN standard |")


# ---- cell rows -------------------------------------------------------------------------


@pytest.mark.parametrize("cell", list(bench.CELLS))
def test_cell_rows_check(cell):
    """The cell rows (a decoder of 2 stacked cells called once per step): ours agree with
    torch.nn's cells, output and input gradient, before anything is timed."""
    for mode in bench.MODES:
        row = bench.make_row(cell, "cells-n1-h512", mode, torch.float32, torch.device("cpu"))
        assert isinstance(row, bench.CellRow) and row.calls == bench.CELL_STEPS
        assert [type(m) for m in row.ours] == [bench.CELL_CLASSES[cell][1]] * 2
        row.check()  # raises if they differ
        with torch.no_grad():
            row.probe(row.ours)  # the profiler's one step (cuda_paths)


def test_cell_rows_run_from_the_command_line(tmp_path):
    """`python -m gatedrnn.bench --configs cells-n1-h512 --cells lstm` (one round here)."""
    import json

    bench.main(["--configs", "cells-n1-h512", "--cells", "lstm", "--repeats", "1", "--warmup",
                "1", "--min-time", "0", "--no-memory", "--no-onnxruntime", "--out",
                str(tmp_path)])
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["cell"], r["config"], r["mode"]) for r in rows] == [
        ("lstm", "cells-n1-h512", "inference"), ("lstm", "cells-n1-h512", "training")]
    assert "cells-n64-h512" in bench.default_configs("cpu")


def test_a_layer_norm_row_whose_compile_fails_is_timed_without_it(tmp_path, monkeypatch):
    """torch.compile can fail on the reference step (inductor's C++ for LayerNormLSTM large
    training in bfloat16, torch 2.13): the row is timed against the loop alone and the
    report says why its compiled column is empty."""
    import json

    def fails(self):
        raise RuntimeError("C++ compile error\nmore")

    monkeypatch.setattr(bench.CompiledLoop, "__call__", fails)
    bench.main(["--configs", "small", "--cells", "ln-gru", "--modes", "inference", "--repeats",
                "1", "--warmup", "1", "--min-time", "0", "--no-memory", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "bench.json").read_text())
    (row,) = result["rows"]
    assert row["compiled_ms"] is None and row["speedup_vs_compiled"] is None
    assert row["gatedrnn_ms"] > 0 and row["torch_ms"] > 0
    assert result["compile_failures"] == [
        "ln-gru small inference: RuntimeError: C++ compile error"]
    report = (tmp_path / "bench.md").read_text()
    assert "| n/a |" in report and "torch.compile failed" in report
