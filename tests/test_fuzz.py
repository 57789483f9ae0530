"""Property-based fuzzing (hypothesis) of gatedrnn.LSTM / GRU / RNN and the raw ops.

The property every test checks is the drop-in contract:

    For any call, gatedrnn either gives torch.nn's results (outputs, final states
    and the gradients of a random linear loss with respect to the input, hx and
    every parameter), or -- when torch.nn raises -- raises an exception of the
    same type. It never crashes and never hangs.

torch.nn always runs first and is the oracle: the expected behaviour (including
whether a call is an error at all) is never hard-coded. The raw ops
(``torch.ops.gatedrnn.*_forward`` / ``*_backward``) have no torch.nn twin; for them
a valid call must give the result of the matching torch.nn layer (through the
conftest helpers ``build_case`` / ``run_ours`` / ``run_nn``) and an invalid call
must raise RuntimeError or ValueError.

What is drawn: cell (LSTM, LSTM with proj_size, GRU, RNN tanh / relu), dtype
(float32 / float64), num_layers 1-3, bidirectional, bias, batch_first, sizes
(T <= 6, N <= 4, input and hidden sizes <= 7, zero T and N included where they
can be expressed), the input kind (padded, unbatched 2-D, packed with
pack_padded_sequence sorted / unsorted, pack_sequence, a hand-built
PackedSequence), hx given or not, memory layouts of every tensor (permuted
storage, strided slices, storage offsets, stride-0 expansions, transposed
batch_first views), non-contiguous parameters, train / eval mode (dropout 0, or
dropout > 0 in eval mode), grad mode (backward, no_grad, inference_mode).

Reproducible: ``derandomize=True`` and ``database=None`` -- every run draws the
same examples and nothing is written to a ``.hypothesis`` directory. The number
of examples per test is in ``EXAMPLES`` (2,800 in total, about a minute on two
cores); the environment variable GATEDRNN_FUZZ_SCALE multiplies them for a
longer soak (default 1).

torch.nn itself is not a safe oracle for every call: for a PackedSequence,
torch.nn.LSTM checks neither the input nor hx before its kernel, and some mistakes
there corrupt the heap (see torch_nn_corrupts_memory); those calls are never made
on torch.nn.

Tolerances (``conftest.tolerances``): rtol = atol = 1e-10 for float64 and 1e-5 for
float32, for outputs, states and gradients alike -- no loosening for gradients or
deep stacks. Measured over 1,800 module cases (3 layers, bidirectional, T <= 6,
sizes <= 7), the largest float32 difference used 11% of that budget for a
gradient and 2.4% for an output.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import shutil
import sys
import tempfile
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import gatedrnn  # noqa: F401  (registers torch.ops.gatedrnn.*)
from _dropin_helpers import (
    CELLS,
    assert_same,
    cotangent,
    family,
    is_lstm,
    make_pair,
)
from conftest import (
    assert_results_close,
    build_case,
    cotangents,
    functional_forward,
    loss_and_grads,
    as_leaves,
    nonlinearity,
    op_and_args,
    run_nn,
    run_ours,
    tolerances,
)

DTYPES = (torch.float32, torch.float64)
OP_ERRORS = (RuntimeError, ValueError)

_SCALE = float(os.environ.get("GATEDRNN_FUZZ_SCALE", "1"))
#: GATEDRNN_FUZZ_VERBOSE=1 prints every case before it runs (run with -s): after a
#: crash, the last case printed is the one that crashed.
_VERBOSE = os.environ.get("GATEDRNN_FUZZ_VERBOSE", "") not in ("", "0")
#: Shrinking a counterexample takes Hypothesis up to minutes per failing test, so by
#: default a failure is reported as found (the first examples drawn are the simplest
#: ones anyway); GATEDRNN_FUZZ_SHRINK=1 shrinks it to a minimal one.
_SHRINK = os.environ.get("GATEDRNN_FUZZ_SHRINK", "") not in ("", "0")


def _no_hypothesis_directory():
    """Hypothesis caches the constants it finds in test modules under
    ./.hypothesis/constants even with database=None; unless the user chose a storage
    directory, point it at a temporary one that is removed at exit."""
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return
    home = tempfile.mkdtemp(prefix="gatedrnn-fuzz-hypothesis-")
    set_hypothesis_home_dir(home)
    atexit.register(shutil.rmtree, home, ignore_errors=True)


_no_hypothesis_directory()

#: examples per test (before GATEDRNN_FUZZ_SCALE)
EXAMPLES = {
    "test_module_matches_torch_nn": 700,
    "test_module_zero_sizes_match_torch_nn": 150,
    "test_module_bad_arguments_raise_like_torch_nn": 30,  # per fault (13)
    "test_module_lstm_lone_hx_tensor": 40,
    "test_module_handbuilt_packed_sequence_matches_torch_nn": 150,
    "test_module_malformed_packed_sequence_like_torch_nn": 25,  # per fault (6)
    "test_op_forward_matches_torch_nn": 300,
    "test_op_zero_sizes": 100,
    "test_op_bad_arguments_raise": 10,  # per fault (34)
    "test_op_random_batch_sizes": 150,
    "test_op_backward_direct_call_matches_autograd": 150,
    "test_op_backward_bad_arguments_raise": 15,  # per fault (12)
}


def show(case):
    """note() the case for hypothesis' failure report; print it first if verbose."""
    if _VERBOSE:
        print(repr(case), flush=True)
    note(repr(case))


