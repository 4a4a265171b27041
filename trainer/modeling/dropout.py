"""Where the recipe's dropout rates land on the modules.

The attention modules of every supported family copy ``config.attention_dropout`` when they are built
(``self.attention_dropout = config.attention_dropout``) and read their copy in forward, so a rate written
into the config afterwards is silently ignored. The rate is set on every attention module here, and
``trainer/modeling/effective.py`` reads it back before training starts.
"""
from __future__ import annotations

from torch import nn

from data_prep.errors import UserError


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules: those holding their own attention-dropout rate."""
    return [m for m in model.modules()
            if isinstance(getattr(m, "attention_dropout", None), (int, float)) and not isinstance(m, nn.Dropout)]


def set_attention_dropout(model: nn.Module, p: float) -> int:
    """Set the attention-dropout rate where each module reads it (and in the config, for code that reads
    it there); returns how many attention modules were set."""
    modules = attention_modules(model)
    if not modules:
        raise UserError(f"{type(model).__name__}: no attention module with an attention_dropout attribute; "
                        "this architecture's attention dropout cannot be set")
    for m in modules:
        m.attention_dropout = float(p)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config.attention_dropout = float(p)
    return len(modules)


def enable_row_seeded_dropout(compressor, attention_dropout: float) -> None:
    """The contrastive stages' dropout: ``attention_dropout`` on every attention module, and every dropout
    (LoRA's and attention's) drawn from row seeds, so that gradient caching gives the uncached gradients."""
    from . import row_dropout
    from .attention import supported_attention

    set_attention_dropout(compressor.model, attention_dropout)
    config = compressor.config
    if attention_dropout > 0:
        # The wrapper hands over to the model's own attention whenever dropout is off (eval, encode).
        config._attn_implementation = row_dropout.register_attention(config._attn_implementation,
                                                                     supported_attention(config))
    row_dropout.install(compressor.model)
