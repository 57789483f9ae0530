"""The gatedrnn benchmark suite: `python -m gatedrnn.bench` (the project's main job).

Times gatedrnn against torch.nn (oneDNN/ATen on the CPU, cuDNN on the GPU) in the same
process, interleaved, for LSTM, GRU and RNN in two modes:
  inference  forward under torch.no_grad()
  training   forward + backward of a fixed random output gradient
Each row is first checked numerically (outputs and input gradient against torch.nn), then
timed: warm-up, then `repeats` rounds (more for short rows, so that each side runs for at
least --min-time seconds) that each time torch.nn once and gatedrnn once (alternating
which goes first), and the medians are reported. GFLOP/s counts the GEMM FLOPs
(input and recurrent projections; x3 for training: forward, data gradients, weight
gradients) and is compared with this machine's peak: on the CPU, the FMA peak (a
register-only loop of fused multiply-adds of ours, with the ISA our kernels use, on every
thread at once), beside which the header gives what the libraries' GEMMs reach (torch.mm,
i.e. MKL on x86-64 wheels, and oneDNN); on the GPU a large torch.mm in the same dtype. Peak memory (CPU: resident-set growth over one step, the second
of two, in a fresh child process; CUDA: torch.cuda.max_memory_allocated) is measured after
timing. Float32 CPU inference rows also time onnxruntime (when installed) on torch.nn's
model exported to ONNX, as a third contender in the same interleaved rounds.

Besides the sequence modules, decode rows call them one step at a time, and cell rows
(`cells-*`) time a decoder of two stacked cells (torch.nn.LSTMCell / GRUCell / RNNCell
against gatedrnn's) called from Python once per step.

The layer-normalized cells (`--cells ln-lstm ln-gru`, at the small and large configs) have
no torch.nn counterpart: their rows time LayerNormLSTM / LayerNormGRU against what a user
would otherwise run, reference.py's Python loop over the steps, and against that loop with
its step compiled by torch.compile; they get a table of their own.

--one-thread (CPU) adds ours on one thread and on all of torch's threads to every row's
rounds, and a table of the ratio.

Writes a Markdown table to stdout and, under --out, bench.md, bench.json and bench.png.
"""
import argparse
import copy
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn import reference

# name: (T, N, I, H, num_layers, bidirectional, packed)
CONFIGS = {
    "large": (100, 64, 512, 512, 1, False, False),
    "small": (100, 16, 128, 128, 1, False, False),
    "tiny": (200, 1, 64, 64, 1, False, False),
    "wide": (50, 256, 256, 256, 1, False, False),
    "long": (1000, 8, 256, 256, 1, False, False),
    "large-2l-bi": (100, 64, 512, 512, 2, True, False),
    "large-packed": (100, 64, 512, 512, 1, False, True),
    # Step-by-step calls (seq2seq decoders, RL policies, streaming): T = 1 per call, the
    # state carried from call to call, 2 layers; timed per call (DECODE_CALLS calls per
    # round), LSTM and GRU.
    "decode-n1-h256": (1, 1, 256, 256, 2, False, False),
    "decode-n64-h256": (1, 64, 256, 256, 2, False, False),
    "decode-n1-h512": (1, 1, 512, 512, 2, False, False),
    "decode-n64-h512": (1, 64, 512, 512, 2, False, False),
    # A decoder of 2 stacked cells (torch.nn.LSTMCell / GRUCell / RNNCell against ours),
    # each called from Python once per step, the states carried from step to step: T = 1
    # per step, timed per step (CELL_STEPS steps per round). In training the steps are
    # one graph, differentiated once after the last (backpropagation through time, as a
    # teacher-forced decoder trains). Every cell.
    "cells-n1-h512": (1, 1, 512, 512, 2, False, False),
    "cells-n64-h512": (1, 64, 512, 512, 2, False, False),
}
# The GPU rows of small batches (where the persistent kernel runs and launch latency
# dominates): N = 1, 4, 8 with H = 256, 512, 1024, T = 100. In the default list on CUDA.
GPU_CONFIGS = {f"n{N}-h{H}": (100, N, H, H, 1, False, False)
               for N in (1, 4, 8) for H in (256, 512, 1024)}
CPU_DEFAULT_CONFIGS = list(CONFIGS)
CONFIGS.update(GPU_CONFIGS)


def default_configs(device):
    """The configs a run without --configs measures on this device."""
    gpu = torch.device(device).type == "cuda"
    return CPU_DEFAULT_CONFIGS + (list(GPU_CONFIGS) if gpu else [])
DECODE_CALLS = 20
DECODE_CELLS = ("lstm", "gru")
CELL_STEPS = 20
CELLS = {"lstm": (torch.nn.LSTM, gatedrnn.LSTM, 4), "gru": (torch.nn.GRU, gatedrnn.GRU, 3),
         "rnn": (torch.nn.RNN, gatedrnn.RNN, 1)}
