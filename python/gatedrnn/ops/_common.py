"""Helpers shared by the per-cell op registrations."""
import torch


def flat_rows(input: torch.Tensor) -> int:
    """Rows of the flat [R, *] layout: T*N for padded [T, N, I], R for packed [R, I]."""
    return input.shape[0] * input.shape[1] if input.dim() == 3 else input.shape[0]


def output_like(input: torch.Tensor, features: int) -> torch.Tensor:
    """An empty output laid out like input: [T, N, features] or [R, features]."""
    return input.new_empty((*input.shape[:-1], features))


def zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def grad_if(given, grad):
    """The gradient of an optional input: None when the input was None."""
    return grad if given is not None else None


def fake_backward_grads(input, states, w_ih, w_hh):
    """Fake results common to the *_backward ops: grad_input, one grad per initial state,
    grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh (LSTM appends grad_w_hr)."""
    gates = w_ih.shape[0]
    grads = [torch.empty_like(input, memory_format=torch.contiguous_format)]
    grads += [torch.empty_like(s, memory_format=torch.contiguous_format) for s in states]
    grads += [w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
              w_ih.new_empty((gates,)), w_ih.new_empty((gates,))]
    return grads


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

# torch._C._any_requires_grad is the fast check; torch before 2.5 lacks it.
_any_requires_grad = getattr(torch._C, "_any_requires_grad", None) or (
    lambda *args: any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))


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

    def autograd_kernel(keyset, *args):
        if len(args) < len(defaults):
            args = args + defaults[len(args):]
        if torch.is_grad_enabled() and _any_requires_grad(*args):
            return Function.apply(keyset, *args)
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & below_autograd, *args)

    _IMPL.impl(name, autograd_kernel, "Autograd", with_keyset=True)
