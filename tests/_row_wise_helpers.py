"""Helpers shared by the row-wise cells' tests (test_layer_norm.py, test_regularizers.py)."""
import torch
from torch.nn.utils.rnn import PackedSequence


def cotangents(outs, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]


def module_results(forward, module, inp, hx):
    """forward(inp, hx)'s output and final states and the gradients of a fixed random
    linear loss over them w.r.t. the input, each state given and each parameter."""
    packed = isinstance(inp, PackedSequence)
    data = (inp.data if packed else inp).detach().clone().requires_grad_()
    inp = PackedSequence(data, inp.batch_sizes, inp.sorted_indices,
                         inp.unsorted_indices) if packed else data
    leaves = {"input": data}
    if hx is not None:
        hx = tuple(h.detach().clone().requires_grad_() for h in
                   (hx if isinstance(hx, tuple) else (hx,)))
        leaves.update({f"hx[{k}]": h for k, h in enumerate(hx)})
        hx = hx if len(hx) == 2 else hx[0]
    leaves.update(dict(module.named_parameters()))
    output, hidden = forward(inp, hx)
    if packed:
        assert isinstance(output, PackedSequence)
        assert torch.equal(output.batch_sizes, inp.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(output, name), getattr(inp, name)
            assert (a is None and b is None) or torch.equal(a, b), name
        output = output.data
    outs = [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    loss = sum((o * c).sum() for o, c in zip(outs, cotangents(outs)))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    res = {f"out[{k}]": o.detach() for k, o in enumerate(outs)}
    res.update({f"grad.{k}": gr for k, gr in zip(leaves, grads)})
    return res


def assert_same(got: dict, expected: dict, **tol):
    assert list(got) == list(expected)
    for k in expected:
        assert got[k].shape == expected[k].shape, (k, got[k].shape, expected[k].shape)
        assert got[k].dtype == expected[k].dtype, (k, got[k].dtype, expected[k].dtype)
        torch.testing.assert_close(got[k], expected[k], **tol, msg=lambda m, k=k: f"{k}: {m}")


def perturb_layer_norms(module, seed):
    """Gains 1 + 0.3 randn and shifts 0.3 randn for the module's LayerNorms (if any), so
    that none is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            if name.startswith("ln_weight_"):
                p.copy_(1 + 0.3 * noise)
            elif name.startswith("ln_bias_"):
                p.copy_(0.3 * noise)


class Layout:
    """How a module's input came (padded, batch_first, unbatched, packed) and what a
    stacked reference needs of it: the time-major data [T, N, I] (packed: [R, I]) and
    batch_sizes, and the means to give the results back in the module's form."""

    def __init__(self, module, input):
        self.module = module
        self.packed = isinstance(input, PackedSequence)
        self.batched = self.packed or input.dim() == 3
        if self.packed:
            self.data, self.batch_sizes, self.sorted_indices, self.unsorted_indices = input
            self.batch = int(self.batch_sizes[0])
        else:
            self.batch_sizes = self.sorted_indices = self.unsorted_indices = None
            self.data = input.unsqueeze(1) if not self.batched else (
                input.transpose(0, 1) if module.batch_first else input)
            self.batch = self.data.shape[1]

    def states(self, hx, sizes, lstm):
        """hx as a list of [L*D, N, size] tensors in the data's batch order (zeros if None)."""
        m = self.module
        if hx is None:
            layers = m.num_layers * (2 if m.bidirectional else 1)
            return [torch.zeros(layers, self.batch, size, dtype=self.data.dtype)
                    for size in sizes]
        states = list(hx) if lstm else [hx]
        if not self.batched:
            states = [s.unsqueeze(1) for s in states]
        if self.packed and self.sorted_indices is not None:
            states = [s.index_select(1, self.sorted_indices) for s in states]
        return states

    def results(self, layer_input, finals, lstm):
        """(output, hx) as the module returns them, from the last layer's time-major
        output and the lists of final states per layer-direction."""
        finals = [torch.stack(f) for f in finals]
        if self.packed:
            if self.unsorted_indices is not None:
                finals = [f.index_select(1, self.unsorted_indices) for f in finals]
            output = PackedSequence(layer_input, self.batch_sizes, self.sorted_indices,
                                    self.unsorted_indices)
        elif not self.batched:
            output = layer_input.squeeze(1)
            finals = [f.squeeze(1) for f in finals]
        else:
            output = layer_input.transpose(0, 1) if self.module.batch_first else layer_input
        return output, (tuple(finals) if lstm else finals[0])