CELL_CLASSES = {"lstm": (torch.nn.LSTMCell, gatedrnn.LSTMCell),
                "gru": (torch.nn.GRUCell, gatedrnn.GRUCell),
                "rnn": (torch.nn.RNNCell, gatedrnn.RNNCell)}
MODES = ("inference", "training")
# cell: (module class, reference.py's step, the plain cell it normalizes)
LAYER_NORM_CELLS = {"ln-lstm": (gatedrnn.LayerNormLSTM, reference.layer_norm_lstm_step, "lstm"),
                    "ln-gru": (gatedrnn.LayerNormGRU, reference.layer_norm_gru_step, "gru")}
LAYER_NORM_CONFIGS = ("small", "large")


def _lengths(T, N, seed=0):
    """Variable lengths for the packed rows: uniform in [T/4, T], the longest equal to T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, T // 4), T + 1, (N,), generator=g)
    lengths[0] = T
    return lengths.sort(descending=True).values


def gemm_flops(cell, T, N, I, H, layers, bidirectional, steps_total=None):
    """FLOPs of the forward GEMMs (input + recurrent projections, all layers/directions).
    steps_total: number of (step, row) pairs actually computed (packed), else T*N."""
    gates = CELLS[cell][2]
    rows = steps_total if steps_total is not None else T * N
    dirs = 2 if bidirectional else 1
    total = 0
    for layer in range(layers):
        in_size = I if layer == 0 else H * dirs
        total += dirs * 2 * rows * gates * H * (in_size + H)
    return total


def measure_gemm_peak(dtype, device, size=2048, repeats=10, library="torch.mm"):
    """GFLOP/s of a size^3 GEMM: torch.mm, or ("onednn", CPU only) oneDNN's inner product
    on mkldnn tensors (None where torch has no oneDNN)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    fn = lambda: torch.mm(a, b)  # noqa: E731
    if library == "onednn":
        if device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return None
        try:
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            fn = lambda: torch._C._nn.mkldnn_linear(am, bm)  # noqa: E731
            fn()
        except RuntimeError:
            return None
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        times.append(_timed(fn, device))
    return 2 * size ** 3 / statistics.median(times) / 1e9


def measure_fma_peak(dtype):
    """GFLOP/s of our register-only FMA loop on every torch thread at once (the CPU's
    limit for our kernels' ISA), in the dtype our CPU kernels compute a dtype in: bfloat16
    on the bfloat16 kernels where the CPU has them (their instruction's loop: AMX's
    TDPBF16PS or VDPBF16PS), else, like float16, in float32."""
    from gatedrnn import _C
    threads = torch.get_num_threads()
    if dtype == torch.bfloat16 and gatedrnn.cpu_bf16_kernel() != "none":
        return max(_C.fma_peak_gflops(threads, False, 0.2, True) for _ in range(3))
    return max(_C.fma_peak_gflops(threads, dtype == torch.float64, 0.2) for _ in range(3))


class OnnxRuntimePeer:
    """The peer CPU users deploy RNNs with: torch.nn's model exported to ONNX (ONNX's own
    LSTM / GRU / RNN nodes) and run by onnxruntime with torch's thread count. Its worker
    threads are told not to spin after a run: spinning, they took the other core from
    whichever side ran next in the interleaved timing."""

    @staticmethod
    def for_row(row, device):
        """A peer for inference rows in float32 on the CPU, padded input, whole sequences;
        None elsewhere or when onnxruntime is not installed."""
        if (device.type != "cpu" or row.training or row.calls > 1 or row.lengths is not None
                or row.x.dtype != torch.float32):
            return None
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None
        return OnnxRuntimePeer(row.ref, row.x)

    def __init__(self, module, x):
        import io
        import warnings

        import onnxruntime as ort
        model = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (x,), model, dynamo=False, input_names=["input"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.getvalue(), options,
                                            providers=["CPUExecutionProvider"])
        self.feed = {"input": x.detach().numpy()}
        self.version = ort.__version__

    def __call__(self):
        return torch.from_numpy(self.session.run(None, self.feed)[0])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device):
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cuda_paths(row):
    """Which forward path each side took on CUDA, from the names of the kernels one
    forward launched (CUDA profiler): ours "persistent" or "per-step", torch.nn's cuDNN
    "persistent" (cuDNN's persistent RNN algorithms) or "standard"."""
    from torch.profiler import ProfilerActivity, profile

    paths = {}
    for name, module in (("gatedrnn", row.ours), ("torch.nn", row.ref)):
        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            row.probe(module)
            torch.cuda.synchronize()
        kernels = [e.key for e in prof.key_averages()]
        if name == "gatedrnn":
            ours = any("persistent_forward_kernel" in k for k in kernels)
            paths[name] = "persistent" if ours else "per-step"
        else:
            theirs = any("persist" in k.lower() for k in kernels)
            paths[name] = "cuDNN persistent" if theirs else "cuDNN standard"
    return paths