def fuzz_settings(name):
    return settings(
        max_examples=max(1, int(EXAMPLES[name] * _SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        report_multiple_bugs=_SHRINK,
        phases=tuple(Phase) if _SHRINK else (Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example,
        ],
    )


def _stderr_fd(config):
    """The un-captured stderr that pytest's faulthandler plugin writes to."""
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        return config.stash[fault_handler_stderr_fd_key]
    except Exception:  # noqa: BLE001  (private pytest API: fall back to stderr)
        return sys.stderr.fileno()


@pytest.fixture(autouse=True)
def _hang_watchdog(request):
    """A hang is a failure too: if one test item runs for more than 10 minutes (the
    whole file normally takes about a minute) dump every thread's traceback and exit
    instead of hanging the suite. Left to pytest when its faulthandler_timeout is set."""
    if float(request.config.getini("faulthandler_timeout") or 0) > 0:
        yield
        return
    seconds = 600 * max(1.0, _SCALE) * (5 if _SHRINK else 1)
    faulthandler.dump_traceback_later(seconds, exit=True, file=_stderr_fd(request.config))
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------------------
# memory layouts
# ---------------------------------------------------------------------------
#
# A layout is (expand_dims, transforms). The leaf tensor that gradients are taken
# with respect to is a fresh contiguous tensor; the tensor the module / op sees is
# built from it inside the autograd graph, so both sides see exactly the same
# strides and values and the gradients flow back to the same leaf:
#   transforms  value-preserving re-layouts, applied in order:
#     ("permute", p)  storage in dimension order p (e.g. a transposed batch_first view)
#     ("flip",)       storage in reversed dimension order (any rank; also what a
#                     "permute" of another rank means, e.g. for a 1-D bias)
#     ("stride", d)   every other element of a twice-as-large buffer along dims <= d
#     ("offset", k)   a view starting k elements into its storage
#   expand_dims  dims the leaf has size 1 in, then expanded (stride 0) to full size.


def _inverse(p):
    inv = [0] * len(p)
    for i, j in enumerate(p):
        inv[j] = i
    return inv


def apply_transform(y, t):
    kind = t[0]
    if y.dim() == 0:
        return y
    if kind in ("permute", "flip"):
        p = list(t[1]) if kind == "permute" and len(t[1]) == y.dim() else list(
            range(y.dim()))[::-1]
        return y.permute(p).contiguous().permute(_inverse(p))
    if kind == "stride":
        d = t[1] % y.dim()
        return torch.stack([y, torch.zeros_like(y)], dim=d + 1).select(d + 1, 0)
    if kind == "offset":
        k = t[1]
        return torch.cat([y.new_zeros(k), y.reshape(-1)])[k:].view(y.shape)
    raise AssertionError(kind)


def leaf_shape(shape, layout):
    expand, _ = layout
    return tuple(1 if d in expand else s for d, s in enumerate(shape))


def apply_layout(leaf, layout, shape):
    expand, transforms = layout
    y = leaf
    for t in transforms:
        y = apply_transform(y, t)
    if expand:
        y = y.expand(shape)
    assert tuple(y.shape) == tuple(shape), (y.shape, shape)
    return y


def transforms(ndim, max_size=2):
    one = st.one_of(
        st.permutations(range(ndim)).map(lambda p: ("permute", tuple(p))),
        st.just(("flip",)),
        st.integers(0, max(ndim - 1, 0)).map(lambda d: ("stride", d)),
        st.integers(1, 5).map(lambda k: ("offset", k)),
    )
    return st.lists(one, max_size=max_size).map(tuple)


def layouts(ndim, expand=True):
    dims = st.frozensets(st.integers(0, ndim - 1), max_size=ndim) if expand else st.just(
        frozenset())
    return st.tuples(dims.map(lambda s: tuple(sorted(s))), transforms(ndim))


# ---------------------------------------------------------------------------
# running a module on a drawn case
# ---------------------------------------------------------------------------

GRAD_MODES = {
    "grad": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference": torch.inference_mode,
}


def forward_backward(module, make_inputs, leaves, grad_mode="grad"):
    """Run ``module(*make_inputs(leaves))`` and, in grad mode, the backward pass of
    a fixed random linear loss over every output.

    ``leaves`` maps names to contiguous tensors; fresh copies of them become the
    autograd leaves (those with requires_grad keep it). Returns (results, meta):
    results maps 'output' (PackedSequence.data for packed input), 'batch_sizes',
    'sorted_indices', 'unsorted_indices' (packed), 'h_n', 'c_n' and the gradients
    'grad.<leaf>' / 'grad.<parameter>' to tensors; meta describes the structure
    (container types, which outputs require grad). The leaves must be unchanged
    afterwards: the module does not write into its inputs."""
    leaves = {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in leaves.items()}
    before = {k: v.detach().clone() for k, v in leaves.items()}
    with GRAD_MODES[grad_mode]():
        inp, hx = make_inputs(leaves)
        out, state = module(inp, hx)
    res = {}
    meta = [type(out).__name__, type(state).__name__]
    if isinstance(out, PackedSequence):
        res["batch_sizes"] = out.batch_sizes
        res["sorted_indices"] = out.sorted_indices
        res["unsorted_indices"] = out.unsorted_indices
        out = out.data
    states = list(state) if isinstance(state, tuple) else [state]
    meta.append(len(states))
    outs = [out, *states]
    for name, o in zip(("output", "h_n", "c_n"), outs):
        res[name] = o.detach()
    meta.append(tuple(o.requires_grad for o in outs))
    for k, v in leaves.items():
        assert torch.equal(v.detach(), before[k]), f"{type(module).__name__} modified {k}"
    if grad_mode != "grad" or not any(o.requires_grad for o in outs):
        return res, tuple(meta)
    loss = sum((o * cotangent(o.shape, o.dtype, 100 + k)).sum()
               for k, o in enumerate(outs) if o.requires_grad)
    targets = {"grad." + k: v for k, v in leaves.items() if v.requires_grad}
    targets.update({"grad." + n: p for n, p in module.named_parameters() if p.requires_grad})
    grads = torch.autograd.grad(loss, list(targets.values()), allow_unused=True)
    for (key, t), g in zip(targets.items(), grads):
        # None and zeros are the same gradient (torch.nn gives None for a leaf that
        # only reaches empty outputs)
        res[key] = torch.zeros_like(t) if g is None else g
    return res, tuple(meta)


def check_like_torch_nn(ref, ours, make_inputs, leaves, grad_mode="grad", **tolerance):
    """The drop-in property: torch.nn runs first; if it raises, ours raises an
    exception of the same type; otherwise ours gives the same results."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected, expected_meta = forward_backward(ref, make_inputs, leaves, grad_mode)
    except Exception as exc:  # noqa: BLE001  (any exception type is the expectation)
        note(f"torch.nn raised {type(exc).__name__}: {exc}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                forward_backward(ours, make_inputs, leaves, grad_mode)
        except Exception as got:  # noqa: BLE001
            assert type(got) is type(exc), (
                f"torch.nn raised {type(exc).__name__}: {exc}\n"
                f"gatedrnn raised {type(got).__name__}: {got}")
            return "raised"
        raise AssertionError(
            f"torch.nn raised {type(exc).__name__}: {exc}\ngatedrnn did not raise")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got, got_meta = forward_backward(ours, make_inputs, leaves, grad_mode)
    except Exception as exc:  # noqa: BLE001
        raise AssertionError(
            f"torch.nn accepted the call, gatedrnn raised {type(exc).__name__}: {exc}") from exc
    assert got_meta == expected_meta, (got_meta, expected_meta)
    assert_same(got, expected, **tolerance)
    return "matched"


def state_sizes(cell, hidden, proj):
    if is_lstm(cell):
        return [proj or hidden, hidden]
    return [hidden]


def restride_parameters(module, param_transforms):
    """Give ``module`` non-contiguous parameters with the same values (the i-th
    parameter gets param_transforms[i % len]; None keeps it)."""
    if not param_transforms:
        return
    names = [n for n, _ in module.named_parameters()]
    for i, name in enumerate(names):
        t = param_transforms[i % len(param_transforms)]
        if t is None:
            continue
        p = getattr(module, name)
        new = apply_layout(p.detach().clone(), ((), t), p.shape)
        setattr(module, name, torch.nn.Parameter(new, requires_grad=p.requires_grad))


def build_pair(case):
    kw = dict(num_layers=case["num_layers"], bias=case["bias"], batch_first=case["batch_first"],
              bidirectional=case["bidirectional"], dropout=case["dropout"])
    if case["cell"] == "lstm_proj":
        kw["proj_size"] = case["proj"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with num_layers=1
        ref, ours = make_pair(case["cell"], case["I"], case["H"], seed=case["seed"],
                              dtype=case["dtype"], **kw)
    if not case["train"]:
        ref.eval()
        ours.eval()
    restride_parameters(ours, case["param_transforms"])
    return ref, ours


# ---------------------------------------------------------------------------
# module cases
# ---------------------------------------------------------------------------

PACKED_KINDS = ("packed_sorted", "packed_unsorted", "pack_sequence")
MODULE_KINDS = ("padded", "unbatched") + PACKED_KINDS


@st.composite
def module_configs(draw, cells=CELLS):
    """Constructor arguments plus train/eval: dropout is 0, or > 0 in eval mode."""
    cell = draw(st.sampled_from(cells))
    H = draw(st.integers(2 if cell == "lstm_proj" else 1, 7))
    case = dict(
        cell=cell,
        dtype=draw(st.sampled_from(DTYPES)),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        I=draw(st.integers(1, 7)),
        H=H,
        proj=draw(st.integers(1, H - 1)) if cell == "lstm_proj" else 0,
        seed=draw(st.integers(0, 2**16)),
    )
    dropout = draw(st.sampled_from([0.0, 0.0, 0.0, 0.4]))
    case["dropout"] = dropout
    case["train"] = dropout == 0.0 and draw(st.booleans())
    return case


@st.composite
def module_cases(draw, kinds=MODULE_KINDS, T=(0, 6), N=(0, 4), cells=CELLS):
    case = draw(module_configs(cells))
    kind = draw(st.sampled_from(kinds))
    case["kind"] = kind
    packed = kind in PACKED_KINDS
    case["T"] = draw(st.integers(max(T[0], 1) if packed else T[0], T[1]))
    case["N"] = None if kind == "unbatched" else draw(
        st.integers(max(N[0], 1) if packed else N[0], N[1]))
    if packed:
        lengths = draw(st.lists(st.integers(1, case["T"]), min_size=case["N"],
                                max_size=case["N"]))
        sort = kind == "packed_sorted" or (kind == "pack_sequence" and draw(st.booleans()))
        case["lengths"] = sorted(lengths, reverse=True) if sort else lengths
        case["enforce_sorted"] = sort
        # the layout of the padded tensor that is packed (independent of the module's)
        case["pack_batch_first"] = draw(st.booleans())
        case["packed_transforms"] = draw(transforms(2))
    case["input_layout"] = draw(layouts(input_ndim(case)))
    case["hx_given"] = draw(st.booleans())
    n_states = 2 if is_lstm(case["cell"]) else 1
    hx_ndim = 2 if kind == "unbatched" else 3
    case["hx_layouts"] = [draw(layouts(hx_ndim)) for _ in range(n_states)]
    case["param_transforms"] = draw(st.lists(st.one_of(st.none(), transforms(2, 1)),
                                             max_size=3))
    case["grad_mode"] = draw(st.sampled_from(["grad", "grad", "grad", "no_grad", "inference"]))
    case["input_grad"] = draw(st.booleans()) or case["grad_mode"] != "grad"
    return case


def input_shape(case):
    T, N, I = case["T"], case["N"], case["I"]
    kind = case["kind"]
    if kind == "unbatched":
        return (T, I)
    if kind == "padded":
        return (N, T, I) if case["batch_first"] else (T, N, I)
    if kind == "pack_sequence":
        return (T, N, I)
    return (N, T, I) if case["pack_batch_first"] else (T, N, I)


def input_ndim(case):
    return 2 if case["kind"] == "unbatched" else 3


def hx_shapes(case):
    layers = case["num_layers"] * (2 if case["bidirectional"] else 1)
    sizes = state_sizes(case["cell"], case["H"], case["proj"])
    if case["kind"] == "unbatched":
        return [(layers, s) for s in sizes]
    return [(layers, case["N"], s) for s in sizes]


def add_hx_leaves(leaves, case, g):
    """Adds the initial states of a case that gives them ('hx[k]') to ``leaves``."""
    if case["hx_given"]:
        for k, (shape, layout) in enumerate(zip(hx_shapes(case), case["hx_layouts"])):
            h = 0.5 * torch.randn(leaf_shape(shape, layout), generator=g, dtype=torch.float64)
            leaves[f"hx[{k}]"] = h.to(case["dtype"]).requires_grad_()
    return leaves


def module_leaves(case):
    """The leaf tensors of a case (their shapes follow the layouts' expansions)."""
    g = torch.Generator().manual_seed(case["seed"] + 1)
    dt = case["dtype"]
    leaves = {"input": torch.randn(leaf_shape(input_shape(case), case["input_layout"]),
                                   generator=g, dtype=torch.float64).to(dt)}
    leaves["input"].requires_grad_(case["input_grad"])
    return add_hx_leaves(leaves, case, g)


def hx_from_leaves(leaves, case):
    """The hx argument built from a case's 'hx[k]' leaves: None, a tuple (LSTM) or a
    tensor."""
    if not case["hx_given"]:
        return None
    states = tuple(apply_layout(leaves[f"hx[{k}]"], layout, shape)
                   for k, (shape, layout) in enumerate(zip(hx_shapes(case), case["hx_layouts"])))
    return states if is_lstm(case["cell"]) else states[0]


def module_inputs(case):
    """make_inputs(leaves) -> (module input, hx) for a drawn case."""

    def make(leaves):
        x = apply_layout(leaves["input"], case["input_layout"], input_shape(case))
        kind = case["kind"]
        if kind == "pack_sequence":
            seqs = [x[:n, b] for b, n in enumerate(case["lengths"])]
            inp = pack_sequence(seqs, enforce_sorted=case["enforce_sorted"])
        elif kind in PACKED_KINDS:
            inp = pack_padded_sequence(x, torch.tensor(case["lengths"]),
                                       batch_first=case["pack_batch_first"],
                                       enforce_sorted=case["enforce_sorted"])
        else:
            inp = x
        if kind in PACKED_KINDS and case["packed_transforms"]:
            data = apply_layout(inp.data, ((), case["packed_transforms"]), inp.data.shape)
            inp = PackedSequence(data, inp.batch_sizes, inp.sorted_indices,
                                 inp.unsorted_indices)
        return inp, hx_from_leaves(leaves, case)

    return make


def run_module_case(case):
    show(case)
    ref, ours = build_pair(case)
    outcome = check_like_torch_nn(ref, ours, module_inputs(case), module_leaves(case),
                                  case["grad_mode"], **tolerances(case["dtype"]))
    # what was covered (pytest --hypothesis-show-statistics)
    event(f"{outcome}: {case['kind']}")
    event(f"{case['cell']} {str(case['dtype'])[6:]} layers={case['num_layers']}")
    if case["T"] == 0 or case["N"] == 0:
        event(f"zero size: T={case['T']} N={case['N']} -> {outcome}")
    return outcome


@fuzz_settings("test_module_matches_torch_nn")
@given(case=module_cases())
def test_module_matches_torch_nn(case):
    """Any constructor configuration, input kind (padded, batch_first, unbatched,
    packed sorted / unsorted, pack_sequence), shape (T and N may be 0), hx or not,
    tensor layout and grad mode: ours matches torch.nn in outputs, final states and
    every gradient, or raises the exception type torch.nn raises."""
    run_module_case(case)


@fuzz_settings("test_module_zero_sizes_match_torch_nn")
@given(case=module_cases(kinds=("padded", "unbatched"), T=(0, 2), N=(0, 2)))
def test_module_zero_sizes_match_torch_nn(case):
    """Zero-size edges, concentrated: T = 0 (torch.nn raises RuntimeError "Expected
    sequence length to be larger than 0", for padded and unbatched input alike) and
    N = 0 (torch.nn accepts it: empty output, empty final states, zero gradients)."""
    assume(case["T"] == 0 or case["N"] == 0)
    run_module_case(case)


# ---------------------------------------------------------------------------
# module calls with a mistake in them
# ---------------------------------------------------------------------------

#: One mistake per call (each is its own test item).
MODULE_FAULTS = (
    "input_features",   # input with a different feature size
    "input_rank",       # 0-D, 1-D or 4-D input (packed: data of rank 1 or 3)
    "input_dtype",      # input of another dtype than the module (float or not)
    "hx_layers",        # hx with more / fewer layer*direction rows
    "hx_layers_one",    # LSTM: h_0 and c_0 with different layer*direction counts
    "hx_batch",         # hx with another batch size
    "hx_features",      # one state with another feature size
    "hx_rank",          # unbatched hx for batched input, or the reverse
    "h_dtype",          # h_0 of another dtype
    "c_dtype",          # LSTM: c_0 of another dtype
    "hx_one_tensor",    # GRU/RNN: a 1-tuple (LSTM: test_module_lstm_lone_hx_tensor)
    "hx_three",         # LSTM: three tensors; GRU/RNN: a pair
    "hx_list",          # a list instead of a tuple
)


@st.composite
def bad_module_calls(draw, fault):
    kinds = ("padded", "unbatched", "packed_sorted", "packed_unsorted")
    if fault == "hx_batch":
        kinds = kinds[:1] + kinds[2:]
    cells = CELLS
    if fault in ("hx_layers_one", "c_dtype"):
        cells = ("lstm", "lstm_proj")
    elif fault == "hx_one_tensor":  # for LSTM: test_module_lstm_lone_hx_tensor
        cells = ("gru", "rnn_tanh", "rnn_relu")
    case = draw(module_cases(kinds=kinds, T=(1, 5), N=(1, 4), cells=cells))
    if fault.startswith(("hx", "h_", "c_")):
        case["hx_given"] = True
    case["fault"] = fault
    case["fault_delta"] = draw(st.sampled_from([-1, 1, 2]))
    case["fault_which"] = draw(st.integers(0, 1))
    case["fault_dtype"] = draw(st.sampled_from(
        [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64]))
    case["fault_rank"] = draw(st.sampled_from([0, 1, 4]))
    return case


def _resized(t, dim, delta, g):
    shape = list(t.shape)
    shape[dim] = max(shape[dim] + delta, 0)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(t.dtype)


def _as_other_dtype(t, dt):
    if dt != t.dtype:
        return (t * 3).to(dt)
    return t.to(torch.float32 if t.dtype == torch.float64 else torch.float64)


def bad_module_inputs(case):
    """make_inputs for the valid case with its one mistake made (the faulty tensor is
    a fresh tensor, or a differentiable function of the valid one)."""
    valid = module_inputs(case)
    fault, delta, which = case["fault"], case["fault_delta"], case["fault_which"]

    def make(leaves):
        g = torch.Generator().manual_seed(case["seed"] + 2)
        inp, hx = valid(leaves)
        packed = isinstance(inp, PackedSequence)
        x = inp.data if packed else inp
        if fault == "input_features":
            x = _resized(x, -1, delta, g)
        elif fault == "input_rank":
            rank = case["fault_rank"]
            if packed:
                x = x.reshape(-1) if rank in (0, 1) else x.unsqueeze(1)
            else:
                x = (x.reshape(-1)[:1].reshape(()) if rank == 0 else x.reshape(-1) if rank == 1
                     else x.unsqueeze(0))
        elif fault == "input_dtype":
            x = _as_other_dtype(x, case["fault_dtype"])
        if packed:
            inp = PackedSequence(x, inp.batch_sizes, inp.sorted_indices, inp.unsorted_indices)
        else:
            inp = x
        if not fault.startswith(("hx", "h_", "c_")):
            return inp, hx
        states = list(hx) if isinstance(hx, tuple) else [hx]
        k = which % len(states)
        if fault == "hx_layers":
            states = [_resized(s, 0, delta, g) for s in states]
        elif fault == "hx_layers_one":
            states[k] = _resized(states[k], 0, delta, g)
        elif fault == "hx_batch":
            states = [_resized(s, 1, delta, g) for s in states]
        elif fault == "hx_features":
            states[k] = _resized(states[k], -1, delta, g)
        elif fault == "hx_rank":
            states = [s[:, 0] if s.dim() == 3 else s.unsqueeze(1) for s in states]
        elif fault in ("h_dtype", "c_dtype"):
            k = 0 if fault == "h_dtype" else 1
            states[k] = _as_other_dtype(states[k], case["fault_dtype"])
        elif fault == "hx_one_tensor":
            return inp, states[0] if is_lstm(case["cell"]) else (states[0],)
        elif fault == "hx_three":
            return inp, (*states, states[-1]) if is_lstm(case["cell"]) else (states[0],) * 2
        elif fault == "hx_list":
            return inp, states
        return inp, tuple(states) if is_lstm(case["cell"]) else states[0]

    return make


def torch_nn_corrupts_memory(case):
    """Calls torch.nn cannot be the oracle for (torch 2.13, CPU).

    For a PackedSequence, torch.nn.LSTM validates neither the input nor hx before
    its kernel (GRU and RNN do, in Python), and the kernel reads and writes out of
    bounds -- a segfault, "free(): invalid next size", "corrupted double-linked
    list", or a silently accepted call with garbage results -- for:
      * input data with the wrong number of features or of rank 3 (float32:
        accepted, and heap corruption with more features);
      * hx with the wrong number of layers, or h_0 and c_0 with different numbers
        of layers (float32 and float64);
      * hx whose batch size differs from batch_sizes[0] when nothing re-indexes hx
        first (sorted PackedSequence; float32, and float64 accepts batch 0).
    Those calls are not made on torch.nn at all; ours must raise RuntimeError, the
    type torch.nn raises for the same mistakes with padded input, with GRU / RNN, or
    where its kernel happens to catch them."""
    if not (is_lstm(case["cell"]) and case["kind"] in PACKED_KINDS + ("handbuilt",)):
        return False
    fault = case["fault"]
    if fault in ("input_features", "input_rank"):
        return case["dtype"] == torch.float32
    if fault in ("hx_layers", "hx_layers_one"):
        return True
    return fault == "hx_batch" and case["kind"] == "packed_sorted"


def with_cell_state_converted(make_inputs, dtype):
    """make_inputs with c_0 converted to ``dtype``."""
    def make(leaves):
        inp, (h, c) = make_inputs(leaves)
        return inp, (h, c.to(dtype))

    return make


def check_bad_module_call(case):
    show(case)
    ref, ours = build_pair(case)
    if case["fault"] == "c_dtype":
        # Decided (README, known differences): ours converts a c_0 of another
        # dtype to the input's, which is what torch.nn.LSTM does everywhere but on its
        # oneDNN path (float32, padded, no projection), where it raises. The oracle is
        # torch.nn given the converted c_0; and where torch.nn converts by itself, the
        # results must be the same either way.
        make = bad_module_inputs(case)
        expected, _ = forward_backward(ref, with_cell_state_converted(make, case["dtype"]),
                                       module_leaves(case), case["grad_mode"])
        got, _ = forward_backward(ours, make, module_leaves(case), case["grad_mode"])
        assert_same(got, expected, **tolerances(case["dtype"]))
        return
    if torch_nn_corrupts_memory(case):
        with pytest.raises(RuntimeError):
            forward_backward(ours, bad_module_inputs(case), module_leaves(case),
                             case["grad_mode"])
        return
    check_like_torch_nn(ref, ours, bad_module_inputs(case), module_leaves(case),
                        case["grad_mode"], **tolerances(case["dtype"]))


@pytest.mark.parametrize("fault", MODULE_FAULTS)
@fuzz_settings("test_module_bad_arguments_raise_like_torch_nn")
@given(data=st.data())
def test_module_bad_arguments_raise_like_torch_nn(fault, data):
    """A call with one mistake (input feature size, rank or dtype; hx layer count,
    batch size, feature size, rank, dtype or container) raises the exception type
    torch.nn raises -- and where torch.nn accepts the call after all (e.g. hx as a
    list), gives its results."""
    check_bad_module_call(data.draw(bad_module_calls(fault), label="case"))


@fuzz_settings("test_module_lstm_lone_hx_tensor")
@given(case=module_cases(kinds=("padded", "unbatched", "packed_sorted", "packed_unsorted"),
                         T=(1, 5), N=(1, 4), cells=("lstm", "lstm_proj")))
def test_module_lstm_lone_hx_tensor(case):
    """LSTM given a single tensor instead of (h_0, c_0): ours raises the exception
    type torch.nn raises. (torch.nn: RuntimeError from its size checks when the
    tensor has more than one layer-direction; IndexError -- hx[1] of a [1, N, H]
    tensor -- with one; TypeError from its kernel's signature for a sorted
    PackedSequence.)"""
    case = dict(case, hx_given=True, fault="hx_one_tensor", fault_delta=1, fault_which=0,
                fault_dtype=case["dtype"], fault_rank=0)
    check_bad_module_call(case)


# ---------------------------------------------------------------------------
# PackedSequence built by hand
# ---------------------------------------------------------------------------


@st.composite
def batch_size_lists(draw, max_steps=6, max_batch=4):
    """Valid batch_sizes: non-empty, positive, non-increasing."""
    sizes = draw(st.lists(st.integers(1, max_batch), min_size=1, max_size=max_steps))
    return sorted(sizes, reverse=True)


@st.composite
def handbuilt_packed_cases(draw, fault=None):
    """A PackedSequence built by hand; ``fault`` (one of PACKED_FAULTS) makes its
    batch_sizes malformed."""
    case = draw(module_configs())
    case["kind"] = "handbuilt"
    bs = draw(batch_size_lists())
    rows = sum(bs)
    case["fault"] = fault
    if fault is not None:
        if fault == "zero_step":  # a step with batch size 0 (anywhere, possibly first)
            bs.insert(draw(st.integers(0, len(bs))), 0)
        elif fault == "increasing":  # ascending, ending with a strict increase
            bs = sorted(bs) + [max(bs) + 1]
            rows = sum(bs)
        elif fault == "rows_more":
            rows += draw(st.integers(1, 3))
        elif fault == "rows_fewer":
            rows -= draw(st.integers(1, rows))
        elif fault == "empty":
            bs, rows = [], 0
        case["bs_dtype"] = torch.int32 if fault == "int32" else torch.int64
    else:
        case["bs_dtype"] = torch.int64
    case["batch_sizes"] = bs
    case["rows"] = rows
    N = bs[0] if bs else 0
    case["N"] = N
    case["permute_batch"] = (draw(st.permutations(range(N))) if N > 0 and draw(st.booleans())
                             else None)
    case["input_layout"] = draw(layouts(2))
    case["hx_given"] = draw(st.booleans()) and N > 0
    n_states = 2 if is_lstm(case["cell"]) else 1
    case["hx_layouts"] = [draw(layouts(3)) for _ in range(n_states)]
    case["param_transforms"] = draw(st.lists(st.one_of(st.none(), transforms(2, 1)),
                                             max_size=3))
    case["grad_mode"] = "grad"
    case["input_grad"] = True
    return case


def handbuilt_leaves(case):
    g = torch.Generator().manual_seed(case["seed"] + 1)
    dt = case["dtype"]
    shape = (case["rows"], case["I"])
    leaves = {"input": torch.randn(leaf_shape(shape, case["input_layout"]), generator=g,
                                   dtype=torch.float64).to(dt).requires_grad_()}
    return add_hx_leaves(leaves, case, g)


def handbuilt_inputs(case):
    def make(leaves):
        data = apply_layout(leaves["input"], case["input_layout"], (case["rows"], case["I"]))
        bs = torch.tensor(case["batch_sizes"], dtype=case["bs_dtype"])
        sorted_indices = (None if case["permute_batch"] is None
                          else torch.tensor(case["permute_batch"], dtype=torch.int64))
        inp = PackedSequence(data, bs, sorted_indices, None)
        return inp, hx_from_leaves(leaves, case)

    return make


@fuzz_settings("test_module_handbuilt_packed_sequence_matches_torch_nn")
@given(case=handbuilt_packed_cases())
def test_module_handbuilt_packed_sequence_matches_torch_nn(case):
    """A PackedSequence made directly from (data, batch_sizes, sorted_indices) with
    any valid batch_sizes and any batch permutation (strided data included) gives
    torch.nn's results."""
    show(case)
    ref, ours = build_pair(case)
    check_like_torch_nn(ref, ours, handbuilt_inputs(case), handbuilt_leaves(case),
                        **tolerances(case["dtype"]))


#: malformed batch_sizes of a hand-built PackedSequence
PACKED_FAULTS = (
    "zero_step",   # a step of batch size 0 inserted anywhere (first included)
    "increasing",  # steps getting larger
    "rows_more",   # data has more rows than sum(batch_sizes)
    "rows_fewer",  # data has fewer rows
    "int32",       # batch_sizes of dtype int32
    "empty",       # no steps at all (and no data rows)
)


@pytest.mark.parametrize("fault", PACKED_FAULTS)
@fuzz_settings("test_module_malformed_packed_sequence_like_torch_nn")
@given(data=st.data())
def test_module_malformed_packed_sequence_like_torch_nn(fault, data):
    """A hand-built PackedSequence whose batch_sizes are malformed: ours raises the
    exception type torch.nn raises, or gives its results where torch.nn accepts
    the call -- except for batch_sizes that do not describe the data, which torch.nn
    runs and ours refuses (see the comment in the test)."""
    case = data.draw(handbuilt_packed_cases(fault), label="case")
    show(case)
    ref, ours = build_pair(case)
    bs = case["batch_sizes"]
    if sum(bs) != case["rows"] or any(a < b for a, b in zip(bs, bs[1:])):
        # Decided (README, known differences): batch_sizes that do not describe the
        # data -- data rows beyond sum(batch_sizes), or a step of 0 followed by a larger
        # one -- are refused with a RuntimeError even where torch.nn runs the call (it
        # ignores the extra rows). A trailing step of 0 is fine and matches torch.nn.
        with pytest.raises(RuntimeError, match="batch_sizes"):
            forward_backward(ours, handbuilt_inputs(case), handbuilt_leaves(case))
        return
    check_like_torch_nn(ref, ours, handbuilt_inputs(case), handbuilt_leaves(case),
                        **tolerances(case["dtype"]))


# ---------------------------------------------------------------------------
# the raw ops
# ---------------------------------------------------------------------------

VALUE_KEYS = ("input", "h0", "c0")  # tensors whose values may change (expand)
WEIGHT_KEYS = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


@st.composite
def op_cases(draw, T=(1, 6), N=(1, 4), cells=CELLS, packed=st.booleans(), bias=st.booleans()):
    cell = draw(st.sampled_from(cells))
    H = draw(st.integers(2 if cell == "lstm_proj" else 1, 7))
    return dict(
        cell=cell,
        dtype=draw(st.sampled_from(DTYPES)),
        T=draw(st.integers(*T)),
        N=draw(st.integers(*N)),
        I=draw(st.integers(1, 7)),
        H=H,
        P=draw(st.integers(1, H - 1)) if cell == "lstm_proj" else None,
        bias=draw(bias),
        reverse=draw(st.booleans()),
        packed=draw(packed),
        seed=draw(st.integers(0, 2**16)),
        layouts={k: draw(layouts(2 if k != "input" else 3, expand=k in VALUE_KEYS))
                 for k in VALUE_KEYS + WEIGHT_KEYS},
        use=draw(st.sampled_from([None, ("output",), ("h_n",), ("output", "c_n")])),
        via=draw(st.sampled_from(["op", "op", "functional", "functional_no_hx"])),
    )


def op_tensors(case):
    """build_case's (module, tensors, batch_sizes), then every tensor given its drawn
    layout (input / h0 / c0 may be expanded from size 1: their values change, the
    same on both sides; weights keep the module's values)."""
    module, tensors, bs = build_case(
        case["cell"], case["T"], case["N"], case["I"], case["H"], case["P"],
        bias=case["bias"], dtype=case["dtype"], reverse=case["reverse"],
        packed=case["packed"], seed=case["seed"])
    out = {}
    for k, t in tensors.items():
        expand, trs = case["layouts"][k]
        expand = tuple(d for d in expand if d < t.dim())
        base = t
        for d in expand:
            base = base.narrow(d, 0, min(1, base.shape[d]))
        if any(base.shape[d] == 0 for d in expand):
            expand, base = (), t
        out[k] = apply_layout(base.clone(), (expand, trs), t.shape)
    return module, out, bs


def run_functional(cell, tensors, batch_sizes, reverse, use, with_hx):
    """Like conftest.run_ours, through gatedrnn.functional (hx omitted unless
    ``with_hx``: then h0 / c0 are zeros and have no gradient)."""
    if not with_hx:
        tensors = {k: v for k, v in tensors.items() if k not in ("h0", "c0")}
    leaves = as_leaves(tensors)
    hx = None
    if with_hx:
        hx = (leaves["h0"], leaves["c0"]) if is_lstm(cell) else leaves["h0"]
    outs = functional_forward(cell, leaves["input"], hx, leaves, batch_sizes=batch_sizes,
                              reverse=reverse)
    return loss_and_grads(outs, leaves, use)


def ours_and_reference(case):
    module, tensors, bs = op_tensors(case)
    cell, reverse, use = case["cell"], case["reverse"], case["use"]
    if case["via"] == "functional_no_hx":
        tensors["h0"] = torch.zeros_like(tensors["h0"])
        if is_lstm(cell):
            tensors["c0"] = torch.zeros_like(tensors["c0"])
        ref = run_nn(cell, module, tensors, bs, reverse, use)
        ref.pop("grad_h0")
        ref.pop("grad_c0", None)
        ours = run_functional(cell, tensors, bs, reverse, use, with_hx=False)
    elif case["via"] == "functional":
        ref = run_nn(cell, module, tensors, bs, reverse, use)
        ours = run_functional(cell, tensors, bs, reverse, use, with_hx=True)
    else:
        ref = run_nn(cell, module, tensors, bs, reverse, use)
        ours = run_ours(cell, tensors, bs, reverse, use)
    return ours, ref


@fuzz_settings("test_op_forward_matches_torch_nn")
@given(case=op_cases())
def test_op_forward_matches_torch_nn(case):
    """torch.ops.gatedrnn.*_forward (directly, or through gatedrnn.functional with
    or without hx), padded or packed, forward or reverse, any tensor layout of any
    argument (expanded input / h0 / c0 included): the outputs and the gradients of
    a loss over any subset of the outputs match the torch.nn layer's."""
    show(case)
    ours, ref = ours_and_reference(case)
    assert_results_close(ours, ref, **tolerances(case["dtype"]))


@fuzz_settings("test_op_zero_sizes")
@given(case=op_cases(T=(0, 3), N=(0, 3)))
def test_op_zero_sizes(case):
    """Padded input with T = 0 or N = 0 given to the ops. N = 0 (T > 0): torch.nn
    accepts it, so the op must give its (empty) results. T = 0: torch.nn has no
    equivalent (its modules refuse T = 0); the op either raises RuntimeError /
    ValueError or treats it as the empty sequence: empty output, final state = initial
    state, gradients passed straight through to h0 / c0 and zero for the weights."""
    assume(case["T"] == 0 or case["N"] == 0)
    case = dict(case, packed=False, via="op")
    show(case)
    if case["T"] > 0:
        ours, ref = ours_and_reference(case)
        assert_results_close(ours, ref, **tolerances(case["dtype"]))
        return
    _, tensors, bs = op_tensors(case)
    try:
        ours = run_ours(case["cell"], tensors, bs, case["reverse"], case["use"])
    except OP_ERRORS:
        return
    P = tensors["w_hh"].shape[1]
    leaves = as_leaves(tensors)
    outs = [leaves["input"].new_zeros(0, case["N"], P) + 0 * leaves["input"].sum(),
            leaves["h0"] * 1]
    if is_lstm(case["cell"]):
        outs.append(leaves["c0"] * 1)
    expected = loss_and_grads(outs, leaves, case["use"])
    for k in WEIGHT_KEYS:
        if k in leaves:
            expected["grad_" + k] = torch.zeros_like(leaves[k])
    assert_results_close(ours, expected, rtol=0, atol=0)


# ---- invalid op arguments ------------------------------------------------

OP_FAULTS = (
    "input_features", "input_rank", "input_dtype",
    "h0_rows", "h0_cols", "h0_rank", "h0_dtype",
    "c0_rows", "c0_cols", "c0_rank", "c0_dtype",
    "w_ih_rows", "w_ih_cols", "w_ih_rank", "w_ih_dtype",
    "w_hh_rows", "w_hh_cols", "w_hh_rank", "w_hh_dtype",
    "b_ih_size", "b_ih_rank", "b_ih_dtype", "b_hh_size", "b_hh_rank", "b_hh_dtype",
    "w_hr_rows", "w_hr_cols", "w_hr_dtype", "w_hr_square",
    "batch_sizes_for_padded", "batch_sizes_missing", "batch_sizes_dtype", "batch_sizes_rank",
    "nonlinearity",
)


def _op_cases_for(fault):
    """op_cases restricted to the calls ``fault`` can be made in."""
    kw = {}
    if fault.startswith("c0"):
        kw["cells"] = ("lstm", "lstm_proj")
    elif fault.startswith("b_"):
        kw["bias"] = st.just(True)
    elif fault == "w_hr_square":
        kw["cells"] = ("lstm",)
    elif fault.startswith("w_hr"):
        kw["cells"] = ("lstm_proj",)
    elif fault == "nonlinearity":
        kw["cells"] = ("rnn_tanh", "rnn_relu")
    if fault in ("batch_sizes_missing", "batch_sizes_dtype", "batch_sizes_rank"):
        kw["packed"] = st.just(True)
    elif fault == "batch_sizes_for_padded":
        kw["packed"] = st.just(False)
    return op_cases(**kw)


@st.composite
def bad_op_calls(draw, fault):
    case = draw(_op_cases_for(fault))
    case["via"] = "op"
    case["fault"] = fault
    case["delta"] = draw(st.sampled_from([-1, 1, 2]))
    case["other_dtype"] = draw(st.sampled_from(
        [torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.complex64, "other"]))
    case["rank"] = draw(st.sampled_from(["less", "more"]))
    case["bad_nonlinearity"] = draw(st.sampled_from(["", "TANH", "Relu", "sigmoid", "tanh "]))
    case["bs_dtype"] = draw(st.sampled_from([torch.int32, torch.float64, torch.uint8]))
    return case


def _other_dtype(t, choice):
    if choice == "other":
        return t.to(torch.float32 if t.dtype == torch.float64 else torch.float64)
    if choice in (torch.int64, torch.int32):
        return (t * 10).to(choice)
    return t.to(choice)


def _rank(t, how):
    return t.reshape(-1) if how == "less" and t.dim() > 1 else (
        t[0] if how == "less" else t.unsqueeze(0))


def make_fault(case, t, bs):
    """Apply the case's fault to op arguments (tensors dict, batch_sizes)."""
    fault, delta = case["fault"], case["delta"]
    g = torch.Generator().manual_seed(case["seed"] + 3)
    t = dict(t)
    nonlin = nonlinearity(case["cell"])

    def resized(k, dim):
        x = t[k]
        shape = list(x.shape)
        shape[dim] = max(shape[dim] + delta, 0)
        if shape[dim] == x.shape[dim]:
            shape[dim] += 1
        return torch.randn(shape, generator=g, dtype=torch.float64).to(x.dtype)

    name, _, what = fault.rpartition("_")
    if fault == "input_features":
        t["input"] = resized("input", -1)
    elif fault == "w_hr_square":
        H = t["w_hh"].shape[1]
        t["w_hr"] = torch.randn(H, H, generator=g, dtype=torch.float64).to(t["w_hh"].dtype)
    elif fault.startswith("batch_sizes"):
        if fault == "batch_sizes_for_padded":
            T, N = t["input"].shape[:2]
            bs = torch.full((T,), N, dtype=torch.int64)
        elif fault == "batch_sizes_missing":
            bs = None
        elif fault == "batch_sizes_dtype":
            bs = bs.to(case["bs_dtype"])
        elif fault == "batch_sizes_rank":
            bs = bs.unsqueeze(0)
    elif fault == "nonlinearity":
        nonlin = case["bad_nonlinearity"]
    elif what == "rows" or what == "size":
        t[name] = resized(name, 0)
    elif what == "cols":
        t[name] = resized(name, 1)
    elif what == "rank":
        t[name] = _rank(t[name], case["rank"])
    elif what == "dtype":
        t[name] = _other_dtype(t[name], case["other_dtype"])
    else:
        raise AssertionError(fault)
    return t, bs, nonlin


def call_op(cell, t, bs, reverse, nonlin=None):
    op, args = op_and_args(cell, t, bs, reverse)
    if family(cell) == "rnn" and nonlin is not None:
        args = args[:-2] + (nonlin, reverse)
    return op(*args)


@pytest.mark.parametrize("fault", OP_FAULTS)
@fuzz_settings("test_op_bad_arguments_raise")
@given(data=st.data())
def test_op_bad_arguments_raise(fault, data):
    """A forward-op call with one invalid argument (a wrong size along any
    dimension, wrong rank or wrong dtype of any tensor, a square w_hr, batch_sizes
    with padded input, packed data without batch_sizes, batch_sizes of the wrong
    dtype or rank, an unknown nonlinearity) raises RuntimeError or ValueError --
    never a crash, never an answer."""
    case = data.draw(bad_op_calls(fault), label="case")
    show(case)
    _, t, bs = op_tensors(case)
    t, bs, nonlin = make_fault(case, t, bs)
    with pytest.raises(OP_ERRORS):
        call_op(case["cell"], t, bs, case["reverse"], nonlin)


@st.composite
def random_batch_sizes(draw):
    case = draw(op_cases())
    case["via"] = "op"
    case["packed"] = True
    sizes = draw(st.lists(st.integers(-1, 4), max_size=6))
    if draw(st.booleans()) and sizes:  # half of the lists made well-formed
        sizes = sorted((abs(s) or 1 for s in sizes), reverse=True)
    case["batch_sizes"] = sizes
    # data rows and h0 rows usually fitting batch_sizes, sometimes one off
    case["rows_delta"] = draw(st.sampled_from([0, 0, 0, -1, 1]))
    case["h0_rows_delta"] = draw(st.sampled_from([0, 0, 0, -1, 1]))
    return case


@fuzz_settings("test_op_random_batch_sizes")
@given(case=random_batch_sizes())
def test_op_random_batch_sizes(case):
    """Packed op input with an arbitrary batch_sizes list (and data / h0 rows that
    may not fit it): when batch_sizes is non-empty, positive, non-increasing, sums to
    the data's rows and starts with h0's rows, the op gives torch.nn's results for
    the same PackedSequence; otherwise it raises RuntimeError or ValueError."""
    show(case)
    module, t, _ = op_tensors(dict(case, packed=False))
    sizes = case["batch_sizes"]
    rows = max(sum(max(s, 0) for s in sizes) + case["rows_delta"], 0)
    N = max((sizes[0] if sizes else 0) + case["h0_rows_delta"], 0)
    g = torch.Generator().manual_seed(case["seed"] + 4)
    dt = case["dtype"]
    t["input"] = torch.randn(rows, case["I"], generator=g, dtype=torch.float64).to(dt)
    for k in ("h0", "c0"):
        if k in t:
            t[k] = torch.randn(N, t[k].shape[1], generator=g, dtype=torch.float64).to(dt)
    bs = torch.tensor(sizes, dtype=torch.int64)
    valid = (bool(sizes) and all(s > 0 for s in sizes)
             and all(a >= b for a, b in zip(sizes, sizes[1:]))
             and sum(sizes) == rows and sizes[0] == N)
    if not valid:
        with pytest.raises(OP_ERRORS):
            call_op(case["cell"], t, bs, case["reverse"])
        return
    ours = run_ours(case["cell"], t, bs, case["reverse"], case["use"])
    ref = run_nn(case["cell"], module, t, bs, case["reverse"], case["use"])
    assert_results_close(ours, ref, **tolerances(dt))


# ---- the backward ops, called directly -------------------------------------

#: one wrong argument of a direct backward-op call
BACKWARD_FAULTS = (
    "grad_output_shape", "grad_h_n_shape", "grad_c_n_shape", "output_shape",
    "workspace_shape", "output_and_grad_output_shape",
    "grad_output_dtype", "grad_h_n_dtype", "grad_c_n_dtype", "output_dtype", "workspace_dtype",
    "batch_sizes_sum",
)


def backward_args(cell, t, bs, reverse, grads):
    """(op, args) of the backward op matching a forward call; ``grads`` holds
    grad_output / grad_h_n / grad_c_n; the forward's saved results are computed
    here with the forward op."""
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        out, h_n, c_n, ws = ops.lstm_forward(*op_and_args(cell, t, bs, reverse)[1])
        return ops.lstm_backward, dict(
            grad_output=grads["grad_output"], grad_h_n=grads["grad_h_n"],
            grad_c_n=grads["grad_c_n"], input=t["input"], batch_sizes=bs, h0=t["h0"],
            c0=t["c0"], w_ih=t["w_ih"], w_hh=t["w_hh"], w_hr=t.get("w_hr"), output=out,
            workspace=ws, reverse=reverse, grad_cell_states=None, reset=None,
            record_norms=False, output_mask=[True, True, True])
    if cell == "gru":
        out, h_n, ws = ops.gru_forward(*op_and_args(cell, t, bs, reverse)[1])
        return ops.gru_backward, dict(
            grad_output=grads["grad_output"], grad_h_n=grads["grad_h_n"], input=t["input"],
            batch_sizes=bs, h0=t["h0"], w_ih=t["w_ih"], w_hh=t["w_hh"], output=out,
            workspace=ws, reverse=reverse, reset=None, record_norms=False,
            output_mask=[True, True, True])
    out, h_n = ops.rnn_forward(*op_and_args(cell, t, bs, reverse)[1])
    return ops.rnn_backward, dict(
        grad_output=grads["grad_output"], grad_h_n=grads["grad_h_n"], input=t["input"],
        batch_sizes=bs, h0=t["h0"], w_ih=t["w_ih"], w_hh=t["w_hh"], output=out,
        nonlinearity=nonlinearity(cell), reverse=reverse, grad_clip=0.0, reset=None,
        record_norms=False, output_mask=[True, True, True])


def _backward_cases_for(fault):
    kw = {}
    if fault is not None and "c_n" in fault:
        kw["cells"] = ("lstm", "lstm_proj")
    elif fault is not None and "workspace" in fault:
        kw["cells"] = ("lstm", "lstm_proj", "gru")
    if fault == "batch_sizes_sum":
        kw["packed"] = st.just(True)
    return st.tuples(op_cases(**kw), st.sampled_from([-1, 1])).map(
        lambda cd: dict(cd[0], via="op", use=None, fault=fault, delta=cd[1]))


def _schema_names(op):
    return [a.name for a in op.default._schema.arguments]


def direct_backward_call(case):
    """(expected gradients through autograd, backward op, its keyword arguments)."""
    cell, reverse = case["cell"], case["reverse"]
    _, t, bs = op_tensors(case)
    expected = run_ours(cell, t, bs, reverse)
    outs = [expected["output"], expected["h_n"]] + ([expected["c_n"]] if is_lstm(cell) else [])
    grads = dict(zip(("grad_output", "grad_h_n", "grad_c_n"), cotangents(outs)))
    op, kw = backward_args(cell, {k: v.detach() for k, v in t.items()}, bs, reverse, grads)
    assert list(kw) == _schema_names(op), (list(kw), _schema_names(op))
    return expected, op, kw


@fuzz_settings("test_op_backward_direct_call_matches_autograd")
@given(case=_backward_cases_for(None))
def test_op_backward_direct_call_matches_autograd(case):
    """torch.ops.gatedrnn.*_backward called directly with the forward's own output /
    workspace and the loss's output gradients returns what autograd returns through
    the forward op (any layout of the forward's arguments)."""
    show(case)
    expected, op, kw = direct_backward_call(case)
    res = op(*kw.values())
    names = ["grad_input", "grad_h0"] + (["grad_c0"] if is_lstm(case["cell"]) else []) + [
        "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh", "grad_w_hr"]
    # + step_norms, empty: the gradient-norm monitor was not asked for
    assert len(res) == len(names) - (0 if is_lstm(case["cell"]) else 1) + 1
    assert res[-1].shape == (0, 2 if is_lstm(case["cell"]) else 1)
    for name, got in zip(names, res):
        if name in expected:
            torch.testing.assert_close(got, expected[name], **tolerances(case["dtype"]),
                                       msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("fault", BACKWARD_FAULTS)
@fuzz_settings("test_op_backward_bad_arguments_raise")
@given(data=st.data())
def test_op_backward_bad_arguments_raise(fault, data):
    """A direct backward-op call with one argument of the wrong shape or dtype (or
    batch_sizes that no longer fit the input) raises RuntimeError or ValueError --
    it never reads out of bounds, and never returns an answer."""
    case = data.draw(_backward_cases_for(fault), label="case")
    show(case)
    _, op, kw = direct_backward_call(case)
    key, _, what = fault.rpartition("_")
    if fault == "output_and_grad_output_shape":
        # consistent with each other, but not with the input
        shape = list(kw["output"].shape)
        shape[0] = max(shape[0] + case["delta"], 0) or shape[0] + 1
        kw["output"] = torch.randn(shape, dtype=torch.float64).to(kw["output"].dtype)
        kw["grad_output"] = torch.randn(shape, dtype=torch.float64).to(kw["output"].dtype)
    elif key == "batch_sizes":
        kw["batch_sizes"] = kw["batch_sizes"].clone()
        kw["batch_sizes"][-1] += case["delta"]
    else:
        x = kw[key]
        if what == "shape":
            shape = list(x.shape)
            shape[0] = max(shape[0] + case["delta"], 0)
            if shape[0] == x.shape[0]:
                shape[0] += 1
            kw[key] = torch.randn(shape, dtype=torch.float64).to(x.dtype)
        else:
            kw[key] = x.to(torch.float32 if x.dtype == torch.float64 else torch.float64)
    with pytest.raises(OP_ERRORS):
        op(*kw.values())
