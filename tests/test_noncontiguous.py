"""Strided inputs: non-contiguous, expanded (stride 0) and storage-offset
tensors give the same outputs and gradients as contiguous copies; the ops do
not modify their inputs."""

import pytest
import torch

from conftest import (
    CELLS,
    DTYPES,
    as_leaves,
    assert_results_close,
    build_case,
    is_lstm,
    op_forward,
    run_nn,
    run_ours,
    tolerances,
)


def _noncontiguous_like(key, t):
    """A non-contiguous tensor with the values of ``t``."""
    if key == "input":
        if t.dim() == 3:
            # as if built from a batch-first [N, T, I] tensor and transposed
            return t.transpose(0, 1).contiguous().transpose(0, 1)
        return t.t().contiguous().t()  # packed [R, I], column-major
    if key in ("h0", "c0"):
        # a column slice of a wider tensor
        junk = torch.full_like(t, float("nan"))
        return torch.cat([t, junk], dim=1)[:, : t.shape[1]]
    if key.startswith("w_"):
        return t.t().contiguous().t()
    # biases: every other element of a longer vector
    junk = torch.full_like(t, float("nan"))
    return torch.stack([t, junk], dim=1)[:, 0]


def _strided_tensors(tensors):
    out = {}
    for k, v in tensors.items():
        nc = _noncontiguous_like(k, v)
        if v.numel() > 1 and not (v.dim() == 2 and 1 in v.shape and k.startswith("w_")):
            assert not nc.is_contiguous(), k
        torch.testing.assert_close(nc, v, rtol=0, atol=0)
        out[k] = nc
    return out


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_noncontiguous_matches_contiguous(cell, packed, reverse, dtype):
    module, tensors, batch_sizes = build_case(
        cell, 4, 3, 5, 6, 4, dtype=dtype, reverse=reverse, packed=packed
    )
    contiguous = run_ours(cell, tensors, batch_sizes, reverse)
    strided = run_ours(cell, _strided_tensors(tensors), batch_sizes, reverse)
    tight = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    assert_results_close(strided, contiguous, **tight)
    # and both agree with torch.nn
    ref = run_nn(cell, module, tensors, batch_sizes, reverse)
    assert_results_close(strided, ref, **tolerances(dtype))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_expanded_zero_initial_state(cell, packed):
    """h0/c0 given as zeros(1, X).expand(N, X) (stride 0 in the batch dim)."""
    module, tensors, batch_sizes = build_case(
        cell, 4, 3, 5, 6, 4, dtype=torch.float64, packed=packed
    )
    tensors["h0"] = torch.zeros_like(tensors["h0"])
    if is_lstm(cell):
        tensors["c0"] = torch.zeros_like(tensors["c0"])
    expanded = dict(tensors)
    for k in ("h0", "c0"):
        if k in tensors:
            expanded[k] = torch.zeros(1, tensors[k].shape[1], dtype=torch.float64).expand_as(tensors[k])
    contiguous = run_ours(cell, tensors, batch_sizes, False)
    ours = run_ours(cell, expanded, batch_sizes, False)
    assert_results_close(ours, contiguous, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_storage_offset(cell, packed):
    """Contiguous tensors that do not start at the beginning of their storage."""
    module, tensors, batch_sizes = build_case(
        cell, 4, 3, 5, 6, 4, dtype=torch.float64, packed=packed
    )
    shifted = {}
    for k, v in tensors.items():
        big = torch.cat([torch.full((3,), float("nan"), dtype=v.dtype), v.reshape(-1)])
        shifted[k] = big[3:].view(v.shape)
        assert shifted[k].storage_offset() == 3 and shifted[k].is_contiguous()
    ours = run_ours(cell, shifted, batch_sizes, False)
    ref = run_nn(cell, module, tensors, batch_sizes, False)
    assert_results_close(ours, ref, **tolerances(torch.float64))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_ops_do_not_modify_inputs(cell, packed, reverse):
    _, tensors, batch_sizes = build_case(
        cell, 4, 3, 5, 6, 4, dtype=torch.float64, packed=packed, reverse=reverse
    )
    snapshot = {k: v.clone() for k, v in tensors.items()}
    bs_snapshot = None if batch_sizes is None else batch_sizes.clone()
    run_ours(cell, tensors, batch_sizes, reverse)
    for k, v in tensors.items():
        assert torch.equal(v, snapshot[k]), f"{k} was modified"
    if batch_sizes is not None:
        assert torch.equal(batch_sizes, bs_snapshot), "batch_sizes was modified"


@pytest.mark.parametrize("cell", CELLS)
def test_batch_first_view_of_input(cell):
    """The input as a [N, T, I] tensor's transpose(0, 1) -- what a
    batch_first caller passes -- against the same data made contiguous."""
    T, N, I = 5, 3, 4
    _, tensors, _ = build_case(cell, T, N, I, 7, 3, dtype=torch.float64)
    batch_major = torch.randn(N, T, I, dtype=torch.float64)
    nc = dict(tensors, input=batch_major.transpose(0, 1))
    c = dict(tensors, input=batch_major.transpose(0, 1).contiguous())
    assert not nc["input"].is_contiguous()
    assert_results_close(run_ours(cell, nc, None, False), run_ours(cell, c, None, False),
                         rtol=1e-12, atol=1e-12)


def _grad_output_layouts(g):
    """g (the output's gradient, [T, N, P] or [R, P]) in layouts the backward reads
    in place or copies: a column slice of a wider tensor (one direction of a
    bidirectional layer's gradient), a batch-first transpose, and a broadcast."""
    wide = torch.cat([torch.full_like(g, float("nan")), g, torch.full_like(g, float("nan"))],
                     dim=-1)
    layouts = {"column_slice": wide[..., g.shape[-1]:2 * g.shape[-1]]}
    if g.dim() == 3:
        layouts["batch_first"] = g.transpose(0, 1).contiguous().transpose(0, 1)
    layouts["expanded_row"] = g[..., :1, :].expand_as(g) if g.dim() == 3 else \
        g[:1].expand_as(g)
    return layouts


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(4, 3), (1, 3), (4, 1), (1, 1)], ids=str)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_strided_output_gradient(cell, shape, packed, reverse):
    """The backward ops read a strided output gradient in place; every layout gives the
    bits of its contiguous copy."""
    T, N = shape
    _, tensors, batch_sizes = build_case(cell, T, N, 5, 6, 4, dtype=torch.float32,
                                         packed=packed, reverse=reverse)
    leaves = as_leaves(tensors)
    out = op_forward(cell, leaves["input"], batch_sizes, leaves["h0"], leaves.get("c0"),
                     leaves, reverse)[0]
    keys = list(leaves)
    g = torch.randn_like(out)
    for name, layout in _grad_output_layouts(g).items():
        expected = torch.autograd.grad(out, [leaves[k] for k in keys], layout.contiguous(),
                                       retain_graph=True)
        got = torch.autograd.grad(out, [leaves[k] for k in keys], layout, retain_graph=True)
        for k, a, b in zip(keys, got, expected):
            assert torch.equal(a, b), f"{name}: grad of {k}"