class Row:
    """One (cell, config, mode): builds both modules with the same weights and inputs."""

    _check_peer = True  # check also checks the peer's result

    def __init__(self, cell, config, mode, dtype, device):
        self.cell, self.config, self.mode = cell, config, mode
        T, N, I, H, layers, bidir, packed = CONFIGS[config]
        # decode: DECODE_CALLS calls of one step each, the state carried between them
        self.calls = DECODE_CALLS if config.startswith("decode") else 1
        T = T * self.calls
        nn_cls, our_cls, _ = CELLS[cell]
        torch.manual_seed(0)
        self.ref = nn_cls(I, H, num_layers=layers, bidirectional=bidir).to(device, dtype)
        self.ours = our_cls(I, H, num_layers=layers, bidirectional=bidir).to(device, dtype)
        self.ours.load_state_dict(self.ref.state_dict())
        self.training = mode == "training"
        x = torch.randn(T, N, I, dtype=dtype, device=device)
        self.x = x.requires_grad_(self.training)
        self.lengths = _lengths(T, N) if packed else None
        self.rows = int(self.lengths.sum()) if packed else T * N
        out_features = H * (2 if bidir else 1)
        self.grad = torch.randn(self.rows if packed else T, *(() if packed else (N,)),
                                out_features, dtype=dtype, device=device)
        # per call
        self.flops = gemm_flops(cell, T, N, I, H, layers, bidir, self.rows) * (
            3 if self.training else 1) / self.calls
        self.peer = None  # a third contender (OnnxRuntimePeer), set by run()

    def _input(self):
        if self.lengths is None:
            return self.x
        return pack_padded_sequence(self.x, self.lengths)

    def _output(self, module):
        out, _ = module(self._input())
        return out.data if self.lengths is not None else out

    def probe(self, module):
        """One forward of the row's kind, for the profiler (cuda_paths)."""
        if self.calls == 1:
            self._output(module)
        else:  # a decode row: one call of one step
            module(self.x[:1])

    def _decode(self, module):
        """The calls of a decode row; returns the last call's output. In training, each
        call's output is differentiated at once (the state it hands on is detached)."""
        state, out = None, None
        for t in range(self.calls):
            with torch.set_grad_enabled(self.training):
                out, state = module(self.x[t:t + 1], state)
                if self.training:
                    out.backward(self.grad[t:t + 1])
            state = (tuple(s.detach() for s in state) if isinstance(state, tuple)
                     else state.detach())
        return out.detach()

    def step(self, module):
        if self.calls > 1:
            if self.training:
                module.zero_grad(set_to_none=True)
                self.x.grad = None
            self._decode(module)
            return
        if self.training:
            module.zero_grad(set_to_none=True)
            self.x.grad = None
            self._output(module).backward(self.grad)
        else:
            with torch.no_grad():
                self._output(module)

    def _result(self, module):
        """What check compares: module's output (and, for training, the input gradient)."""
        if self.calls > 1:
            module.zero_grad(set_to_none=True)
            self.x.grad = None
            out = self._decode(module)
            return (out, self.x.grad.clone()) if self.training else (out,)
        if self.training:
            self.step(module)
            return self._output(module).detach(), self.x.grad.clone()
        with torch.no_grad():
            return (self._output(module),)

    def _reference_result(self):
        """The result the others are checked against: torch.nn's."""
        return self._result(self.ref)

    def check(self):
        """Outputs (and, for training, input gradients) must agree before timing."""
        results = [self._reference_result(), self._result(self.ours)]
        tol = {torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 1e-2}.get(
            self.x.dtype, 2e-3)
        others = [("gatedrnn", results[1])]
        if self.peer is not None and self._check_peer:
            others.append((getattr(self.peer, "name", "onnxruntime"), (self.peer(),)))
        for name, result in others:
            for a, b in zip(results[0], result):
                err = (a - b).abs().max().item() / max(1.0, a.abs().max().item())
                if not err <= tol:
                    raise RuntimeError(f"{self.cell} {self.config} {self.mode}: {name} "
                                       f"differs from torch.nn by {err:.3g} (relative)")


