"""Helpers shared by the per-cell op registrations."""
from typing import Callable

import torch

from .. import monitor


def flat_rows(input: torch.Tensor) -> int:
    """Rows of the flat [R, *] layout: T*N for padded [T, N, I], R for packed [R, I]."""
    return input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]


def output_like(input: torch.Tensor, features: int) -> torch.Tensor:
    """An empty output laid out like input: [T, N, features] or [R, features]."""
    return input.new_empty((*input.shape[:-1], features))


def workspace_like(input: torch.Tensor, rows: int, columns: int, rounded: bool) -> torch.Tensor:
    """The forward op's workspace: in input's dtype, but float32 for bfloat16 on the CPU
    where the kernels do not keep the activations rounded (rounded: the GRU's are, the
    LSTM's not; cpu/recurrence.h, workspace_dtype). The same on every CPU."""
    if input.dtype == torch.bfloat16 and input.device.type == "cpu" and not rounded:
        return input.new_empty((rows, columns), dtype=torch.float32)
    return input.new_empty((rows, columns))


def output_to_save(input, batch_sizes, out):
    """The output, as the LSTM's and GRU's setup_context save it for the backward op: None
    for a call of one step, whose backward reads no output row (its only step's previous
    state is h0, and the gates are in the workspace). A cell's step (modules/cell.py)
    hands on h_n, not the output, so saving the output would keep a second copy of the new
    state alive until the backward: in a decoder of two GRUCells at (N, H) = (64, 512),
    20 steps, 5 of 30 MiB saved (saved_tensors_hooks). See output_for_backward."""
    steps = input.shape[0] if batch_sizes is None else batch_sizes.shape[0]
    return None if steps == 1 else out


def output_for_backward(out, input, h0):
    """The backward op's `output` argument from what output_to_save kept: where it kept
    nothing (one step), h0 in the output's shape, which the op checks but never reads, so
    the gradients are bit for bit those of the output itself
    (tests/test_output_mask.py::test_a_one_step_backward_reads_no_output)."""
    if out is not None:
        return out
    return h0.unsqueeze(0) if input.dim() == 3 else h0


def zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def grad_if(given, grad):
    """The gradient of an optional input: None when the input was None."""
    return grad if given is not None else None


def fake_backward_grads(input, states, w_ih, w_hh, output_mask=(True, True, True)):
    """Fake results common to the *_backward ops: grad_input, one grad per initial state,
    grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (LSTM appends grad_w_hr); [0] where the
    output_mask leaves them out."""
    gates = w_ih.shape[0]
    want_input, want_states, want_weights = output_mask
    grads = [torch.empty_like(input, memory_format=torch.contiguous_format)
             if want_input else not_made(input)]
    grads += [torch.empty_like(s, memory_format=torch.contiguous_format)
              if want_states else not_made(input) for s in states]
    if want_weights:
        grads += [w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
                  w_ih.new_empty((gates,)), w_ih.new_empty((gates,))]
    else:
        grads += [not_made(input) for _ in range(4)]  # four tensors, as the real kernels'
    return grads


def not_made(input):
    """What a backward op returns for a gradient its output_mask left out: [0]."""
    return input.new_empty((0,))


def output_mask(ctx, states, weights):
    """A backward op's output_mask (registration.cpp) from what autograd needs: the
    gradient of the input (the forward op's argument 0), of the initial states (the
    arguments at indices states) and of the parameters (at indices weights). A
    decoder step with its state detached needs no grad_h0, a first layer over data no
    grad_input, frozen weights none of theirs: the op then leaves out their products."""
    needs = ctx.needs_input_grad[1:]  # the first: register_autograd's keyset
    return [needs[0], any(needs[i] for i in states), any(needs[i] for i in weights)]


def kept(grad, wanted: bool):
    """A backward op's gradient, or None where its output_mask left it out."""
    return grad if wanted else None


