"""LLM2Vec's masked next-token prediction (``objective: mntp``), the baseline stage 1 in the same engine.

The encoder E (LoRA on, bidirectional) reads a text in which a fraction of its tokens (``mask_ratio``) is
selected and corrupted; each selected token is predicted from the final hidden state one position before
it (LLM2Vec's shift: the LM head keeps predicting the next token), through the LM head with the chunked
vocabulary loss. Loss: mean cross-entropy over the batch's selected tokens. No memory tokens are involved.

Corruption (``mask_mode``): ``bert``, what LLM2Vec's published configs use (Hugging Face's default
language-modelling collator): of the selected tokens 80 % become the mask token, 10 % a random token,
10 % stay; ``all``: every selected token becomes the mask token.

Which positions are selected, and how each is corrupted, is a hash of (row seed, position), as row-seeded
dropout draws its masks: a row's masking does not depend on its batch, padding or rank, and a resumed run
draws the same masks.
"""
from __future__ import annotations

import torch

from ..modeling.row_dropout import row_keep
from .vocab_loss import chunked_vocab_loss

SELECT_SALT, CORRUPT_SALT, RANDOM_SALT = 7_777_777, 7_777_778, 7_777_779
MASK_MODES = ("bert", "all")


def mask_positions(seeds: torch.Tensor, lengths: torch.Tensor, width: int, ratio: float, first: int = 0) -> torch.Tensor:
    """Boolean [B, width]: each text position in [first, length) selected with probability ``ratio``."""
    pos = torch.arange(width, device=lengths.device)[None, :]
    drawn = ~row_keep(seeds, SELECT_SALT, (width,), ratio, lengths.device)
    return drawn & (pos < lengths[:, None]) & (pos >= first)


def corrupt(ids: torch.Tensor, selected: torch.Tensor, seeds: torch.Tensor, mask_id: int, mode: str,
            vocab_size: int) -> torch.Tensor:
    """The encoder's input: ``ids`` with the selected positions corrupted as ``mode`` says."""
    masked = torch.full_like(ids, mask_id)
    if mode == "all":
        return torch.where(selected, masked, ids)
    width, device = ids.shape[1], ids.device
    to_mask = row_keep(seeds, CORRUPT_SALT, (width,), 0.2, device)  # 80 %
    to_random = ~to_mask & row_keep(seeds, CORRUPT_SALT + 1, (width,), 0.5, device)  # half of the other 20 %
    # A random token per position, from the same kind of hash (bits of two independent draws).
    bits = [row_keep(seeds, RANDOM_SALT + i, (width,), 0.5, device).long() << i for i in range(24)]
    random_ids = torch.stack(bits).sum(0) % vocab_size
    out = torch.where(selected & to_mask, masked, ids)
    return torch.where(selected & to_random, random_ids, out)


def mntp_loss(model, ids: torch.Tensor, lengths: torch.Tensor, seeds: torch.Tensor, ratio: float,
              mask_id: int, mode: str = "bert") -> torch.Tensor:
    """ids: right-padded text ids [B, T] (no prefix); seeds: one per row."""
    p = model.prefix_ids.numel()
    # Without a prefix the first token has no position before it to be predicted from.
    selected = mask_positions(seeds, lengths, ids.shape[1], ratio, first=0 if p else 1)
    inputs = corrupt(ids, selected, seeds, mask_id, mode, model.config.get_text_config().vocab_size)
    hidden = model.text_states(inputs, lengths)  # [B, p + T, H]: E on [prefix, corrupted text]
    rows, cols = selected.nonzero(as_tuple=True)
    n = rows.numel()
    if n == 0:  # nothing selected in the whole batch: a zero loss that still reaches every trainable weight
        return hidden.sum() * 0.0
    predictors = hidden[rows, cols + p - 1]  # the state one position before each selected token
    weights = torch.full((n,), 1.0 / n, device=hidden.device)
    return chunked_vocab_loss(predictors, weights, model.logits, targets=ids[rows, cols], chunk=model.loss_chunk)


def mask_token_id(tokenizer, configured: str | None = None) -> int:
    """``configured`` (a vocabulary entry), else the tokenizer's mask token, else ``_`` (what LLM2Vec uses
    for Llama and Mistral, whose tokenizers have none)."""
    from data_prep.errors import UserError

    token = configured or tokenizer.mask_token or "_"
    vocab = tokenizer.get_vocab()
    if token not in vocab:
        raise UserError(f"objective.mask_token {token!r} is not a single entry of the tokenizer's vocabulary "
                        f"({getattr(tokenizer, 'name_or_path', '')}); name one that is")
    return int(vocab[token])
