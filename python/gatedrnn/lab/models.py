"""The models the lab trains: one recurrent module (or a stack) and a linear read-out of the
last step, optionally with attention over all the steps' outputs.

A Config names one variant (the cell and a single change to it); AddingModel builds it.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import GRU, LSTM, RNN, LayerNormLSTM

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "ln_lstm")


@dataclass(frozen=True)
class Config:
    """One model variant.

    cell                 rnn_tanh | rnn_relu | lstm | gru | ln_lstm
    init, init_options   gatedrnn's init scheme ("orthogonal", "identity", "forget_bias"...;
                         None: torch.nn's default), its options as (name, value) pairs
    layers, residual     a stack of `layers` layers, with residual connections or not
    input_proj           a Linear from the 2 input features to `hidden` before the recurrent
                         module (residual stacks need every layer's input as wide as its output)
    recurrent_grad_clip  gatedrnn's in-kernel clamp of the gates' gradients (LSTM, GRU)
    clip_norm            torch.nn.utils.clip_grad_norm_ on all parameters before each step
    attention            read out from [h_T, attention(h_T -> h_1..h_T)] (scaled dot-product)
    """
    label: str
    cell: str
    init: Optional[str] = None
    init_options: Tuple[Tuple[str, float], ...] = ()
    layers: int = 1
    residual: bool = False
    input_proj: bool = False
    recurrent_grad_clip: float = 0.0
    clip_norm: float = 0.0
    attention: bool = False

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ValueError(f"Config {self.label!r}: unknown cell {self.cell!r}; one of {CELLS}")


def make_rnn(config: Config, input_size: int, hidden: int) -> torch.nn.Module:
    """The recurrent module of `config` (time-major input)."""
    options = dict(num_layers=config.layers, residual=config.residual)
    if config.init is not None:
        options.update(init=config.init, init_options=dict(config.init_options) or None)
    if config.recurrent_grad_clip:
        options["recurrent_grad_clip"] = config.recurrent_grad_clip
    if config.cell in ("rnn_tanh", "rnn_relu"):
        return RNN(input_size, hidden, nonlinearity=config.cell[4:], **options)
    module = {"lstm": LSTM, "gru": GRU, "ln_lstm": LayerNormLSTM}[config.cell]
    return module(input_size, hidden, **options)


class AddingModel(torch.nn.Module):
    """x [T, N, 2] -> prediction [N] from the last step's output h_T (the adding problem's
    read-out), or, with attention, from h_T and a context vector: one scaled dot-product
    attention head whose query is a projection of h_T and whose keys (a projection) and
    values (the outputs themselves) are every step's output. The attention path reaches each
    h_t directly, one step from the loss, whatever t."""

    def __init__(self, config: Config, hidden: int):
        super().__init__()
        self.config = config
        self.inp = torch.nn.Linear(2, hidden) if config.input_proj else None
        self.rnn = make_rnn(config, hidden if config.input_proj else 2, hidden)
        if config.attention:
            self.query = torch.nn.Linear(hidden, hidden)
            self.key = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden * (2 if config.attention else 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inp is not None:
            x = self.inp(x)
        out, _ = self.rnn(x)                                   # [T, N, H]
        last = out[-1]
        if self.config.attention:
            steps = out.transpose(0, 1).unsqueeze(1)          # [N, 1, T, H]
            q = self.query(last)[:, None, None, :]            # [N, 1, 1, H]
            context = F.scaled_dot_product_attention(q, self.key(steps), steps)
            last = torch.cat([last, context[:, 0, 0]], dim=-1)
        return self.head(last).squeeze(-1)
