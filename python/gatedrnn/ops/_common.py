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