def step_norms_like(input, batch_sizes, record_norms: bool, kinds: int) -> torch.Tensor:
    """A backward op's step_norms: [T, kinds] float64 when recording, else [0, kinds]."""
    steps = (batch_sizes.shape[0] if batch_sizes is not None else input.shape[0]) \
        if record_norms else 0
    return input.new_empty((steps, kinds), dtype=torch.float64)


def cell_state_grads(grad_workspace, start: int, hidden: int):
    """The gradient of the cell states an LSTM op's workspace holds in its columns [start,
    start + hidden) (what return_states gives as states["c"]), for the backward op's
    grad_cell_states; None when the workspace got no gradient. The workspace's other
    columns are the kernels' intermediates, which carry no gradient (as the workspaces of
    every op; registration.cpp)."""
    if grad_workspace is None:
        return None
    return grad_workspace[:, start:start + hidden]


def refuse_cell_state_double_backward(grad_workspace) -> None:
    """A create_graph=True backward runs through reference.py, which has no cell-state
    sequence: refuse one that the cell states (return_states) got a gradient in."""
    if grad_workspace is not None:
        raise RuntimeError("a backward with create_graph=True (double backward) through the "
                           "cell states returned by return_states=True is not supported; "
                           "differentiate the output and the final states instead")


def check_devices(op: str, input, batch_sizes, **tensors) -> None:
    """The device checks of the real kernels, repeated in the fake ones.

    A tensor on the meta device among CPU tensors sends the call to the fake
    kernel (Meta outranks CPU in dispatch), which would otherwise return
    uninitialized tensors as if it had computed something. All are RuntimeErrors, as
    in torch.nn.
    """
    for name, t in tensors.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{op}: expected {name} on device {input.device} (the device of "
                               f"input), got {t.device}")
    if batch_sizes is not None and batch_sizes.device.type != "cpu":
        raise RuntimeError(f"{op}: expected batch_sizes to be a 1-D int64 CPU tensor, got "
                           f"one on {batch_sizes.device}")


def check_workspace_kept(op: str, input, workspace) -> None:
    """A backward through a forward that ran with need_workspace=False has nothing to
    differentiate from; say so rather than fail on the workspace's shape."""
    if workspace.shape[0] != flat_rows(input):
        raise RuntimeError(f"{op} ran with need_workspace=False, so it kept no workspace; "
                           f"run it with need_workspace=True to differentiate it")


_IMPL = torch.library.Library("gatedrnn", "IMPL")


def batch_sizes_check(op) -> Callable:
    """check(args): raises the RuntimeError of check_devices when the op's batch_sizes
    argument is on another device than the CPU. Run by the Autograd kernels, above every
    backend: on an H200 (torch 2.11) a direct CUDA op call with batch_sizes on the GPU
    crashed the process (SIGSEGV) below the Autograd kernel instead of raising the C++
    check's error, for a reason not yet found (benchmarks/results/gpu-h200.md)."""
    index = [a.name for a in op._schema.arguments].index("batch_sizes")
    name = f"gatedrnn.{op._schema.name.split('::')[-1]}"

    def check(args):
        bs = args[index] if index < len(args) else None
        if bs is not None and bs.device.type != "cpu":
            check_devices(name, args[0], bs)

    return check

# torch._C._any_requires_grad is the fast check; torch before 2.5 lacks it.
_any_requires_grad = getattr(torch._C, "_any_requires_grad", None) or (
    lambda *args: any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))


def differentiable_grads(ctx, reference, args, output_grads):
    """For a backward run with create_graph=True (double backward: gradient penalties,
    Hessian-vector products, meta-learning): the gradients w.r.t. the op's tensor arguments
    args (what the op was called with), as differentiable functions of those arguments and
    of output_grads. The fused backward ops are first-order only, so this recomputes the
    forward in plain PyTorch (reference.py, the same math as the kernels and torch.nn) and
    differentiates that, keeping the graph: correct to any order, at the speed of a Python
    loop over the steps. One entry per argument: None where no gradient is needed."""
    result = [None] * len(args)
    wrt = [i for i, a in enumerate(args)
           if isinstance(a, torch.Tensor) and ctx.needs_input_grad[i + 1]]
    with torch.enable_grad():
        outputs = reference(*args)
    pairs = [(o, g) for o, g in zip(outputs, output_grads) if g is not None]
    if not wrt or not pairs:
        return result
    grads = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wrt],
                                [g for _, g in pairs], create_graph=True, allow_unused=True)
    for i, g in zip(wrt, grads):
        result[i] = torch.zeros_like(args[i]) if g is None else g
    return result


