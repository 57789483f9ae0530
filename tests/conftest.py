"""Shared fixtures and helpers for the gatedrnn test suite.

The helpers here build torch.nn reference modules, random (padded or packed)
inputs, call the registered ``torch.ops.gatedrnn.*`` forward ops, and run a
forward + backward pass through either side so that outputs, final states and
every gradient can be compared.

Test modules import the helpers with ``from conftest import ...``; this file
puts its own directory on ``sys.path`` so that works under every pytest
import mode.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn  # noqa: F401  (importing registers torch.ops.gatedrnn.*)

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


# --------------------------------------------------------------------------
# pytest hooks and fixtures
# --------------------------------------------------------------------------


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "cuda: needs a CUDA GPU; skipped when torch.cuda.is_available() is False",
    )


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="CUDA is not available")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# --------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------

#: (major, minor) of the installed torch.
TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])

#: Dynamo of older torch (seen with 2.4.1; releases 2.5 to 2.12 not tried) cannot trace the
#: module's forward (its call of check_forward_args) nor the functional's batch size read
#: from packed input without hx (Tensor.item); gatedrnn's ops themselves trace there.
OLD_DYNAMO = pytest.mark.xfail(TORCH_VERSION < (2, 13), strict=False,
                               reason="Dynamo of torch < 2.13 cannot trace this")

#: Every cell variant under test. "lstm_proj" is an LSTM with proj_size > 0.
CELLS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")
DTYPES = (torch.float32, torch.float64)

#: (op-argument name, torch.nn parameter stem)
WEIGHT_NAMES = (
    ("w_ih", "weight_ih"),
    ("w_hh", "weight_hh"),
    ("b_ih", "bias_ih"),
    ("b_hh", "bias_hh"),
    ("w_hr", "weight_hr"),
)


def is_lstm(cell: str) -> bool:
    return cell.startswith("lstm")


def num_gates(cell: str) -> int:
    return 4 if is_lstm(cell) else 3 if cell == "gru" else 1


def nonlinearity(cell: str) -> str:
    return "relu" if cell == "rnn_relu" else "tanh"


def tolerances(dtype: torch.dtype) -> dict:
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    return dict(rtol=1e-5, atol=1e-5)


def make_nn(
    cell: str,
    input_size: int,
    hidden_size: int,
    proj_size: int = 0,
    *,
    bias: bool = True,
    bidirectional: bool = False,
    batch_first: bool = False,
    dtype: torch.dtype = torch.float64,
    device="cpu",
) -> torch.nn.Module:
    """A single-layer torch.nn.LSTM/GRU/RNN for ``cell``."""
    kw = dict(
        bias=bias,
        bidirectional=bidirectional,
        batch_first=batch_first,
        dtype=dtype,
        device=device,
    )
    if is_lstm(cell):
        return torch.nn.LSTM(
            input_size, hidden_size, proj_size=proj_size if cell == "lstm_proj" else 0, **kw
        )
    if cell == "gru":
        return torch.nn.GRU(input_size, hidden_size, **kw)
    return torch.nn.RNN(input_size, hidden_size, nonlinearity=nonlinearity(cell), **kw)


def nn_weights(module: torch.nn.Module, reverse: bool = False) -> dict:
    """The layer-0 weights of ``module`` (reverse direction if ``reverse``),
    keyed by op-argument name; absent ones are left out."""
    suffix = "_l0_reverse" if reverse else "_l0"
    out = {}
    for key, stem in WEIGHT_NAMES:
        p = getattr(module, stem + suffix, None)
        if p is not None:
            out[key] = p
    return out


# --------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------


def random_lengths(T: int, N: int) -> list:
    """Non-increasing sequence lengths: the longest is T, the shortest is 1
    when N > 1, the others random in [1, T]."""
    if N == 1:
        return [T]
    middle = torch.randint(1, T + 1, (N - 2,)).tolist()
    return sorted([T] + middle + [1], reverse=True)


def make_input(T, N, I, *, packed: bool, dtype=torch.float64, device="cpu"):
    """Returns (data, batch_sizes, lengths).

    Padded: data is [T, N, I], batch_sizes and lengths are None.
    Packed: data is PackedSequence.data [R, I] built by pack_padded_sequence
    (enforce_sorted=True), batch_sizes the 1-D int64 CPU tensor.
    """
    x = torch.randn(T, N, I, dtype=dtype, device=device)
    if not packed:
        return x, None, None
    lengths = random_lengths(T, N)
    ps = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=True)
    assert ps.sorted_indices is None
    return ps.data.contiguous(), ps.batch_sizes, lengths


def build_case(
    cell,
    T,
    N,
    I,
    H,
    P=None,
    *,
    bias=True,
    dtype=torch.float64,
    reverse=False,
    packed=False,
    device="cpu",
    seed=0,
):
    """A torch.nn reference module plus the tensors for the matching op call.

    The module is bidirectional when ``reverse`` (its reverse direction is the
    reference for reverse=True). Returns (module, tensors, batch_sizes) where
    ``tensors`` maps 'input', 'h0', ('c0'), 'w_ih', 'w_hh', ('b_ih', 'b_hh',
    'w_hr') to plain tensors (copies of the module's weights).
    """
    torch.manual_seed(seed)
    if cell != "lstm_proj":
        P = H
    module = make_nn(
        cell, I, H, P if cell == "lstm_proj" else 0,
        bias=bias, bidirectional=reverse, dtype=dtype, device=device,
    )
    data, batch_sizes, _ = make_input(T, N, I, packed=packed, dtype=dtype, device=device)
    tensors = {"input": data, "h0": 0.5 * torch.randn(N, P, dtype=dtype, device=device)}
    if is_lstm(cell):
        tensors["c0"] = 0.5 * torch.randn(N, H, dtype=dtype, device=device)
    for k, p in nn_weights(module, reverse).items():
        tensors[k] = p.detach().clone()
    return module, tensors, batch_sizes


# --------------------------------------------------------------------------
# running the ops and the reference
# --------------------------------------------------------------------------


def op_forward(cell, input, batch_sizes, h0, c0, w: dict, reverse: bool):
    """Call the registered forward op; return only the differentiable outputs
    (output, h_n[, c_n]) -- never the workspace."""
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        out, h_n, c_n, _ws = ops.lstm_forward(
            input, batch_sizes, h0, c0, w["w_ih"], w["w_hh"],
            w.get("b_ih"), w.get("b_hh"), w.get("w_hr"), reverse,
        )
        return out, h_n, c_n
    if cell == "gru":
        out, h_n, _ws = ops.gru_forward(
            input, batch_sizes, h0, w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"), reverse
        )
        return out, h_n
    out, h_n = ops.rnn_forward(
        input, batch_sizes, h0, w["w_ih"], w["w_hh"], w.get("b_ih"), w.get("b_hh"),
        nonlinearity(cell), reverse,
    )
    return out, h_n


def functional_forward(cell, input, hx, w: dict, *, batch_sizes=None, reverse=False):
    """Call gatedrnn.functional; return (output, h_n[, c_n])."""
    F = gatedrnn.functional
    kw = dict(w_ih=w["w_ih"], w_hh=w["w_hh"], b_ih=w.get("b_ih"), b_hh=w.get("b_hh"),
              batch_sizes=batch_sizes, reverse=reverse)
    if is_lstm(cell):
        out, (h_n, c_n) = F.lstm(input, hx, w_hr=w.get("w_hr"), **kw)
        return out, h_n, c_n
    if cell == "gru":
        return tuple(F.gru(input, hx, **kw))
    return tuple(F.rnn(input, hx, nonlinearity=nonlinearity(cell), **kw))


OUTPUT_NAMES = ("output", "h_n", "c_n")


def cotangents(outs, seed=1234):
    """Deterministic random weights for a scalar loss over ``outs``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]


