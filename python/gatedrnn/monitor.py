"""gatedrnn.grad_norms: the per-timestep gradient-norm monitor.

    with gatedrnn.grad_norms() as rec:
        loss.backward()
    rec[model.rnn]["h"]    # [layers * directions, T]: ||dL/dh_t||_2 for every step t
    rec[model.rnn]["c"]    # the LSTMs: ||dL/dc_t||_2

Around a backward, the fused backward kernels of every gatedrnn module (LSTM, GRU, RNN,
LayerNormLSTM, LayerNormGRU) whose backward runs inside record, for each layer, direction
and timestep, the 2-norm over batch and features of the total gradient reaching the state
h_t: from the output at t and from step t + 1 (and from grad_h_n at the last step), which
is what vanishes or explodes as it is carried back through time. For the LSTMs, also that
of the cell state c_t (with cell zoneout: of the step's new cell value). Rows are in
layer-major order, forward direction first (the order of h_n); steps in time order (the
reverse direction's too); packed input counts each step's live rows. Values are float64
tensors on the CPU.

The sums of squares are taken inside the kernels' backward passes, as they make the
gradient anyway: off (outside the context) they cost nothing; on, a few percent of the
backward (README). The forward may run inside or outside the context; what counts is that
the backward runs inside.

rec[module] is the record of the module's latest forward call (of those whose backward
ran inside); rec.runs(module) lists them all, in the order of the forward calls. Not
recorded: modules run under torch.compile / torch.export (their backward is traced ahead
of time; run them eagerly to monitor), backwards with create_graph=True (they run through
reference.py, not the kernels), the functional API and the cell modules (LSTMCell...).
"""
import itertools
import math
import threading
import weakref
from typing import Dict, List

import torch

__all__ = ["grad_norms", "GradNorms"]

# The module forward in progress on this thread (its _Run) and the layer-direction of the
# op being called, read by the ops' setup_context.
_current = threading.local()
# The active recorders, innermost last. Global, not per thread: CUDA backwards run on the
# autograd engine's device threads.
_recorders: List["GradNorms"] = []
_order = itertools.count()


class _Run:
    """The record of one forward call of a module, filled by its ops' backwards."""

    __slots__ = ("module", "order", "slots", "h", "c", "__weakref__")

    def __init__(self, module, slots: int):
        self.module = weakref.ref(module)
        self.order = next(_order)
        self.slots = slots
        self.h = self.c = None

    def deposit(self, slot: int, step_norms: torch.Tensor) -> None:
        """step_norms: [T, kinds] the sums of squares a backward op returned."""
        norms = step_norms.detach().to("cpu", torch.float64).sqrt()
        steps = norms.shape[0]
        if self.h is None:
            self.h = torch.full((self.slots, steps), math.nan, dtype=torch.float64)
            if norms.shape[1] > 1:
                self.c = torch.full((self.slots, steps), math.nan, dtype=torch.float64)
        self.h[slot] = norms[:, 0]
        if self.c is not None:
            self.c[slot] = norms[:, 1]

    def as_dict(self) -> Dict[str, torch.Tensor]:
        record = {"h": self.h}
        if self.c is not None:
            record["c"] = self.c
        return record


class GradNorms:
    """What a ``with gatedrnn.grad_norms() as rec:`` block recorded (see the module's
    docstring)."""

    def __init__(self):
        self._runs = weakref.WeakKeyDictionary()  # module -> [_Run] in forward order

    def _add(self, run: _Run) -> None:
        module = run.module()
        if module is None:
            return
        runs = self._runs.setdefault(module, [])
        if all(r is not run for r in runs):
            runs.append(run)
            runs.sort(key=lambda r: r.order)

    def runs(self, module) -> List[Dict[str, torch.Tensor]]:
        """One record per forward call of module whose backward ran inside, in the order of
        the forward calls (empty if none)."""
        return [r.as_dict() for r in self._runs.get(module, [])]

    def __getitem__(self, module) -> Dict[str, torch.Tensor]:
        runs = self._runs.get(module)
        if not runs:
            raise KeyError(
                f"grad_norms: no backward of this {type(module).__name__} ran inside the "
                f"recorder. Recorded are the gatedrnn modules (LSTM, GRU, RNN, LayerNormLSTM, "
                f"LayerNormGRU) run eagerly (not under torch.compile or torch.export), whose "
                f"backward runs inside the `with gatedrnn.grad_norms()` block without "
                f"create_graph=True")
        return runs[-1].as_dict()

    def __contains__(self, module) -> bool:
        return bool(self._runs.get(module))

    def __enter__(self):
        _recorders.append(self)
        return self

    def __exit__(self, *exc):
        _recorders.remove(self)
        return False


def grad_norms() -> GradNorms:
    """A context manager recording the per-timestep gradient norms of every gatedrnn module
    whose backward runs inside it: ``with gatedrnn.grad_norms() as rec: loss.backward()``,
    then ``rec[module]["h"]`` ([layers * directions, T]) and, for the LSTMs,
    ``rec[module]["c"]``. See gatedrnn.monitor's docstring."""
    return GradNorms()


# --- called by the modules, functional.stacked and the ops ---

def begin(module, slots: int):
    """Before a module's forward runs its ops: returns what end() takes."""
    if torch.compiler.is_compiling():
        return None
    previous = getattr(_current, "run", None)
    _current.run, _current.slot = _Run(module, slots), 0
    return previous


def end(previous) -> None:
    if torch.compiler.is_compiling():
        return
    _current.run = previous


def at_slot(slot: int) -> None:
    """The ops called next belong to layer-direction `slot` (layer * directions +
    direction)."""
    if not torch.compiler.is_compiling():
        _current.slot = slot


def tag():
    """For an op's setup_context: (run, slot) of the module forward in progress, or None."""
    run = getattr(_current, "run", None)
    return None if run is None else (run, _current.slot)


def recording(ctx) -> bool:
    """Whether the backward of the op whose ctx this is should record its norms."""
    return bool(_recorders) and getattr(ctx, "monitor", None) is not None and \
        not torch.compiler.is_compiling()


def deposit(ctx, step_norms: torch.Tensor) -> None:
    """Files what a backward op returned in step_norms with every active recorder."""
    run, slot = ctx.monitor
    run.deposit(slot, step_norms)
    for recorder in _recorders:
        recorder._add(run)
