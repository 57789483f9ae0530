"""Helpers for the drop-in parity tests (test_dropin_*.py).

They build a torch.nn reference module and the matching gatedrnn module with
identical weights, build inputs of every kind the torch.nn modules accept
(padded, packed sorted / unsorted, unbatched), run forward + backward through
either side with the same loss, and compare outputs, final states and every
gradient (input, each named parameter, and hx when given).

This module is imported by the test files (``from _dropin_helpers import ...``)
and by the DistributedDataParallel worker processes, so it must not depend on
pytest fixtures.
"""

from __future__ import annotations

import os
import sys

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

#: Every cell variant; "lstm_proj" is an LSTM with proj_size > 0.
CELLS = ("lstm", "lstm_proj", "gru", "rnn_tanh", "rnn_relu")
#: Every input kind the torch.nn modules take.
KINDS = ("padded", "packed_sorted", "packed_unsorted", "unbatched")

# Small default sizes: T steps, N batch, I input features, H hidden, P projection.
T, N, I, H, P = 5, 3, 4, 6, 3

NN_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}
OUR_CLASSES = {"lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "rnn": gatedrnn.RNN}


def family(cell: str) -> str:
    return "lstm" if cell.startswith("lstm") else "gru" if cell == "gru" else "rnn"


def is_lstm(cell: str) -> bool:
    return family(cell) == "lstm"


def cell_kwargs(cell: str, hidden_size: int = H, proj_size: int = P) -> dict:
    """Constructor keywords that select the cell variant."""
    if cell == "lstm_proj":
        return {"proj_size": proj_size}
    if cell == "rnn_tanh":
        return {"nonlinearity": "tanh"}
    if cell == "rnn_relu":
        return {"nonlinearity": "relu"}
    return {}


def make_module(cell: str, ours: bool, input_size: int = I, hidden_size: int = H, **kw):
    cls = (OUR_CLASSES if ours else NN_CLASSES)[family(cell)]
    kw = {**cell_kwargs(cell), **kw}
    return cls(input_size, hidden_size, **kw)


def make_pair(cell: str, input_size: int = I, hidden_size: int = H, *, seed: int = 0,
              dtype=torch.float64, **kw):
    """(torch.nn module, gatedrnn module) with the torch.nn module's weights copied
    into ours through load_state_dict."""
    torch.manual_seed(seed)
    ref = make_module(cell, False, input_size, hidden_size, dtype=dtype, **kw)
    ours = make_module(cell, True, input_size, hidden_size, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def state_sizes(module) -> list:
    """Feature sizes of the states: [P or H, H] for LSTM, [H] otherwise."""
    if module.mode == "LSTM":
        return [module.proj_size or module.hidden_size, module.hidden_size]
    return [module.hidden_size]


def make_hx(module, batch, *, batched=True, dtype=torch.float64, seed=7):
    """A random initial state for ``module`` (tuple for LSTM)."""
    g = torch.Generator().manual_seed(seed)
    layers = module.num_layers * (2 if module.bidirectional else 1)
    shapes = [((layers, batch, s) if batched else (layers, s)) for s in state_sizes(module)]
    states = tuple(0.5 * torch.randn(s, generator=g, dtype=dtype) for s in shapes)
    return states if module.mode == "LSTM" else states[0]


def lengths_for(kind: str, t: int = T, n: int = N) -> list:
    """Sequence lengths for packed input: the longest is t, a length-1 sequence is
    always there when n > 1; unsorted for packed_unsorted."""
    if n == 1:
        return [t]
    base = [t - ((t - 1) * k) // (n - 1) for k in range(n)]  # t, ..., 1 (non-increasing)
    if kind == "packed_unsorted":
        base = base[-1:] + base[:-1]  # shortest first: not sorted
        assert base != sorted(base, reverse=True)
    return base


def make_x(kind: str, batch_first: bool, *, t=T, n=N, i=I, dtype=torch.float64, seed=3):
    """The padded (or unbatched) input tensor for ``kind``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "unbatched":
        shape = (t, i)
    else:
        shape = (n, t, i) if batch_first else (t, n, i)
    return torch.randn(shape, generator=g, dtype=dtype)


def module_input(kind: str, x, lengths, batch_first: bool):
    """What is passed to the module: x itself, or a PackedSequence built from it."""
    if kind.startswith("packed"):
        return pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first,
                                    enforce_sorted=(kind == "packed_sorted"))
    return x


def _leaf(t):
    return t.detach().clone().requires_grad_()


def cotangent(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def run(module, kind, x, lengths=None, hx=None, *, batch_first=None, backward=True,
        input_grad=True, cotangent_dtype=None):
    """Forward (and backward of a fixed random linear loss over every output) of
    ``module``. Returns a dict: 'output' (PackedSequence.data for packed input),
    for packed input 'batch_sizes', 'sorted_indices', 'unsorted_indices', the final
    states 'h_n' (and 'c_n'), and the gradients 'grad.input', 'grad.hx[k]' and
    'grad.<parameter name>' (parameters that require grad; the input's gradient only
    when ``input_grad``). The loss's weights are drawn in float64 and rounded to
    ``cotangent_dtype`` (default: each output's dtype), then taken in the output's dtype."""
    if batch_first is None:
        batch_first = module.batch_first
    x = _leaf(x) if input_grad else x.detach()
    hx_leaves = None
    if hx is not None:
        hx_leaves = tuple(_leaf(h) for h in hx) if isinstance(hx, tuple) else _leaf(hx)
    inp = module_input(kind, x, lengths, batch_first)
    out, state = module(inp, hx_leaves)
    res = {}
    if isinstance(inp, PackedSequence):
        assert isinstance(out, PackedSequence), type(out)
        res["batch_sizes"] = out.batch_sizes
        res["sorted_indices"] = out.sorted_indices
        res["unsorted_indices"] = out.unsorted_indices
        out = out.data
    else:
        assert isinstance(out, torch.Tensor), type(out)
    states = state if isinstance(state, tuple) else (state,)
    outs = [out, *states]
    names = ["output", "h_n", "c_n"][: len(outs)]
    for name, o in zip(names, outs):
        res[name] = o.detach()
    if not backward:
        return res
    loss = sum((o * cotangent(o.shape, cotangent_dtype or o.dtype, 100 + k).to(o.dtype)).sum()
               for k, o in enumerate(outs))
    leaves = {"grad.input": x} if input_grad else {}
    if hx_leaves is not None:
        hl = hx_leaves if isinstance(hx_leaves, tuple) else (hx_leaves,)
        for k, h in enumerate(hl):
            leaves[f"grad.hx[{k}]"] = h
    for name, p in module.named_parameters():
        if p.requires_grad:
            leaves["grad." + name] = p
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for key, g in zip(leaves, grads):
        res[key] = g
    return res


def assert_same(ours: dict, ref: dict, *, rtol=None, atol=None, grad_rtol=None, grad_atol=None):
    """Every entry of ``ref`` is in ``ours`` with the same shape, dtype and value."""
    assert sorted(ours) == sorted(ref), (sorted(ours), sorted(ref))
    for key, r in ref.items():
        o = ours[key]
        if r is None or o is None:
            assert o is None and r is None, f"{key}: ours {o is None and 'None'}, ref {r}"
            continue
        assert o.shape == r.shape, (key, o.shape, r.shape)
        assert o.dtype == r.dtype, (key, o.dtype, r.dtype)
        if key.startswith("grad."):
            tol = dict(rtol=grad_rtol if grad_rtol is not None else rtol,
                       atol=grad_atol if grad_atol is not None else atol)
        else:
            tol = dict(rtol=rtol, atol=atol)
        if tol["rtol"] is None:
            tol = {}
        if o.dtype in (torch.int64, torch.int32):
            assert torch.equal(o, r), (key, o, r)
        else:
            torch.testing.assert_close(o, r, **tol, msg=lambda m, k=key: f"{k}: {m}")


def tol(dtype) -> dict:
    """Tolerances for assert_same."""
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    return dict(rtol=1e-5, atol=1e-5, grad_rtol=1e-5, grad_atol=1e-4)


def expected_exception(fn):
    """Call ``fn`` (the torch.nn side) and return the exception it raises; fails the
    test if it raises nothing."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001  (any exception type is the expectation)
        return exc
    raise AssertionError("the torch.nn reference call did not raise")


# ---------------------------------------------------------------------------
# DistributedDataParallel worker (spawned by test_dropin_interop.py)
# ---------------------------------------------------------------------------


def ddp_model(seed=0):
    """A small model with all three of our modules, float64."""
    torch.manual_seed(seed)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = gatedrnn.LSTM(I, H, num_layers=2, batch_first=True, proj_size=P,
                                      dtype=torch.float64)
            self.gru = gatedrnn.GRU(P, H, bidirectional=True, batch_first=True,
                                    dtype=torch.float64)
            self.rnn = gatedrnn.RNN(2 * H, H, nonlinearity="relu", batch_first=True,
                                    dtype=torch.float64)
            self.head = torch.nn.Linear(H, 1, dtype=torch.float64)

        def forward(self, x):
            y, _ = self.lstm(x)
            y, _ = self.gru(y)
            y, h = self.rnn(y)
            return self.head(y).squeeze(-1)

    return Net()


def ddp_data(batch=4, seed=11):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, T, I, generator=g, dtype=torch.float64)
    y = torch.randn(batch, T, generator=g, dtype=torch.float64)
    return x, y


def ddp_loss(model, x, y):
    return ((model(x) - y) ** 2).mean()


def ddp_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = ddp_model(seed=rank + 100)  # different init per rank: DDP broadcasts rank 0's
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = ddp_data()
        shard = x.shape[0] // world_size
        xs, ys = x[rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]
        loss = ddp_loss(ddp, xs, ys)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        torch.save({"grads": grads, "params": params,
                    "types": {n: type(m).__module__ + "." + type(m).__name__
                              for n, m in model.named_children()}},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # Neither rank tears its connections down while the other may still use them: CI
        # once saw rank 1 abort in gloo ("terminate called without an active exception")
        # after both had their gradients, on a machine busy installing a second venv.
        dist.barrier()
    finally:
        dist.destroy_process_group()
