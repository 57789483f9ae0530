"""ONNX export of models with our modules, by both of torch's exporters, to ONNX's own
LSTM / GRU / RNN nodes (the graphs torch.nn's modules export to), run in onnxruntime
against eager. Needs the [test] extras onnx, onnxscript and onnxruntime."""

from __future__ import annotations

import io
import warnings

import onnx
import onnxruntime as ort
import pytest
import torch

from _dropin_helpers import H, I, N, T, family, is_lstm, make_pair

pytestmark = pytest.mark.integration


def _export(model, args, dynamo, **kw):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, f if not dynamo else None, dynamo=dynamo,
                                    **kw)
    data = f.getvalue() if not dynamo else program.model_proto.SerializeToString()
    return data, {n.op_type for n in onnx.load_from_string(data).graph.node}


def _run_onnx(data, inputs):
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


class WithState(torch.nn.Module):
    """Returns the output and the final states as flat tensors (what ONNX graphs carry)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, *hx):
        if hx:
            out, h = self.rnn(x, hx if len(hx) > 1 else hx[0])
        else:
            out, h = self.rnn(x)
        return (out, *h) if isinstance(h, tuple) else (out, h)


ONNX_CONFIGS = [
    pytest.param(dict(num_layers=1), False, id="1layer"),
    pytest.param(dict(num_layers=2, bidirectional=True), False, id="2layers-bi"),
    pytest.param(dict(num_layers=2, batch_first=True), True, id="batch_first-hx"),
]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("config,with_hx", ONNX_CONFIGS)
def test_onnx_export_runs_in_onnxruntime(cell, config, with_hx, dynamo):
    ref, ours = make_pair(cell, dtype=torch.float32, **config)
    model, ref_model = WithState(ours).eval(), WithState(ref).eval()
    batch_first = config.get("batch_first", False)
    x = torch.randn(N, T, I) if batch_first else torch.randn(T, N, I)
    layers = config["num_layers"] * (2 if config.get("bidirectional") else 1)
    hx = ()
    if with_hx:
        hx = tuple(torch.randn(layers, N, H) for _ in range(2 if is_lstm(cell) else 1))
    data, nodes = _export(model, (x, *hx), dynamo)
    _, ref_nodes = _export(ref_model, (x, *hx), dynamo)
    # the same graph torch.nn's module exports to: ONNX's own LSTM / GRU (and RNN with the
    # TorchScript exporter; torch's dynamo exporter writes torch.nn.RNN as MatMul + Tanh)
    assert nodes == ref_nodes
    standard = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[family(cell)]
    if not (dynamo and family(cell) == "rnn"):
        assert standard in nodes
    assert all(n.domain in ("", "ai.onnx") for n in onnx.load_from_string(data).graph.node)
    with torch.no_grad():
        expected = model(x, *hx)
    for a, b in zip(_run_onnx(data, (x, *hx)), expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_of_a_projection_is_refused(dynamo):
    _, ours = make_pair("lstm_proj", dtype=torch.float32)
    with pytest.raises(Exception) as info:
        _export(WithState(ours), (torch.randn(T, N, I),), dynamo)
    chain = []
    e = info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    assert any("ONNX's LSTM operator has no projection" in m for m in chain), chain