def loss_and_grads(outs, leaves: dict, use=None):
    """sum_i <outs[i], random_i> over the outputs named in ``use`` (default:
    all), then gradients w.r.t. every leaf. Returns a dict with the outputs
    ('output', 'h_n', 'c_n') and gradients ('grad_<leaf name>')."""
    names = OUTPUT_NAMES[: len(outs)]
    use = names if use is None else use
    cots = cotangents(outs)
    loss = sum((o * c).sum() for n, o, c in zip(names, outs, cots) if n in use)
    keys = list(leaves)
    grads = torch.autograd.grad(loss, [leaves[k] for k in keys], allow_unused=True)
    res = {n: o.detach() for n, o in zip(names, outs)}
    for k, g in zip(keys, grads):
        res["grad_" + k] = torch.zeros_like(leaves[k]) if g is None else g
    return res


def as_leaves(tensors: dict) -> dict:
    """Leaf tensors requiring grad that keep the strides of ``tensors``."""
    return {k: v.detach().requires_grad_() for k, v in tensors.items() if v is not None}


def run_ours(cell, tensors, batch_sizes, reverse, use=None):
    leaves = as_leaves(tensors)
    outs = op_forward(cell, leaves["input"], batch_sizes, leaves["h0"], leaves.get("c0"),
                      leaves, reverse)
    return loss_and_grads(outs, leaves, use)


