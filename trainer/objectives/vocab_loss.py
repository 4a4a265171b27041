"""Token-level losses over the vocabulary without materialising [tokens × vocab] logits for the batch.

Hidden states go through the LM head a chunk of tokens at a time. Each chunk's loss and its gradient
with respect to the chunk's hidden states are computed together in the forward pass (as fused
linear-cross-entropy kernels do), after which the chunk's logits are freed; backward only scales the
stored [N, H] gradient. Peak memory is one chunk's logits instead of the batch's, and nothing is
recomputed. The LM head is frozen (only LoRA and memory tokens train), so no gradient reaches it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch


class _ChunkedVocabLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weights, head, teacher_hidden, targets, chunk):
        n = hidden.shape[0]
        grad = torch.zeros_like(hidden) if hidden.requires_grad else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            with torch.enable_grad():
                h = hidden[s:e].detach().requires_grad_(grad is not None)
                log_ps = torch.log_softmax(head(h).float(), -1)
                if teacher_hidden is not None:
                    with torch.no_grad():
                        log_pt = torch.log_softmax(head(teacher_hidden[s:e]).float(), -1)
                    per_token = (log_pt.exp() * (log_pt - log_ps)).sum(-1)  # KL(p_t || p_s)
                else:
                    per_token = -log_ps.gather(-1, targets[s:e, None]).squeeze(-1)  # NLL
                loss = (per_token * weights[s:e]).sum()
            if grad is not None:
                (grad[s:e],) = torch.autograd.grad(loss, h)
            total += loss.detach()
        ctx.save_for_backward(grad if grad is not None else hidden.new_zeros(0))
        return total

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None, None


def chunked_vocab_loss(
    hidden: torch.Tensor,
    weights: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    teacher_hidden: Optional[torch.Tensor] = None,
    targets: Optional[torch.Tensor] = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Σ_t weights[t] · loss_t, where loss_t is KL(p_teacher ‖ p_student) if ``teacher_hidden`` is given,
    else −log p_student(targets[t]). ``hidden``, ``teacher_hidden``: [N, H]; ``weights``, ``targets``: [N]."""
    if (teacher_hidden is None) == (targets is None):
        raise ValueError("give exactly one of teacher_hidden (KL) and targets (NLL)")
    return _ChunkedVocabLoss.apply(hidden, weights.float(), head, teacher_hidden, targets, max(1, int(chunk)))
