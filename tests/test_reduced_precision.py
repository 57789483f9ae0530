"""bfloat16 and float16 on the CPU, in the drop-in modules.

The rule (issue 17): against a float64 reference run on the same rounded weights, inputs and
loss, the error of every output, final state and gradient is at most twice torch.nn's own
error in that dtype. Our CPU kernels compute these dtypes in float32 and round each result
once, so the bound holds with room; torch.nn (oneDNN) rounds h at every step.
"""
import copy
import itertools

import pytest
import torch

from _dropin_helpers import CELLS, lengths_for, make_hx, make_pair, make_x, run

# Long enough for rounding to compound through the recurrence.
T, N, I, H = 16, 3, 8, 16
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CASES = [(cell, kind, bidir, hx)
         for k, (cell, kind, bidir) in enumerate(itertools.product(
             CELLS, ("padded", "packed_unsorted", "unbatched"), (False, True)))
         for hx in [k % 2 == 0]]


def _case(cell, kind, bidir, hx_given, dtype):
    """(torch.nn's results, ours, the float64 reference's), all from the same rounded values."""
    torch_nn, ours = make_pair(cell, I, H, num_layers=2, bidirectional=bidir, dtype=dtype)
    reference = copy.deepcopy(torch_nn).double()
    x = make_x(kind, False, t=T, n=N, i=I).to(dtype)
    lengths = lengths_for(kind, T, N) if kind.startswith("packed") else None
    hx = make_hx(torch_nn, N, batched=kind != "unbatched", dtype=dtype) if hx_given else None
    hx64 = None if hx is None else (tuple(h.double() for h in hx) if isinstance(hx, tuple)
                                    else hx.double())
    results = [run(m, kind, x, lengths, hx, cotangent_dtype=dtype) for m in (torch_nn, ours)]
    expected = run(reference, kind, x.double(), lengths, hx64, cotangent_dtype=dtype)
    return results[0], results[1], expected


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("cell,kind,bidir,hx_given", CASES,
                         ids=["-".join([c, k, "bi" if b else "uni", "hx" if h else "nohx"])
                              for c, k, b, h in CASES])
def test_error_at_most_twice_torch_nn(cell, kind, bidir, hx_given, dtype):
    torch_nn, ours, expected = _case(cell, kind, bidir, hx_given, dtype)
    assert sorted(ours) == sorted(expected)
    for key, e in expected.items():
        if not e.is_floating_point():
            assert torch.equal(ours[key], e), key
            continue
        assert ours[key].dtype == dtype, key
        their_error = (torch_nn[key].double() - e).abs().max().item()
        our_error = (ours[key].double() - e).abs().max().item()
        # Rounding the exact result once to dtype is the least error any kernel can have.
        rounding = torch.finfo(dtype).eps / 2 * e.abs().max().item()
        assert our_error <= max(2 * their_error, rounding), (
            f"{key}: error {our_error:.3g} against float64, torch.nn's {their_error:.3g}")


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_functional_names_a_weight_of_another_dtype(dtype):
    import gatedrnn.functional as F
    x = torch.randn(T, N, I, dtype=dtype)
    w_ih, w_hh = torch.randn(4 * H, I), torch.randn(4 * H, H)
    # bfloat16 reaches the op, whose message names the dtype as C++ does (BFloat16)
    names = f"({dtype}|{str(dtype).replace('torch.', '').replace('bfloat16', 'BFloat16')})"
    with pytest.raises(RuntimeError, match=f"expected w_ih to have dtype {names}"):
        F.lstm(x, w_ih=w_ih, w_hh=w_hh)
    with pytest.raises(RuntimeError, match=f"expected w_hh to have dtype {names}"):
        F.gru(x, w_ih=w_ih[:3 * H].to(dtype), w_hh=w_hh[:3 * H])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_module_of_another_dtype_raises_like_torch_nn(cell):
    torch_nn, ours = make_pair(cell, I, H, dtype=torch.float32)
    x = torch.randn(T, N, I, dtype=torch.bfloat16)
    with pytest.raises(Exception) as theirs:
        torch_nn(x)
    with pytest.raises(type(theirs.value), match="does not match weight dtype"):
        ours(x)


def test_compiled_bfloat16_module_equals_eager():
    _, ours = make_pair("lstm", I, H, num_layers=2, dtype=torch.bfloat16)
    compiled = torch.compile(ours, fullgraph=True)
    x = make_x("padded", False, t=T, n=N, i=I).to(torch.bfloat16)
    eager = run(ours, "padded", x)
    got = {k.replace("_orig_mod.", ""): v for k, v in run(compiled, "padded", x).items()}
    assert sorted(got) == sorted(eager)
    for key, e in eager.items():
        assert torch.equal(got[key], e), key