def run_nn(cell, module, tensors, batch_sizes, reverse, use=None):
    """Run a torch.nn module on the same data and return the same dict as
    run_ours, for its forward direction (reverse=False, unidirectional module)
    or its reverse direction (reverse=True, bidirectional module; the forward
    direction's outputs do not enter the loss)."""
    d = 1 if reverse else 0

    def full_state(s):
        s = s.detach().clone()
        s = torch.stack([torch.zeros_like(s), s]) if reverse else s.unsqueeze(0)
        return s.requires_grad_()

    x = tensors["input"].detach().clone().requires_grad_()
    leaves = {"input": x, "h0": full_state(tensors["h0"])}
    if is_lstm(cell):
        leaves["c0"] = full_state(tensors["c0"])
        hx = (leaves["h0"], leaves["c0"])
    else:
        hx = leaves["h0"]
    inp = PackedSequence(x, batch_sizes) if batch_sizes is not None else x
    out, h_n = module(inp, hx)
    if batch_sizes is not None:
        out = out.data
    if is_lstm(cell):
        h_n, c_n = h_n
    P = h_n.shape[-1]
    outs = [out[..., d * P:(d + 1) * P], h_n[d]]
    if is_lstm(cell):
        outs.append(c_n[d])
    leaves.update(nn_weights(module, reverse))
    res = loss_and_grads(outs, leaves, use)
    res["grad_h0"] = res["grad_h0"][d]
    if is_lstm(cell):
        res["grad_c0"] = res["grad_c0"][d]
    return res


def assert_results_close(ours: dict, ref: dict, scale_atol: bool = False, **tol):
    """scale_atol: each tensor's atol is multiplied by its largest |value| (if above 1), for
    float32 sums of large terms, whose rounding grows with the terms."""
    assert set(ours) == set(ref), (sorted(ours), sorted(ref))
    for k in ref:
        assert ours[k].shape == ref[k].shape, (k, ours[k].shape, ref[k].shape)
        assert ours[k].dtype == ref[k].dtype, (k, ours[k].dtype, ref[k].dtype)
        tol_k = dict(tol)
        if scale_atol and ref[k].numel() > 0:
            tol_k["atol"] = tol["atol"] * max(1.0, ref[k].abs().max().item())
        torch.testing.assert_close(ours[k], ref[k], **tol_k, msg=lambda m, k=k: f"{k}: {m}")


def op_and_args(cell, tensors: dict, batch_sizes, reverse: bool):
    """(forward op overload packet, positional args) for a direct op call."""
    t = tensors
    ops = torch.ops.gatedrnn
    if is_lstm(cell):
        return ops.lstm_forward, (
            t["input"], batch_sizes, t["h0"], t["c0"], t["w_ih"], t["w_hh"],
            t.get("b_ih"), t.get("b_hh"), t.get("w_hr"), reverse,
        )
    if cell == "gru":
        return ops.gru_forward, (
            t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"], t.get("b_ih"), t.get("b_hh"),
            reverse,
        )
    return ops.rnn_forward, (
        t["input"], batch_sizes, t["h0"], t["w_ih"], t["w_hh"], t.get("b_ih"), t.get("b_hh"),
        nonlinearity(cell), reverse,
    )