class CellRow(Row):
    """A cells row: a decoder of stacked cells per side (torch.nn's, ours with the same
    weights), the Python loop over the steps and layers run as users write it."""

    def __init__(self, cell, config, mode, dtype, device):
        self.cell, self.config, self.mode = cell, config, mode
        _, N, I, H, layers, _, _ = CONFIGS[config]
        self.calls = CELL_STEPS  # timed per step
        nn_cls, our_cls = CELL_CLASSES[cell]
        torch.manual_seed(0)
        sizes = [I] + [H] * (layers - 1)
        self.ref = torch.nn.ModuleList([nn_cls(i, H) for i in sizes]).to(device, dtype)
        self.ours = torch.nn.ModuleList([our_cls(i, H) for i in sizes]).to(device, dtype)
        self.ours.load_state_dict(self.ref.state_dict())
        self.training = mode == "training"
        x = torch.randn(self.calls, N, I, dtype=dtype, device=device)
        self.x = x.requires_grad_(self.training)
        self.lengths = None
        self.rows = self.calls * N
        self.grad = torch.randn(self.calls, N, H, dtype=dtype, device=device)
        self.flops = gemm_flops(cell, self.calls, N, I, H, layers, False) * (
            3 if self.training else 1) / self.calls
        self.peer = None

    def _steps(self, module, steps):
        """The decoder over the first `steps` steps: the top cell's outputs, stacked."""
        states, outputs = [None] * len(module), []
        for t in range(steps):
            layer_input = self.x[t]
            for k, cell in enumerate(module):
                states[k] = cell(layer_input, states[k])
                layer_input = states[k][0] if isinstance(states[k], tuple) else states[k]
            outputs.append(layer_input)
        return torch.stack(outputs)

    def _decode(self, module):
        """Row's contract (step, check): every step; in training, backward through all of
        them at the end. Returns the outputs."""
        with torch.set_grad_enabled(self.training):
            out = self._steps(module, self.calls)
            if self.training:
                out.backward(self.grad)
        return out.detach()

    def probe(self, module):
        self._steps(module, 1)


class PythonLoop(torch.nn.Module):
    """A layer-normalized module's math as a user would write it without gatedrnn: a
    Python loop over the steps of reference.py's step function (or of `step`, e.g. that
    function compiled), on the module's own parameters. One direction, padded input."""

    def __init__(self, module, step):
        super().__init__()
        self.module, self.step = module, step

    def forward(self, x):
        m = self.module
        lstm = isinstance(m, gatedrnn.LayerNormLSTM)
        layer_input = x
        for w_ih, w_hh, b_ih, b_hh, _, norms in m._layer_weights():
            h = x.new_zeros(x.shape[1], m.hidden_size)
            state, outputs = ((h, h) if lstm else h), []
            for t in range(x.shape[0]):
                state = self.step(layer_input[t], *(state if lstm else (state,)), w_ih, w_hh,
                                  b_ih, b_hh, *norms)
                outputs.append(state[0] if lstm else state)
            layer_input = torch.stack(outputs)
        return layer_input, None


class CompiledLoop:
    """The third contender of a layer-normalized row: PythonLoop with its step compiled
    (torch.compile, fullgraph), as a user would speed up a hand-written cell."""

    name = "torch.compile"

    def __init__(self, row):
        self.row = row
        # Compiled code is kept per function: every row would add its own (shapes, grad
        # mode) to the step function's, up to Dynamo's recompile limit.
        torch._dynamo.reset()
        self.loop = PythonLoop(row.ours, torch.compile(row.step_fn, fullgraph=True))

    def __call__(self):
        self.row.step(self.loop)
        return self.row._output(self.loop).detach()


class LayerNormRow(Row):
    """A layer-normalized cell's row: ours against PythonLoop (in the torch column) and
    CompiledLoop (the peer), all on the same parameters."""

    def __init__(self, cell, config, mode, dtype, device):
        self.cell, self.config, self.mode = cell, config, mode
        T, N, I, H, layers, _, _ = CONFIGS[config]
        self.calls = 1
        cls, self.step_fn, plain = LAYER_NORM_CELLS[cell]
        torch.manual_seed(0)
        self.ours = cls(I, H, num_layers=layers).to(device, dtype)
        self.ref = PythonLoop(self.ours, self.step_fn)
        self.training = mode == "training"
        self.x = torch.randn(T, N, I, dtype=dtype, device=device).requires_grad_(self.training)
        self.lengths = None
        self.rows = T * N
        self.grad = torch.randn(T, N, H, dtype=dtype, device=device)
        self.flops = gemm_flops(plain, T, N, I, H, layers, False) * (3 if self.training else 1)
        self.peer = CompiledLoop(self)

    def _reduced(self):
        return self.x.dtype not in (torch.float32, torch.float64)

    @property
    def _check_peer(self):
        # In bfloat16 (float16) the loops round every step's LayerNorms, and over 100 steps
        # their output parts from the exact one by up to 1.5 (small, bfloat16); they are
        # timed as users would run them, not checked.
        return not self._reduced()

    def _reference_result(self):
        """In bfloat16 (float16): the reference loop in float32 on the same values (ours
        computes in float32 from them: within 0.002 of it at small, bfloat16)."""
        if not self._reduced():
            return super()._reference_result()
        exact = copy.copy(self)
        exact.ours = copy.deepcopy(self.ours).float()
        exact.x = self.x.detach().float().requires_grad_(self.training)
        exact.grad = self.grad.float()
        result = exact._result(PythonLoop(exact.ours, self.step_fn))
        return tuple(r.to(self.x.dtype) for r in result)


