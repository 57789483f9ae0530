from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

__all__ = ["LSTM", "GRU", "RNN"]
