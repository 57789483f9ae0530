"""Everywhere torch.nn's recurrent modules go, ours go: double backward, TorchScript
(trace and script), autocast, torch.export with save/load, and AOTInductor (ONNX export is
in test_onnx.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from _dropin_helpers import CELLS, H, I, N, P, T, is_lstm, make_pair
from conftest import as_leaves, build_case, op_and_args

pytestmark = pytest.mark.integration

# --------------------------------------------------------------------------
# double backward
# --------------------------------------------------------------------------


def _op_outputs(cell, leaves, batch_sizes, reverse):
    op, args = op_and_args(cell, leaves, batch_sizes, reverse)
    outs = op(*args)
    return outs[:3] if is_lstm(cell) else outs[:2]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_gradgradcheck(cell, packed, reverse):
    _, tensors, batch_sizes = build_case(cell, 3, 3, 3, 4, 2, dtype=torch.float64,
                                         packed=packed, reverse=reverse)
    if cell == "rnn_relu":
        # keep pre-activations away from relu's kink, where finite differences break
        tensors["input"] = tensors["input"].abs() + 0.5
    names = [k for k, v in tensors.items() if isinstance(v, torch.Tensor)]
    leaves = as_leaves(tensors)

    def f(*values):
        return _op_outputs(cell, {**leaves, **dict(zip(names, values))}, batch_sizes, reverse)

    args = tuple(leaves[k] for k in names)
    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


def _gradient_penalty(module, x, lengths):
    """WGAN-GP style: the gradient of a loss w.r.t. the input, squared, differentiated
    w.r.t. the parameters."""
    x = x.detach().requires_grad_()
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
    out, hx = module(inp)
    out = out.data if lengths is not None else out
    states = hx if isinstance(hx, tuple) else (hx,)
    loss = out.sin().sum() + sum((s * s).sum() for s in states)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    penalty = (g * g).sum()
    return [penalty.detach(), *torch.autograd.grad(penalty, list(module.parameters()))]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_gradient_penalty_equals_torch_nn(cell, packed):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    x = torch.randn(T, N, I, dtype=torch.float64)
    lengths = torch.tensor([T, T - 2, 1]) if packed else None
    expected = _gradient_penalty(ref, x, lengths)
    got = _gradient_penalty(ours, x, lengths)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_hessian_vector_product_equals_torch_nn(cell):
    ref, ours = make_pair(cell)
    x = torch.randn(T, N, I, dtype=torch.float64)
    v = [torch.randn_like(p) for p in ref.parameters()]

    def hvp(module):
        params = list(module.parameters())
        loss = module(x)[0].pow(2).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(grads, params, v)

    for a, b in zip(hvp(ours), hvp(ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _backward_op_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("gatedrnn::") and
               e.name.endswith("_backward"))


@pytest.mark.parametrize("cell", CELLS)
def test_first_order_backward_runs_the_fused_op(cell):
    """The reference path is only for create_graph=True; plain backward stays fused."""
    _, ours = make_pair(cell, num_layers=2)
    x = torch.randn(T, N, I, dtype=torch.float64, requires_grad=True)
    assert _backward_op_calls(lambda: ours(x)[0].sum().backward()) == 2
    assert _backward_op_calls(
        lambda: torch.autograd.grad(ours(x)[0].sum(), x, create_graph=True)) == 0


@pytest.mark.parametrize("cell", CELLS)
def test_differentiating_a_backward_op_directly_raises(cell):
    _, tensors, batch_sizes = build_case(cell, 3, 2, 3, 4, 2, dtype=torch.float64)
    leaves = as_leaves(tensors)
    op, args = op_and_args(cell, leaves, batch_sizes, False)
    outs = op(*args)
    g = [torch.ones_like(o) for o in (outs[:3] if is_lstm(cell) else outs[:2])]
    t = leaves
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        call = lambda: ops.lstm_backward(*g, t["input"], None, t["h0"], t["c0"], t["w_ih"],  # noqa: E731
                                         t["w_hh"], t.get("w_hr"), outs[0], outs[3], False)
    elif cell == "gru":
        call = lambda: ops.gru_backward(*g, t["input"], None, t["h0"], t["w_ih"], t["w_hh"],  # noqa: E731
                                        outs[0], outs[2], False)
    else:
        call = lambda: ops.rnn_backward(*g, t["input"], None, t["h0"], t["w_ih"], t["w_hh"],  # noqa: E731
                                        outs[0], cell[4:], False)
    with pytest.raises(RuntimeError, match=r"computes first-order gradients and cannot itself "
                                           r"be differentiated.*create_graph=True"):
        call()
    with torch.no_grad():
        call()  # not differentiated: runs


def test_forward_mode_ad_and_functorch_refuse():
    """No jvp rule and no functorch support yet: both refuse, neither returns zeros."""
    _, ours = make_pair("lstm")
    x = torch.randn(T, N, I, dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, torch.randn_like(x))
        with pytest.raises(NotImplementedError, match="jvp"):
            ours(dual)
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda v: ours(v)[0].sum())(x)


# --------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------


class Tagger(torch.nn.Module):
    """A small model with recurrent layers inside, as users have them."""

    def __init__(self, cell):
        super().__init__()
        self.embed = torch.nn.Linear(I, 8)
        self.rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
            8, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.rnn(torch.tanh(self.embed(x)))[0])


def _tagger_pair(cell, dtype=torch.float32):
    torch.manual_seed(0)
    ref = Tagger(cell).to(dtype)
    ours = gatedrnn.convert(Tagger(cell).to(dtype))
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _outputs_and_grads(model, x, params=None):
    """model(x) and the gradients of a loss w.r.t. x and params (default: the model's)."""
    x = x.detach().requires_grad_()
    y = model(x)
    params = list(model.parameters()) if params is None else params
    grads = torch.autograd.grad(y.pow(2).sum(), [x, *params])
    return [y.detach(), *grads]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("traced_under", ["grad", "no_grad"])
def test_jit_trace_matches_eager(cell, traced_under, tmp_path):
    _, ours = _tagger_pair(cell, torch.float64)
    example = torch.randn(2, T, I, dtype=torch.float64)
    # trace's check (on by default) re-traces under no_grad and raises if the graphs differ;
    # its TracerWarnings about shape checks are torch.nn's own too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if traced_under == "no_grad":
            with torch.no_grad():
                traced = torch.jit.trace(ours, (example,))
        else:
            traced = torch.jit.trace(ours, (example,))
    torch.jit.save(traced, tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    x = torch.randn(3, T, I, dtype=torch.float64)  # another batch size
    expected = _outputs_and_grads(ours, x)
    for model in (traced, loaded):
        for a, b in zip(_outputs_and_grads(model, x), expected):
            assert torch.equal(a, b)


class Holder(torch.nn.Module):
    """One recurrent module inside a model: how torch.nn's RNNs script (alone, their
    overloaded forward leaves the scripted module without one)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("cell", CELLS)
def test_jit_script_runs_torch_nn_on_shared_parameters(cell):
    ref, ours = make_pair(cell, num_layers=2, bidirectional=True)
    holder = Holder(ours)
    with pytest.warns(UserWarning, match=r"runs torch\.nn\.(LSTM|GRU|RNN) on the same "
                                         r"parameters.*gatedrnn\.convert\(model\) swaps it back"):
        scripted = torch.jit.script(holder)
    for name, p in ours.named_parameters():
        assert getattr(scripted.rnn, name).data_ptr() == p.data_ptr(), name
    x = torch.randn(T, N, I, dtype=torch.float64)
    params = list(ours.parameters())
    for a, b in zip(_outputs_and_grads(scripted, x, params),
                    _outputs_and_grads(Holder(ref), x, list(ref.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # our module object is unchanged; torch.jit.script put the twin in the model, and
    # convert swaps it back
    assert isinstance(ours, gatedrnn.modules._base.FusedRNNMixin)
    assert type(holder.rnn) is type(ref)
    gatedrnn.convert(holder)
    assert isinstance(holder.rnn, gatedrnn.modules._base.FusedRNNMixin)
    assert holder.rnn.weight_ih_l0 is ours.weight_ih_l0


def test_jit_script_of_a_converted_model():
    ref, ours = _tagger_pair("lstm", torch.float64)
    with pytest.warns(UserWarning, match="torch.jit.script"):
        scripted = torch.jit.script(ours)
    x = torch.randn(2, T, I, dtype=torch.float64)
    torch.testing.assert_close(scripted(x), ref(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_jit_script_of_a_lone_module_does_what_torch_nns_does(cell):
    def outcome(module):
        try:
            return torch.jit.script(module)(torch.randn(T, N, I, dtype=torch.float64))[0].shape
        except Exception as error:  # noqa: BLE001  (compared below)
            return type(error)

    ref, ours = make_pair(cell)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert outcome(ours) == outcome(ref)


# --------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------

def _torch_nn_under_autocast(ref, x, dtype, hx=None):
    """torch.nn's (output, states) under CPU autocast, their dtypes, and whether it computed
    them. Its LSTM oneDNN path (padded, no projection) raises on CPUs without
    bfloat16/float16 support (seen on an AMD EPYC Zen 3 with torch 2.4.1, 2.13.0 and
    2.14.1); on a CPU with it, that path gives everything in the autocast dtype."""
    try:
        with torch.autocast("cpu", dtype=dtype):
            out, states = ref(x) if hx is None else ref(x, hx)
    except RuntimeError as error:
        assert "primitive descriptor" in str(error)
        return None, (dtype,) * (3 if isinstance(ref, torch.nn.LSTM) else 2)
    states = states if isinstance(states, tuple) else (states,)
    out = out.data if not isinstance(out, torch.Tensor) else out
    return (out, *states), tuple(t.dtype for t in (out, *states))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_autocast_gives_torch_nn_dtypes(cell, packed, dtype):
    ref, ours = make_pair(cell, dtype=torch.float32, num_layers=2)
    x = torch.randn(T, N, I)
    inp = pack_padded_sequence(x, torch.tensor([T, T - 1, 2])) if packed else x
    expected, expected_dtypes = _torch_nn_under_autocast(ref, inp, dtype)
    x.requires_grad_()
    inp = pack_padded_sequence(x, torch.tensor([T, T - 1, 2])) if packed else x
    with torch.autocast("cpu", dtype=dtype):
        out, hx = ours(inp)
    data = out.data if packed else out
    states = hx if isinstance(hx, tuple) else (hx,)
    assert tuple(t.dtype for t in (data, *states)) == expected_dtypes
    with torch.no_grad():
        full = ours(inp)[0]
    full = full.data if packed else full
    # within the autocast dtype's rounding of the float32 result (and of torch.nn's)
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=3e-3, atol=3e-3)
    torch.testing.assert_close(data.float(), full, **tol)
    if expected is not None:
        torch.testing.assert_close(data.float(), expected[0].float(), rtol=4e-2, atol=4e-2)
    data.float().sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())


def _autocast_cases():
    """(cell, autocast dtype, module dtype, state dtypes or None, input dtype, batch, packed)
    of every mix torch.nn takes under CPU autocast: float32 and bfloat16 modules, inputs and
    states, batches of 3 and 0 (not packed), padded and packed. Under float16 autocast
    torch.nn refuses bfloat16 tensors (its stack and cat find two reduced dtypes)."""
    f32, bf16 = torch.float32, torch.bfloat16
    for cell in ("lstm", "lstm_proj", "gru", "rnn_tanh"):
        states = [(f32, f32), (bf16, bf16), (f32, bf16), (bf16, f32)] if is_lstm(cell) else [
            (f32,), (bf16,)]
        for low in (bf16, torch.float16):
            for module in (f32, bf16):
                for state in [None, *states]:
                    for x in (f32, bf16):
                        if low == torch.float16 and bf16 in (module, x, *(state or ())):
                            continue
                        for batch, packed in ((3, False), (0, False), (3, True)):
                            yield cell, low, module, state, x, batch, packed


def _case_id(case):
    cell, low, module, state, x, batch, packed = case
    short = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    states = "-".join(short[d] for d in state) if state else "default"
    return (f"{cell}-autocast_{short[low]}-module_{short[module]}-states_{states}-"
            f"x_{short[x]}-n{batch}{'-packed' if packed else ''}")


@pytest.mark.parametrize("case", list(_autocast_cases()), ids=_case_id)
def test_cpu_autocast_dtypes_and_values_as_torch_nn_for_every_mix(case):
    """Under CPU autocast torch.nn's dtypes come from its operators' casts and from type
    promotion with the states it is given (ops/lstm.py, _cpu_autocast_dtypes): the LSTM's
    oneDNN path gives the autocast dtype, its other paths (packed, projected, empty) and the
    GRU the states' promoted dtype (a projected h: the autocast dtype). Ours give the same
    dtypes, and values within the rounding of torch.nn's, and gradients of the parameters'
    dtype."""
    cell, low, module_dtype, state_dtypes, x_dtype, batch, packed = case
    ref, ours = make_pair(cell, dtype=module_dtype, num_layers=2)
    torch.manual_seed(1)
    x = torch.randn(T, batch, I, dtype=x_dtype)
    lengths = torch.tensor([T, T - 1, 2])
    hx = None
    if state_dtypes is not None:
        sizes = [P if cell == "lstm_proj" else H, H][:len(state_dtypes)]
        hx = tuple(0.5 * torch.randn(2, batch, s, dtype=d) for s, d in zip(sizes, state_dtypes))
        hx = hx if is_lstm(cell) else hx[0]

    def run(module):
        inp = pack_padded_sequence(x, lengths) if packed else x
        with torch.autocast("cpu", dtype=low):
            out, states = module(inp) if hx is None else module(inp, hx)
        states = states if isinstance(states, tuple) else (states,)
        return (out.data if packed else out, *states)

    expected, expected_dtypes = _torch_nn_under_autocast(
        ref, pack_padded_sequence(x, lengths) if packed else x, low, hx)
    got = run(ours)
    assert tuple(t.dtype for t in got) == expected_dtypes
    if expected is not None:
        for ours_t, ref_t in zip(got, expected):
            torch.testing.assert_close(ours_t.float(), ref_t.float(), rtol=4e-2, atol=4e-2)
    sum(t.float().sum() for t in got).backward()
    for p in ours.parameters():
        assert p.grad.dtype == module_dtype and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("cell", CELLS)
def test_cpu_autocast_of_a_bfloat16_module(cell):
    """A module already in bfloat16 (layers passing float32 to each other inside), under
    CPU autocast: torch.nn's output dtype, and the values it gives without autocast."""
    ref, ours = make_pair(cell, dtype=torch.bfloat16, num_layers=2)
    x = torch.randn(T, N, I, dtype=torch.bfloat16)
    _, expected_dtypes = _torch_nn_under_autocast(ref, x, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x)[0]
    assert out.dtype == expected_dtypes[0]
    torch.testing.assert_close(out.float(), ours(x)[0].float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("c0_dtype", [None, torch.float64, torch.float32],
                         ids=["default", "c0_f64", "c0_f32"])
def test_cpu_autocast_leaves_float64_alone(c0_dtype):
    """A float64 LSTM under CPU autocast: float64 results, those it gives without autocast,
    as torch.nn's; a float32 c_0 (which torch.nn promotes to float64) too."""
    ref, ours = make_pair("lstm", dtype=torch.float64)
    x = torch.randn(T, N, I, dtype=torch.float64)
    hx = None if c0_dtype is None else (torch.randn(1, N, H, dtype=torch.float64),
                                        torch.randn(1, N, H, dtype=c0_dtype))
    args = (x,) if hx is None else (x, hx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, (h_n, c_n) = ours(*args)
        ref_out, (ref_h, ref_c) = ref(*args)
    assert out.dtype == h_n.dtype == c_n.dtype == ref_out.dtype == ref_c.dtype == torch.float64
    torch.testing.assert_close(out, ours(*args)[0])
    torch.testing.assert_close((out, h_n, c_n), (ref_out, ref_h, ref_c))


@pytest.mark.parametrize("op", ["lstm_forward", "gru_forward", "rnn_forward"])
@pytest.mark.parametrize("key", ["AutocastCPU", "AutocastCUDA"])
def test_autocast_kernels_are_registered(op, key):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"gatedrnn::{op}", key)


def test_cuda_autocast_casts_as_cudnn_does():
    """Under torch.autocast("cuda"), in float16 whatever the autocast dtype (the kernel
    does not read it), as torch.nn's cuDNN RNNs (aten/src/ATen/cudnn/AutocastRNN.cpp);
    float64, integer tensors and other arguments as given. (The rule only: no GPU here
    runs the AutocastCUDA kernel.)"""
    from gatedrnn.ops._common import cuda_autocast_args

    args = (torch.randn(2, 3), torch.randn(3, dtype=torch.bfloat16), torch.tensor([2, 1]),
            torch.randn(2, dtype=torch.float64), None, True, "tanh")
    cast = cuda_autocast_args(args)
    assert [a.dtype for a in cast[:4]] == [torch.float16, torch.float16, torch.int64,
                                           torch.float64]
    assert cast[4:] == args[4:]
    torch.testing.assert_close(cast[0], args[0].half())


# --------------------------------------------------------------------------
# torch.export and AOTInductor
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_export_save_load_runs(cell, tmp_path):
    _, ours = _tagger_pair(cell)
    x = torch.randn(2, T, I)
    program = torch.export.export(ours.eval(), (x,))
    names = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert any(name.startswith("gatedrnn.") for name in names), names
    torch.export.save(program, tmp_path / "model.pt2")
    loaded = torch.export.load(tmp_path / "model.pt2")
    with torch.no_grad():
        torch.testing.assert_close(loaded.module()(x), ours(x), rtol=0, atol=0)


def test_aoti_compile_and_package_runs(tmp_path):
    _, ours = _tagger_pair("lstm")
    x = torch.randn(2, T, I)
    program = torch.export.export(ours.eval(), (x,))
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "m.pt2"))
    runner = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        torch.testing.assert_close(runner(x), ours(x), rtol=1e-5, atol=1e-5)