def register_first_order(name: str, forward: str) -> None:
    """The Autograd kernel of a backward op: it runs it, but refuses to record it for
    differentiation, which it has no formula for (a silent zero would be wrong). Double
    backward goes through the forward op instead (differentiable_grads)."""
    op = getattr(torch.ops.gatedrnn, name).default
    below_autograd = torch._C._after_autograd_keyset

    check_batch_sizes = batch_sizes_check(op)

    def autograd_kernel(keyset, *args):
        check_batch_sizes(args)
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            raise RuntimeError(
                f"gatedrnn.{name} computes first-order gradients and cannot itself be "
                f"differentiated. For second-order gradients, differentiate "
                f"gatedrnn.{forward} (or the module) with create_graph=True: gatedrnn "
                f"supports that")
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below_autograd, *args)

    _IMPL.impl(name, autograd_kernel, "Autograd", with_keyset=True)


# torch.nn's cuDNN RNNs run in float16 under CUDA autocast, whatever the autocast dtype
# (aten/src/ATen/cudnn/AutocastRNN.cpp casts input, states and weights to at::kHalf, so a
# bfloat16 autocast region still gets float16 RNN outputs): so do ours.
CUDA_AUTOCAST_DTYPE = torch.float16


def _floats_cast(args, dtype):
    """args with every floating-point tensor but float64 ones cast to dtype."""
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                 and a.dtype != torch.float64 else a for a in args)


def cuda_autocast_args(args):
    """The arguments a forward op gets under CUDA autocast (CUDA_AUTOCAST_DTYPE)."""
    return _floats_cast(args, CUDA_AUTOCAST_DTYPE)


def register_autocast(name: str, state_outputs: int, cpu_dtypes) -> None:
    """Autocast kernels of a forward op, so that under torch.autocast it gives the output
    dtypes torch.nn's module gives, by the same casts.

    CUDA: torch.nn runs cuDNN in float16 for every cell (CUDA_AUTOCAST_DTYPE).
    CPU: torch.nn has no autocast rule for its RNNs; its dtypes come from the casts of the
    operators inside them (linear layers, oneDNN's LSTM) and from type promotion with the
    states it is given, and depend on the cell and the path. cpu_dtypes(args, low), low the
    autocast dtype, says what ours do: None, run on the arguments as they are; or
    (compute, results): every float tensor other than float64 cast to compute (rounded as
    torch.nn's are where that is low), and the first state_outputs outputs (output and
    states; not the workspace) returned in results' dtypes. The CPU ops take bfloat16
    themselves; float16 they do not, so it is then computed in float32 from values rounded
    to float16, within its rounding of torch.nn's result."""
    op = getattr(torch.ops.gatedrnn, name).default

    def cuda_kernel(*args):
        with torch.autocast("cuda", enabled=False):
            return op(*cuda_autocast_args(args))

    def cpu_kernel(*args):
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        dtypes = cpu_dtypes(args, torch.get_autocast_dtype("cpu"))
        if dtypes is None or all(a.dtype == torch.float64 for a in floats):
            with torch.autocast("cpu", enabled=False):
                return op(*args)
        compute, results = dtypes
        computed = _floats_cast(args, compute)
        if compute not in (torch.bfloat16, torch.float32):
            computed = _floats_cast(computed, torch.float32)
        with torch.autocast("cpu", enabled=False):
            outputs = op(*computed)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        cast = tuple(o.to(results[i]) if i < state_outputs else o for i, o in enumerate(outputs))
        return cast if len(cast) > 1 else cast[0]

    _IMPL.impl(name, cuda_kernel, "AutocastCUDA")
    _IMPL.impl(name, cpu_kernel, "AutocastCPU")