def make_row(cell, config, mode, dtype, device):
    """The Row of a config: CellRow for the cells rows, LayerNormRow for the
    layer-normalized cells."""
    if cell in LAYER_NORM_CELLS:
        return LayerNormRow(cell, config, mode, dtype, device)
    return (CellRow if config.startswith("cells") else Row)(cell, config, mode, dtype, device)


MAX_REPEATS = 1000


def _with_grad_norms(row):
    """Our training step with the gradient-norm monitor recording (gatedrnn.grad_norms)."""
    def step():
        with gatedrnn.grad_norms():
            row.step(row.ours)
    return step


class _OnThreads:
    """Our step on `threads` threads (a contender of time_row), each timed call preceded
    by an untimed one at that count and followed by an untimed one at the count before.
    The first call after a switch wakes or parks OpenMP's worker: switched around the
    timed call itself, it cost RNN tiny training calls up to 0.3 ms of their 0.4. And a
    call right after torch.nn's ran slower than one after our own (RNN tiny inference
    133-220 us against 89-153; torch.nn's per-step tensors go through the caches), so
    the one-thread and the all-threads times are both taken this way, alike, not the
    one against the gatedrnn column, whose call follows torch.nn's in two rounds of
    three."""

    def __init__(self, row, threads):
        self.row, self.threads, self.before_threads = row, threads, None

    def before(self):
        self.before_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self.row.step(self.row.ours)

    def __call__(self):
        self.row.step(self.row.ours)

    def after(self):
        torch.set_num_threads(self.before_threads)
        self.row.step(self.row.ours)


def _timed_contender(fn, device):
    """_timed, between the contender's untimed before() and after() where it has them."""
    if hasattr(fn, "before"):
        fn.before()
    try:
        return _timed(fn, device)
    finally:
        if hasattr(fn, "after"):
            fn.after()


def time_row(row, device, repeats, warmup, min_time=0.0, grad_norms=False, one_thread=False):
    """Medians of interleaved timings, and the number of rounds: at least `repeats`, and
    enough for each side to run about `min_time` seconds (a sub-millisecond row's median
    over 15 rounds moves with every scheduler hiccup), at most MAX_REPEATS. grad_norms:
    also ours with the gradient-norm monitor on ("grad_norms"); one_thread: also ours on
    one thread and on all of torch's ("one_thread", "all_threads", timed alike: _OnThreads),
    the same rounds making them comparable on a machine whose speed drifts from minute to
    minute."""
    contenders = [("torch", lambda: row.step(row.ref)), ("gatedrnn", lambda: row.step(row.ours))]
    if getattr(row, "peer", None) is not None:
        contenders.append((getattr(row.peer, "name", "onnxruntime"), row.peer))
    if grad_norms:
        contenders.append(("grad_norms", _with_grad_norms(row)))
    if one_thread:
        contenders += [("one_thread", _OnThreads(row, 1)),
                       ("all_threads", _OnThreads(row, torch.get_num_threads()))]
    slowest = 0.0
    for _ in range(warmup):
        slowest = max([slowest] + [_timed_contender(fn, device) for _, fn in contenders])
    if slowest > 0 and min_time > 0:
        repeats = max(repeats, min(MAX_REPEATS, math.ceil(min_time / slowest)))
    times = {name: [] for name, _ in contenders}
    for k in range(repeats):
        first = k % len(contenders)  # each goes first in turn
        for name, fn in contenders[first:] + contenders[:first]:
            times[name].append(_timed_contender(fn, device))
    return {name: statistics.median(ts) for name, ts in times.items()}, repeats


def peak_memory(row, which, device, dtype_name):
    """Extra memory one step of `which` ("torch" or "gatedrnn") needs beyond what exists
    before it, in MiB; None where it cannot be measured.

    CUDA: max_memory_allocated. CPU: growth of the peak resident set over one step, in a
    fresh child process (a forked one could deadlock in OpenMP), so earlier rows and the
    other implementation do not count. The child measures its second step, so one-time
    buffers (BLAS and oneDNN scratch) count for neither side. glibc is told to give
    every large buffer its own mmap, so that memory freed during the step leaves the
    resident set as it would leave a caching allocator, and before the step it returns
    the free pages of its heap (malloc_trim), so that the small blocks the first step
    freed are not reused unseen: without it, an implementation that allocates many
    small tensors (torch.nn's GRU and RNN save a few per step) looked up to 70 MiB
    lighter than it is."""
    if device.type == "cuda":
        module = row.ref if which == "torch" else row.ours
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        row.step(module)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    if not sys.platform.startswith("linux"):
        return None
    import subprocess
    cmd = [sys.executable, "-m", "gatedrnn.bench", "--memory-child",
           row.cell, row.config, row.mode, which, dtype_name]
    done = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
                               "MALLOC_MMAP_THRESHOLD_": "131072"})
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _memory_child(cell, config, mode, which, dtype_name):
    row = make_row(cell, config, mode, getattr(torch, dtype_name), torch.device("cpu"))
    module = row.ref if which == "torch" else row.ours

    def status_kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise RuntimeError(field)

    row.step(module)
    module.zero_grad(set_to_none=True)
    row.x.grad = None
    # Small blocks freed by the first step stay in glibc's heap, resident, and the
    # second step would reuse them unseen; hand their pages back so that every byte
    # the step touches counts, whatever the size of its allocations. The same holds
    # for the blocks gatedrnn's CPU block cache keeps.
    gatedrnn.empty_cpu_cache()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    # Reset the peak RSS (VmHWM) to the current RSS, so start-up peaks do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status_kib("VmRSS")
    row.step(module)
    print(max(0, status_kib("VmHWM") - before) / 1024)


