"""The CPU ops keep packed weights from one call to the next (csrc/cpu/weight_cache.h).

A kept packing may be used only while the weight is unchanged: every change PyTorch
counts (in place through the tensor, an optimizer step, load_state_dict, a new tensor in
the same memory) must give the results of a fresh computation, bit for bit. A change it
does not count (through .data) is documented as unseen, and empty_weight_cache() makes it
seen. Each check compares against the same call after empty_weight_cache(), which packs
from scratch, and against torch.nn.
"""
import os
import subprocess
import sys

import pytest
import torch

import gatedrnn

CELLS = {"lstm": (gatedrnn.LSTM, torch.nn.LSTM), "gru": (gatedrnn.GRU, torch.nn.GRU),
         "rnn": (gatedrnn.RNN, torch.nn.RNN)}
# Batches that take each recurrent-GEMM path: the small-batch kernel (1, 3) and the tiles.
BATCHES = [1, 3, 16]
HIDDEN = 40  # not a multiple of any panel width: the zero-padded last panel is used


def _pair(cell, dtype, layers=2, **kw):
    ours_cls, ref_cls = CELLS[cell]
    torch.manual_seed(0)
    ref = ref_cls(HIDDEN, HIDDEN, num_layers=layers, dtype=dtype, **kw)
    ours = ours_cls(HIDDEN, HIDDEN, num_layers=layers, dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _fresh(module, x):
    """The module's output with every packing made anew."""
    gatedrnn.empty_weight_cache()
    with torch.no_grad():
        return module(x)[0]


def _run(module, x):
    with torch.no_grad():
        return module(x)[0]


def _tol(dtype):
    return {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch", BATCHES)
def test_in_place_change_is_seen(cell, dtype, batch):
    ours, ref = _pair(cell, dtype)
    x = torch.randn(1, batch, HIDDEN, dtype=dtype)
    before = _run(ours, x)
    assert gatedrnn.weight_cache_bytes() > 0
    with torch.no_grad():
        for module in (ours, ref):
            module.weight_hh_l0.mul_(-0.5)
            module.weight_ih_l1.add_(0.25)
    after = _run(ours, x)
    assert not torch.equal(after, before)
    assert torch.equal(after, _fresh(ours, x))
    torch.testing.assert_close(after, _run(ref, x), **_tol(dtype))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", BATCHES)
def test_optimizer_steps_are_seen(cell, batch):
    """A training loop with T = 1 calls: each step's packing is of that step's weights."""
    ours, ref = _pair(cell, torch.float64)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, ref)]
    x = torch.randn(1, batch, HIDDEN, dtype=torch.float64)
    for _ in range(3):
        for module, opt in zip((ours, ref), opts):
            opt.zero_grad()
            module(x)[0].square().sum().backward()
            opt.step()
        kept = _run(ours, x)
        assert torch.equal(kept, _fresh(ours, x))
        torch.testing.assert_close(kept, _run(ref, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_is_seen(cell):
    ours, _ = _pair(cell, torch.float32)
    other, other_ref = _pair(cell, torch.float32)
    with torch.no_grad():
        for p in other_ref.parameters():
            p.uniform_(-0.3, 0.3)
    x = torch.randn(1, 3, HIDDEN)
    _run(ours, x)
    ours.load_state_dict(other_ref.state_dict())
    assert torch.equal(_run(ours, x), _fresh(ours, x))
    torch.testing.assert_close(_run(ours, x), _run(other_ref, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_new_weights_in_freed_memory(cell):
    """Modules made and dropped one after another: the allocator hands the same memory to
    new weights, which a cache keyed by address alone would mistake for the old ones."""
    x = torch.randn(1, 3, HIDDEN)
    for seed in range(6):
        torch.manual_seed(seed)
        ours_cls, ref_cls = CELLS[cell]
        ref = ref_cls(HIDDEN, HIDDEN)
        ours = ours_cls(HIDDEN, HIDDEN)
        ours.load_state_dict(ref.state_dict())
        torch.testing.assert_close(_run(ours, x), _run(ref, x), rtol=1e-4, atol=1e-5)
        del ours, ref


def test_dropped_weights_leave_the_cache():
    gatedrnn.empty_weight_cache()
    ours, _ = _pair("lstm", torch.float32)
    _run(ours, torch.randn(1, 2, HIDDEN))
    held = gatedrnn.weight_cache_bytes()
    assert held > 0
    del ours
    keep, _ = _pair("gru", torch.float32, layers=1)
    _run(keep, torch.randn(1, 2, HIDDEN))  # a new packing sweeps out the dead ones
    assert 0 < gatedrnn.weight_cache_bytes() < held


def test_data_changes_are_seen_after_empty_weight_cache():
    """Writes through .data bypass the version counter (documented); empty_weight_cache()
    drops what was kept."""
    ours, ref = _pair("gru", torch.float32)
    x = torch.randn(1, 2, HIDDEN)
    _run(ours, x)
    for module in (ours, ref):
        module.weight_hh_l0.data.mul_(2.0)
    gatedrnn.empty_weight_cache()
    assert gatedrnn.weight_cache_bytes() == 0
    torch.testing.assert_close(_run(ours, x), _run(ref, x), rtol=1e-4, atol=1e-5)


def test_inference_tensors_are_not_kept():
    """Inference tensors have no version counter, so a change could not be seen."""
    gatedrnn.empty_weight_cache()
    with torch.inference_mode():
        ours, ref = _pair("lstm", torch.float32)
        x = torch.randn(1, 2, HIDDEN)
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
    assert gatedrnn.weight_cache_bytes() == 0


def test_transposed_and_plain_packings_are_apart():
    """The backward packs w_hh transposed, the forward as it is: same memory, two keys."""
    ours, ref = _pair("lstm", torch.float64)
    x = torch.randn(1, 5, HIDDEN, dtype=torch.float64, requires_grad=True)
    for module in (ours, ref):
        module(x)[0].sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=name)


_CHILD = """
import torch, gatedrnn
m = gatedrnn.GRU(8, 8)
ref = torch.nn.GRU(8, 8)
ref.load_state_dict(m.state_dict())
x = torch.randn(1, 2, 8)
with torch.no_grad():
    torch.testing.assert_close(m(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)
print(gatedrnn.weight_cache_bytes())
"""


def test_cache_off_by_environment():
    env = {**os.environ, "GATEDRNN_WEIGHT_CACHE_MB": "0"}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "0"


def test_bad_cache_size_is_a_clear_error():
    env = {**os.environ, "GATEDRNN_WEIGHT_CACHE_MB": "lots"}
    done = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert "GATEDRNN_WEIGHT_CACHE_MB" in done.stderr
