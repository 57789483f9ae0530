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
