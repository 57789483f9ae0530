"""gatedrnn.convert: swap the torch.nn recurrent layers and cells of an existing model for ours."""
import torch

from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

_REPLACEMENTS = {torch.nn.LSTM: LSTM, torch.nn.GRU: GRU, torch.nn.RNN: RNN,
                 torch.nn.LSTMCell: LSTMCell, torch.nn.GRUCell: GRUCell,
                 torch.nn.RNNCell: RNNCell}


def _swap(module: torch.nn.Module) -> torch.nn.Module:
    ours = _REPLACEMENTS[type(module)]
    # Our modules are subclasses that add no state of their own, so re-classing keeps
    # every parameter, buffer, hook, parametrization, device and dtype exactly as it is.
    module.__class__ = ours
    return module


def convert(model: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every torch.nn.LSTM / GRU / RNN and LSTMCell / GRUCell / RNNCell
    inside `model` (the model itself included) with the gatedrnn equivalent, keeping
    weights, device and dtype. Subclasses of the torch.nn modules are left alone, since
    their forward may differ. Returns `model`."""
    for module in model.modules():
        if type(module) in _REPLACEMENTS:
            _swap(module)
    return model
