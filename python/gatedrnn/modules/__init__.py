from .cell import GRUCell, LSTMCell, RNNCell
from .gru import GRU
from .layer_norm import LayerNormGRU, LayerNormLSTM
from .lstm import LSTM
from .rnn import RNN

__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "LayerNormLSTM", "LayerNormGRU"]
