"""``model.train_input_embeddings``: a trainable delta on the encoder's input embeddings (stage 1).

The authors train the encoder copy's whole embedding table. Here E and D share one table (and SmolLM2
ties it to the LM head), so E gets ``embed(ids) + delta[ids]`` and D keeps the frozen table: the teacher
and the student's decoder are unchanged. The delta starts at zero; only rows of tokens seen in training
move (AdamW leaves rows with no gradient at zero), so it is saved sparsely: the rows that changed.

Later stages and export fold it into the base's input embedding weights (E is all they run). With tied
embeddings that also moves the LM head of the folded model, which no later stage or encoder uses.
"""
from __future__ import annotations

import torch
from torch import nn

FILE = "embedding_delta.safetensors"


class EmbeddingDelta(nn.Module):
    """A module (not a bare parameter) so that ZeRO-3 gathers its weight when it runs."""

    def __init__(self, vocab_size: int, hidden: int, dtype: torch.dtype, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, hidden, dtype=dtype, device=device))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)


def save_delta(delta: torch.Tensor, path: str) -> int:
    """The rows of ``delta`` [V, H] that are not zero, as ``rows`` [n] and ``delta`` [n, H]; returns n."""
    from safetensors.torch import save_file

    delta = delta.detach().float().cpu()
    rows = torch.nonzero(delta.abs().sum(-1) > 0).flatten()
    save_file({"rows": rows.contiguous(), "delta": delta[rows].contiguous(), "shape": torch.tensor(delta.shape)}, path)
    return int(rows.numel())


def load_delta(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    d = load_file(path)
    return d["rows"], d["delta"]


@torch.no_grad()
def fold_delta(embedding: nn.Module, path: str) -> None:
    """Add a saved delta (output space of ``embedding``) into its weight: ``embedding(ids)`` then gives what
    E saw in training."""
    rows, values = load_delta(path)
    weight = embedding.weight
    scale = getattr(embedding, "embed_scale", None)  # Gemma scales the table's output by sqrt(hidden)
    values = values.to(weight.device, torch.float32) / (float(scale) if scale is not None else 1.0)
    weight[rows.to(weight.device)] = (weight[rows.to(weight.device)].float() + values).to(weight.dtype)