def register_autograd(name: str, backward, setup_context) -> None:
    """Registers the Autograd kernel of torch.ops.gatedrnn.<name>: setup_context(ctx,
    inputs, output) and backward(ctx, *grads) as torch.library.register_autograd takes
    them, without that function's per-call cost.

    Its wrapper fills in default arguments by reading the op's schema, whose argument
    list (a pybind property) it rebuilds once per argument on every call; with its other
    bookkeeping that cost ~65 us of a 0.7 ms training step at (T, N, I, H) =
    (200, 1, 64, 64). This is the same mechanism (an autograd.Function run by the
    Autograd kernel, the op redispatched below autograd), so torch.compile and opcheck
    see no difference. The dispatcher drops trailing arguments equal to their defaults
    (need_workspace=True); they are put back from the schema, read once here.
    """
    op = getattr(torch.ops.gatedrnn, name).default
    arguments = op._schema.arguments
    defaults = tuple(a.default_value for a in arguments)
    below_autograd = torch._C._after_autograd_keyset

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, keyset, *args):
            with torch._C._AutoDispatchBelowAutograd():
                result = op.redispatch(keyset & below_autograd, *args)
            setup_context(ctx, args, result)
            return result

        @staticmethod
        def backward(ctx, *grads):
            return (None, *backward(ctx, *grads))

    Function.__name__ = Function.__qualname__ = f"{name}_autograd"

    check_batch_sizes = batch_sizes_check(op)
    # Function.apply without its Python wrapper, which unwraps functorch's dead wrappers
    # (tensors that outlived a torch.func transform) from every argument first: ~5 us of
    # the ~40 this kernel adds to a small one-step call. Under a transform the wrapper
    # runs (and refuses: Function has no setup_context).
    apply = super(torch.autograd.Function, Function).apply

    def autograd_kernel(keyset, *args):
        check_batch_sizes(args)
        if len(args) < len(defaults):
            args = args + defaults[len(args):]
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            if torch._C._are_functorch_transforms_active():
                return Function.apply(keyset, *args)
            return apply(keyset, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below_autograd, *args)

    _IMPL.impl(name, autograd_kernel, "Autograd", with_keyset=True)


def row_wise_setup_context(tensors: int, workspace_output: int):
    """setup_context of a row-wise forward op (layer_norm_lstm/gru_forward) whose first
    `tensors` arguments are tensors, then reverse, need_workspace, grad_clip and reset: saves
    those tensors, the output, the workspace (output index workspace_output) and reset."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensors], output[0], output[workspace_output],
                              inputs[tensors + 3])
        # Outputs without a gradient arrive as None, as for the plain cells' ops.
        ctx.set_materialize_grads(False)
        ctx.reverse = inputs[tensors]
        ctx.grad_clip = inputs[tensors + 2]
        ctx.monitor = monitor.tag()

    return setup_context


def refuse_reset_double_backward(reset) -> None:
    """A create_graph=True backward runs through reference.py, which has no resets."""
    if reset is not None:
        raise RuntimeError("a backward with create_graph=True (double backward) through a "
                           "forward with per-step resets (reset=...) is not supported")


def refuse_clipped_double_backward(grad_clip) -> None:
    if grad_clip:
        raise RuntimeError("a backward with create_graph=True (double backward) through a "
                           "gradient clipped inside the kernel (recurrent_grad_clip) is not "
                           "supported: clipping has no derivative to differentiate")


def row_wise_double_backward(ctx, reference, args, output_grads, reset):
    """differentiable_grads for a row-wise op (args: its tensor arguments), with None for
    reverse, need_workspace, grad_clip and reset; refused where the kernel clipped the
    gradient, which has no derivative to differentiate, and with resets."""
    refuse_clipped_double_backward(ctx.grad_clip)
    refuse_reset_double_backward(reset)
    grads = differentiable_grads(ctx, reference, (*args, ctx.reverse), output_grads)
    return (*grads, None, None, None)  # + need_workspace, grad_clip, reset
