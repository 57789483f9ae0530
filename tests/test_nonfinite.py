"""NaN and Inf propagate exactly as in torch.nn: a non-finite value in the input, an
initial state, a weight or a bias gives the same NaNs and infinities, in the same
places, in the outputs, final states and every gradient. No crash, no masking."""
import pytest
import torch

from _dropin_helpers import CELLS, make_hx, make_pair, make_x, run

T, N, I, H = 5, 3, 4, 6
VALUES = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}


def _poison_input(ref, ours, x, hx, value):
    x[2, 1, 3] = value


def _poison_state(ref, ours, x, hx, value):
    (hx[0] if isinstance(hx, tuple) else hx)[0, 2, 1] = value


def _poison_cell_state(ref, ours, x, hx, value):
    hx[1][0, 0, 4] = value


def _poison_parameter(name, index):
    def poison(ref, ours, x, hx, value):
        for module in (ref, ours):
            with torch.no_grad():
                getattr(module, name)[index] = value

    return poison


WHERE = {
    "input": _poison_input,
    "h0": _poison_state,
    "c0": _poison_cell_state,
    "weight_ih": _poison_parameter("weight_ih_l0", (1, 2)),
    "weight_hh": _poison_parameter("weight_hh_l0", (0, 1)),
    "bias_hh": _poison_parameter("bias_hh_l0", (2,)),
}


CASES = [pytest.param(cell, where, id=f"{cell}-{where}")
         for cell in CELLS for where in WHERE if where != "c0" or cell.startswith("lstm")]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("value", VALUES, ids=str)
@pytest.mark.parametrize("cell,where", CASES)
def test_nonfinite_values_propagate_like_torch_nn(cell, where, value, dtype):
    ref, ours = make_pair(cell, I, H, dtype=dtype)
    x = make_x("padded", False, dtype=dtype)
    hx = make_hx(ref, N, dtype=dtype)
    WHERE[where](ref, ours, x, hx, VALUES[value])
    expected = run(ref, "padded", x, hx=hx)
    got = run(ours, "padded", x, hx=hx)
    assert sorted(got) == sorted(expected)
    poisoned = False
    for key, r in expected.items():
        o = got[key]
        poisoned |= not torch.isfinite(r).all().item()
        # equal_nan: NaN where torch.nn has NaN; infinities must match exactly.
        torch.testing.assert_close(o, r, equal_nan=True, rtol=1e-5, atol=1e-5,
                                   msg=lambda m, k=key: f"{k}: {m}")
    if value == "nan":  # (an infinity may only saturate a gate, leaving all finite)
        assert poisoned, "the NaN reached no result: the case tests nothing"