# --------------------------------------------------------------------------
# reduced precision: error against float64 at most 2x torch.nn's
# --------------------------------------------------------------------------


def relu_reference_with_masks(tensors, batch_sizes, reverse, output):
    """run_ours's results for the RNN-relu computed in float64 (tensors as given), except
    that each relu takes the branch the forward that gave `output` took: the identity where
    that output is > 0, zero elsewhere."""
    leaves = as_leaves({k: v.double() for k, v in tensors.items()})
    x, h = leaves["input"], leaves["h0"]
    H = leaves["w_hh"].shape[0]
    rows = x if batch_sizes is not None else x.reshape(-1, x.shape[-1])
    sizes = batch_sizes.tolist() if batch_sizes is not None else [x.shape[1]] * x.shape[0]
    offsets = [sum(sizes[:t]) for t in range(len(sizes))]
    mask = (output.reshape(-1, H) > 0).double()
    outs = [None] * len(sizes)
    for t in (reversed(range(len(sizes))) if reverse else range(len(sizes))):
        n, off = sizes[t], offsets[t]
        pre = rows[off:off + n] @ leaves["w_ih"].t() + h[:n] @ leaves["w_hh"].t()
        if "b_ih" in leaves:
            pre = pre + leaves["b_ih"] + leaves["b_hh"]
        outs[t] = pre * mask[off:off + n]
        h = torch.cat([outs[t], h[n:]])
    out = torch.cat(outs)
    if batch_sizes is None:
        out = out.reshape(x.shape[0], x.shape[1], H)
    return loss_and_grads([out, h], leaves)


def assert_low_precision_within_2x_torch_nn(cell, dtype, shape, packed, reverse, device="cpu"):
    """Outputs, final states and every gradient of ours in `dtype` within 2x torch.nn's
    error (cuDNN's, oneDNN's) against a float64 reference (plus one unit of rounding at
    the tensor's scale), on `device`."""
    T, N, I, H, P = shape
    module, tensors, batch_sizes = build_case(
        cell, T, N, I, H, P, dtype=torch.float64, reverse=reverse, packed=packed, device=device
    )
    # Round everything to the low dtype once; the float64 reference runs on
    # exactly those values, so only the computation's own error is measured.
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).to(torch.float64))
    rounded = {k: v.to(dtype).to(torch.float64) for k, v in tensors.items()}
    ref = run_nn(cell, module, rounded, batch_sizes, reverse)

    low = {k: v.to(dtype) for k, v in rounded.items()}
    ours = run_ours(cell, low, batch_sizes, reverse)
    module.to(dtype)  # in place
    theirs = run_nn(cell, module, low, batch_sizes, reverse)
    ref_ours = ref_theirs = ref
    if cell == "rnn_relu":
        # relu's derivative jumps at 0: where rounding puts a pre-activation within its error
        # of 0 on the other side than float64 does, the gradient through it is a whole
        # factor off, for torch.nn as for us (on an H200, bf16, one such element made ours
        # 13x torch.nn's error in grad_h0 while all else agreed). So each side is measured
        # against float64 run through the relu branches its own forward took: rounding
        # error, not the luck of which elements flip.
        ref_ours = relu_reference_with_masks(rounded, batch_sizes, reverse, ours["output"])
        ref_theirs = relu_reference_with_masks(rounded, batch_sizes, reverse, theirs["output"])

    eps = torch.finfo(dtype).eps
    for k in ref:
        r = ref[k].double()
        e_ours = (ours[k].double() - ref_ours[k].double()).abs().max().item()
        e_nn = (theirs[k].double() - ref_theirs[k].double()).abs().max().item()
        scale = max(1.0, r.abs().max().item())
        assert ours[k].dtype == dtype, k
        assert e_ours <= 2 * e_nn + eps * scale, (
            f"{k}: error {e_ours:.3g} vs torch.nn {e_nn:.3g} (scale {scale:.3g})")
