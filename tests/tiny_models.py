"""Tiny random decoders of each supported family, and a tiny compressor, for CPU tests."""
from __future__ import annotations

import torch

VOCAB = 97

FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 8}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", {"head_dim": 8, "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 8, "sliding_window": 64}),
}


def tiny_config(family: str = "llama", **overrides):
    import transformers

    cls_name, extra = FAMILIES[family]
    settings = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    return getattr(transformers, cls_name)(**{**settings, **extra, **overrides})


def tiny_causal_lm(family: str = "llama", attention: str = "auto", seed: int = 0, **overrides):
    """``attention``: a recipe choice, resolved as training resolves it (``auto``: Gemma 2 gets eager)."""
    import transformers

    from trainer.modeling.attention import resolve_attention

    cfg = tiny_config(family, **overrides)
    attention = resolve_attention(attention, cfg)
    cfg._attn_implementation = attention
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attention).float()
    return model.eval()


def tiny_compressor(family: str = "llama", k: int = 3, prefix=(1,), seed: int = 0, lora_dropout: float = 0.0,
                    randomize_lora: bool = True, attention: str = "auto", **overrides):
    from trainer.modeling.adapters import LoraSettings
    from trainer.modeling.compressor import build_compressor

    base = tiny_causal_lm(family, attention=attention, seed=seed, **overrides)
    comp = build_compressor(base, k, list(prefix), pad_id=0, lora=LoraSettings(r=4, alpha=8, dropout=lora_dropout), seed=seed)
    if randomize_lora:  # LoRA B starts at zero; make the adapter matter so on/off mistakes show
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in comp.named_parameters():
            if "lora_B" in name:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return comp


def random_batch(b: int = 3, seed: int = 0, ctx=(4, 12), cont=(3, 9)):
    g = torch.Generator().manual_seed(seed)
    cl = torch.randint(ctx[0], ctx[1] + 1, (b,), generator=g)
    ll = torch.randint(cont[0], cont[1] + 1, (b,), generator=g)
    c = torch.zeros(b, int(cl.max()), dtype=torch.long)
    y = torch.zeros(b, int(ll.max()), dtype=torch.long)
    for i in range(b):
        c[i, : cl[i]] = torch.randint(3, VOCAB, (int(cl[i]),), generator=g)
        y[i, : ll[i]] = torch.randint(3, VOCAB, (int(ll[i]),), generator=g)
    return {"context": c, "context_len": cl, "continuation": y, "continuation_len": ll}