def _progress(done, total, label):
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def cpu_identity():
    """(vendor, model name, family/model) of this CPU from /proc/cpuinfo, where there is one."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(
        fields.get("vendor_id", ""), fields.get("vendor_id") or platform.machine())
    name = fields.get("model name") or platform.processor() or platform.machine()
    family = (f"family {fields['cpu family']} model {fields['model']}"
              if "cpu family" in fields and "model" in fields else "")
    return vendor, name, family


def machine_description(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    vendor, name, family = cpu_identity()
    which = f"{name} ({vendor}{', ' + family if family else ''})"
    return (f"{which}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads, "
            f"gatedrnn CPU kernels: {gatedrnn.cpu_capability()}, bfloat16 GEMMs: "
            f"{gatedrnn.cpu_bf16_kernel()}")


def markdown(result):
    libraries = ", ".join(
        f"{name} {value:.1f}" for name, value in result.get("library_gemm_gflops", {}).items()
        if value is not None)
    # The CPU's peak is our FMA loop; a GPU's is its library GEMM (result["device"]).
    kind = "FMA" if result.get("device", "cpu").startswith("cpu") else "GEMM"
    dtype = result["dtype"] + (" with TF32" if result.get("tf32") else "")
    peak = (f"{kind} peak {result['peak_gflops']:.1f} GFLOP/s ({result['peak_source']})"
            + (f"; library GEMMs 2048^3: {libraries} GFLOP/s" if libraries else ""))
    lines = [
        f"gatedrnn {result['gatedrnn']} vs torch {result['torch']} on {result['machine']}, "
        f"{dtype}, median of at least {result['repeats']} interleaved runs "
        f"(more for short rows: about {result['min_time']:g} s per side); {peak}.",
        "",
        "| cell | config (T, N, I, H) | mode | torch.nn ms | gatedrnn ms | speedup | "
        "gatedrnn GFLOP/s | % of peak | torch.nn peak MiB | gatedrnn peak MiB | "
        "onnxruntime ms | vs onnxruntime |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    with_paths = any(r.get("paths") for r in result["rows"])
    if with_paths:  # CUDA: which forward path each side took
        lines[-2] += " paths (gatedrnn / torch.nn) |"
        lines[-1] += "---|"
    fmt_mem = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    fmt_optional = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731

    def fmt_paths(r):
        if not with_paths:
            return ""
        paths = r.get("paths")
        return f" {paths['gatedrnn']} / {paths['torch.nn']} |" if paths else " |"

    fmt_peer = lambda r: ("| | |" if r.get("onnxruntime_ms") is None else  # noqa: E731
                          f"| {r['onnxruntime_ms']:.2f} | **{r['speedup_vs_onnxruntime']:.2f}x** |")
    plain = [r for r in result["rows"] if r["cell"] not in LAYER_NORM_CELLS]
    for r in plain:
        T, N, I, H = CONFIGS[r["config"]][:4]
        lines.append(
            f"| {r['cell']} | {r['config']} ({T}, {N}, {I}, {H}) | {r['mode']} | "
            f"{r['torch_ms']:.2f} | {r['gatedrnn_ms']:.2f} | **{r['speedup']:.2f}x** | "
            f"{r['gatedrnn_gflops']:.1f} | {100 * r['peak_fraction']:.0f}% | "
            f"{fmt_mem(r['torch_peak_mib'])} | {fmt_mem(r['gatedrnn_peak_mib'])} {fmt_peer(r)}"
            f"{fmt_paths(r)}")
    normed = [r for r in result["rows"] if r["cell"] in LAYER_NORM_CELLS]
    if normed:
        lines += ["", "Layer-normalized cells against reference.py's Python loop over the steps "
                  "(what a user would run without gatedrnn) and that loop with its step "
                  "compiled (torch.compile, fullgraph):", "",
                  "| cell | config (T, N, I, H) | mode | Python loop ms | torch.compile ms | "
                  "gatedrnn ms | vs loop | vs compiled | gatedrnn GFLOP/s | % of peak |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in normed:
            T, N, I, H = CONFIGS[r["config"]][:4]
            lines.append(
                f"| {r['cell']} | {r['config']} ({T}, {N}, {I}, {H}) | {r['mode']} | "
                f"{r['torch_ms']:.2f} | {fmt_optional(r['compiled_ms'], '{:.2f}')} | "
                f"{r['gatedrnn_ms']:.2f} | **{r['speedup']:.2f}x** | "
                f"{fmt_optional(r['speedup_vs_compiled'], '**{:.2f}x**')} | "
                f"{r['gatedrnn_gflops']:.1f} | {100 * r['peak_fraction']:.0f}% |")
    monitored = [r for r in result["rows"] if r.get("grad_norms_ms") is not None]
    if monitored:
        lines += ["", "The gradient-norm monitor's cost (`--grad-norms`): our training step "
                  "with `gatedrnn.grad_norms()` recording, timed in the same rounds:", "",
                  "| cell | config (T, N, I, H) | gatedrnn ms | with grad_norms ms | extra |",
                  "|---|---|---:|---:|---:|"]
        for r in monitored:
            T, N, I, H = CONFIGS[r["config"]][:4]
            lines.append(f"| {r['cell']} | {r['config']} ({T}, {N}, {I}, {H}) | "
                         f"{r['gatedrnn_ms']:.2f} | {r['grad_norms_ms']:.2f} | "
                         f"**{100 * (r['grad_norms_ms'] / r['gatedrnn_ms'] - 1):+.1f}%** |")
    alone = [r for r in result["rows"] if r.get("one_thread_ms") is not None]
    if alone:
        lines += ["", f"Ours on {result['threads']} threads and on one (`--one-thread`), timed "
                  "alike in the same rounds, each call after an untimed one at its thread "
                  "count (ratio: the threads' time over one thread's):", "",
                  f"| cell | config (T, N, I, H) | mode | {result['threads']} threads ms | "
                  "one thread ms | ratio |", "|---|---|---|---:|---:|---:|"]
        for r in alone:
            T, N, I, H = CONFIGS[r["config"]][:4]
            lines.append(f"| {r['cell']} | {r['config']} ({T}, {N}, {I}, {H}) | {r['mode']} | "
                         f"{r['all_threads_ms']:.2f} | {r['one_thread_ms']:.2f} | "
                         f"**{r['all_threads_ms'] / r['one_thread_ms']:.2f}** |")
    for failure in result.get("compile_failures", []):
        lines += ["", f"torch.compile failed (the row timed without it): {failure}"]
    if not plain:  # only layer-normalized rows: no table against torch.nn
        del lines[2:4]
    return "\n".join(lines)


def plot(result, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    labels = [f"{r['cell']} {r['config']}\n{r['mode']}" for r in rows]
    speedups = [r["speedup"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4.5))
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedups]
    ax.bar(range(len(rows)), speedups, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    ax.set_ylabel("speedup over torch.nn (x)")
    ax.set_title(f"gatedrnn vs torch.nn, {result['dtype']}, {result['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run(args):
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        # Strict-fp32 rows: no TF32 in torch.nn's cuDNN or in our GEMMs.
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
    libraries = {"torch.mm": measure_gemm_peak(dtype, device)}
    peak = measure_fma_peak(dtype) if device.type == "cpu" else None
    if peak is not None:
        libraries["oneDNN"] = measure_gemm_peak(dtype, device, library="onednn")
        source = f"our register-only FMA loop, {torch.get_num_threads()} threads"
        if dtype == torch.bfloat16 and gatedrnn.cpu_bf16_kernel() != "none":
            source = (f"our register-only {gatedrnn.cpu_bf16_kernel()} loop, "
                      f"{torch.get_num_threads()} threads")
        elif dtype in (torch.bfloat16, torch.float16):
            source += ", float32 (our CPU kernels compute this dtype in float32)"
    else:
        peak, source = libraries["torch.mm"], "torch.mm 2048^3"
    result = {"gatedrnn": gatedrnn.__version__, "torch": torch.__version__,
              "machine": machine_description(device), "device": str(device),
              "cpu": dict(zip(("vendor", "model", "family"), cpu_identity())),
              "dtype": args.dtype, "tf32": args.tf32, "repeats": args.repeats,
              "min_time": args.min_time, "peak_gflops": peak, "peak_source": source,
              "library_gemm_gflops": libraries, "command": " ".join(sys.argv),
              "threads": torch.get_num_threads(), "rows": []}
    plan = [(c, s, m) for c in args.cells for s in args.configs for m in args.modes
            if (c in DECODE_CELLS or not s.startswith("decode"))
            and (c not in LAYER_NORM_CELLS or (s in LAYER_NORM_CONFIGS and device.type == "cpu"))]
    for k, (cell, config, mode) in enumerate(plan):
        _progress(k, len(plan), f"{cell} {config} {mode}")
        row = make_row(cell, config, mode, dtype, device)
        if args.onnxruntime and cell not in LAYER_NORM_CELLS:
            row.peer = OnnxRuntimePeer.for_row(row, device)
            if row.peer is not None:
                result["onnxruntime"] = row.peer.version
        if isinstance(row.peer, CompiledLoop):
            try:
                row.peer()  # compiles the step: torch.compile can fail on it
            except Exception as e:  # noqa: BLE001 - any failure of the compiler
                # Seen: inductor's C++ for LayerNormLSTM large training in bfloat16 (torch
                # 2.13, "conflicting declaration"). The row is timed without it.
                failure = f"{cell} {config} {mode}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                result.setdefault("compile_failures", []).append(failure)
                sys.stderr.write(f"\ntorch.compile failed, row timed without it: {failure}\n")
                row.peer = None
        row.check()
        monitored = args.grad_norms and row.training and row.calls == 1
        t, rounds = time_row(row, device, args.repeats, args.warmup, args.min_time, monitored,
                             args.one_thread and device.type == "cpu")
        t = {name: value / row.calls for name, value in t.items()}  # per call
        paths = cuda_paths(row) if device.type == "cuda" else None
        mem = {} if args.no_memory or cell in LAYER_NORM_CELLS else {
            name: peak_memory(row, name, device, args.dtype) for name in ("torch", "gatedrnn")}
        result["rows"].append({
            "cell": cell, "config": config, "mode": mode, "shape": CONFIGS[config],
            "repeats": rounds,
            "torch_ms": 1e3 * t["torch"], "gatedrnn_ms": 1e3 * t["gatedrnn"],
            "speedup": t["torch"] / t["gatedrnn"],
            "gatedrnn_gflops": row.flops / t["gatedrnn"] / 1e9,
            "torch_gflops": row.flops / t["torch"] / 1e9,
            "peak_fraction": row.flops / t["gatedrnn"] / 1e9 / peak,
            "torch_peak_mib": mem.get("torch"), "gatedrnn_peak_mib": mem.get("gatedrnn"),
            "paths": paths,
            "onnxruntime_ms": 1e3 * t["onnxruntime"] if "onnxruntime" in t else None,
            "speedup_vs_onnxruntime": (t["onnxruntime"] / t["gatedrnn"]
                                       if "onnxruntime" in t else None),
            "compiled_ms": 1e3 * t["torch.compile"] if "torch.compile" in t else None,
            "speedup_vs_compiled": (t["torch.compile"] / t["gatedrnn"]
                                    if "torch.compile" in t else None),
            "grad_norms_ms": 1e3 * t["grad_norms"] if "grad_norms" in t else None,
            "one_thread_ms": 1e3 * t["one_thread"] if "one_thread" in t else None,
            "all_threads_ms": 1e3 * t["all_threads"] if "all_threads" in t else None})
    _progress(len(plan), len(plan), "done")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description="Benchmark gatedrnn against torch.nn.")
    p.add_argument("--cells", nargs="+", default=list(CELLS) + list(LAYER_NORM_CELLS),
                   choices=list(CELLS) + list(LAYER_NORM_CELLS))
    p.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS),
                   help="default: " + " ".join(CPU_DEFAULT_CONFIGS) + "; on CUDA also "
                        + " ".join(GPU_CONFIGS))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (default: off)")
    p.add_argument("--repeats", type=int, default=15,
                   help="timing rounds per row, at least (default 15)")
    p.add_argument("--min-time", type=float, default=0.5,
                   help="short rows get more rounds, until each side has run about this "
                        "many seconds (default 0.5; 0 turns it off)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--grad-norms", action="store_true",
                   help="training rows: also time ours with the gradient-norm monitor on")
    p.add_argument("--one-thread", action="store_true",
                   help="CPU: also time ours on one thread and on all threads, alike, in "
                        "the same rounds (the table's ratio: all threads / one thread)")
    p.add_argument("--no-onnxruntime", dest="onnxruntime", action="store_false",
                   help="no onnxruntime column (default: on float32 CPU inference rows, "
                        "when onnxruntime is installed)")
    p.add_argument("--out", default="benchmarks/out", help="folder for bench.md/json/png")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: small and tiny configs, 3 repeats, 1 warm-up")
    p.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    if args.configs is None:
        args.configs = default_configs(args.device)
    if args.quick:
        args.configs, args.repeats, args.warmup, args.min_time = ["small", "tiny"], 3, 1, 0.0
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    table = markdown(result)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    made_plot = plot(result, os.path.join(args.out, "bench.png"))
    print(f"\nwrote {args.out}/bench.md, bench.json"
          + (", bench.png" if made_plot else " (no plot: pip install matplotlib)"))


if __name__ == "__main__":
    main()
