"""The settings a built model really has, read back from its modules, and the guard that stops a run whose
modules disagree with its recipe.

A recipe value that is accepted and then ignored (an attention-dropout rate written where no module reads
it, a model left in eval mode by ``from_pretrained``) trains something other than the recipe says while
logging a plausible loss. So after a model is built, every knob that lands on modules is read from the
modules themselves, compared with what the recipe asked for, and the result is logged and written into
the run directory (``effective_settings.json``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from torch import nn

from data_prep import jsonio
from data_prep.errors import UserError

from .adapters import lora_layers
from .dropout import attention_modules
from .memory import embedding_stats, pairwise_cosine, slot_spread

# Below this spread (slot_spread: distance of the slots from their centre over the tokens' spread), fresh
# slots are K near-copies of one point ('mean' init, ~0.01); 'sampled' slots read ~0.9.
MEAN_INIT_SPREAD = 0.1


class SettingsMismatch(UserError):
    pass


@dataclass
class Expected:
    """What the recipe asks of the modules."""

    attention: str  # the resolved implementation (``auto`` already decided for this model)
    attention_dropout: float
    row_seeded: bool  # contrastive stages: dropout drawn from row seeds
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_targets: list[str]
    pooling: str
    memory_tokens: int  # 0 for mean / last pooling
    memory_trainable: bool
    first_token_ids: list[int] = field(default_factory=list)  # what model.first_token resolved to
    memory_init: str = "sampled"  # how fresh memory slots were drawn (model.memory_init)
    memory_source: str = "fresh"  # fresh | the run the slots were carried from
    input_embeddings_trainable: bool = False  # model.train_input_embeddings
    dtype: Optional[str] = None  # model.dtype (auto already resolved); None: not checked
    compiled: bool = False  # train.compile: every decoder block compiled


def _dropout_rate(module: nn.Module) -> float:
    return float(getattr(module, "p", 0.0)) if not isinstance(module, nn.Identity) else 0.0


def _one(values) -> object:
    values = sorted(set(values), key=repr)
    return values[0] if len(values) == 1 else values


def read_effective(compressor) -> dict:
    """Every module-level knob, from the modules (not from the config that was meant to set them)."""
    from .row_dropout import ATTENTION_NAME, RowDropout

    model = compressor.model
    attn = attention_modules(model)
    layers = lora_layers(model)
    drops = [d for layer in layers for d in layer.lora_dropout.values()]
    names = {id(m): n for n, m in model.named_modules()}
    implementations = [getattr(m, "config", compressor.config)._attn_implementation for m in attn]
    trainable = [(n, p) for n, p in compressor.named_parameters() if p.requires_grad]
    strays = [n for n, _ in trainable if "lora_" not in n and not n.startswith(("memory.", "embedding_delta."))]
    memory = compressor.memory.weight if compressor.memory is not None else None
    delta = compressor.embedding_delta
    spread = None
    if memory is not None:
        base = compressor.model.get_base_model()
        _, std = embedding_stats(base.get_input_embeddings(), compressor.config.get_text_config().vocab_size)
        spread = round(slot_spread(memory, std), 4)
    from .compile import compiled_blocks, decoder_blocks

    return {
        "model_type": compressor.config.model_type,
        "compiled_blocks": [compiled_blocks(compressor.decoder), len(decoder_blocks(compressor.decoder))],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "attention_implementation": _one(implementations),
        "attention_modules": len(attn),
        "attention_dropout": _one(float(m.attention_dropout) for m in attn),
        "attention_dropout_row_seeded": all(i.startswith(ATTENTION_NAME) for i in implementations),
        "lora": {
            "layers": len(layers),
            "r": _one(int(layer.r["default"]) for layer in layers),
            "alpha": _one(float(layer.lora_alpha["default"]) for layer in layers),
            "dropout": _one(_dropout_rate(d) for d in drops),
            "dropout_row_seeded": bool(drops) and all(isinstance(d, RowDropout) for d in drops),
            "targets": sorted({names[id(layer)].rsplit(".", 1)[-1] for layer in layers}),
        },
        "pooling": compressor.pooling,
        "packing": compressor.packing,
        "first_token_ids": compressor.prefix_ids.tolist(),
        "memory_tokens": {"k": compressor.k,
                          "trainable": memory is not None and bool(memory.requires_grad),
                          # Before any step: distinct slots read well below 1 (K copies of one point read ~1).
                          "pairwise_cosine": round(pairwise_cosine(memory), 4) if memory is not None else None,
                          "spread": spread,
                          "norm": round(float(memory.detach().float().norm(dim=-1).mean()), 4) if memory is not None else None},
        "input_embeddings_trainable": delta is not None and bool(delta.weight.requires_grad),
        "trainable_parameters": sum(p.numel() for _, p in trainable),
        "frozen_base": not strays,
        "trainable_outside_lora_and_memory": strays[:3],
        "training_mode": all(m.training for m in compressor.modules()),
    }


def mismatches(effective: dict, want: Expected) -> list[str]:
    """One ``key: recipe X, modules Y`` entry per knob whose modules disagree with the recipe."""
    lora = effective["lora"]
    checks = [
        ("attention implementation", want.attention, effective["attention_implementation"]),
        ("attention dropout", want.attention_dropout, effective["attention_dropout"]),
        ("row-seeded attention dropout", want.row_seeded and want.attention_dropout > 0,
         effective["attention_dropout_row_seeded"]),
        ("model.lora.r", want.lora_r, lora["r"]),
        ("model.lora.alpha", float(want.lora_alpha), lora["alpha"]),
        ("model.lora.dropout", float(want.lora_dropout), lora["dropout"]),
        ("row-seeded LoRA dropout", want.row_seeded and want.lora_dropout > 0,
         lora["dropout_row_seeded"] if want.lora_dropout > 0 else False),
        ("model.lora.target_modules", sorted(want.lora_targets), lora["targets"]),
        ("model.pooling", want.pooling, effective["pooling"]),
        ("model.memory_tokens", want.memory_tokens, effective["memory_tokens"]["k"]),
        ("memory tokens trainable", want.memory_trainable, effective["memory_tokens"]["trainable"]),
        ("model.first_token ids", list(want.first_token_ids), effective["first_token_ids"]),
        ("model.train_input_embeddings", want.input_embeddings_trainable, effective["input_embeddings_trainable"]),
        ("frozen base (only LoRA and memory tokens train)", True, effective["frozen_base"]),
        ("training mode (dropout active)", True, effective["training_mode"]),
        ("train.compile (blocks compiled)", want.compiled,
         effective["compiled_blocks"][0] == effective["compiled_blocks"][1] > 0 if want.compiled
         else effective["compiled_blocks"][0] > 0),
    ]
    if want.dtype is not None:
        checks.append(("model.dtype", want.dtype, effective["dtype"]))
    spread = effective["memory_tokens"]["spread"]
    if want.memory_source == "fresh" and spread is not None and want.memory_tokens > 1:
        # The slots as drawn: 'sampled' must be distinct, 'mean' near-copies of one point.
        looks = "mean" if spread < MEAN_INIT_SPREAD else "sampled"
        checks.append(("model.memory_init (read from the slots' spread)", want.memory_init, looks))
    out = [f"{key}: recipe {a!r}, modules {b!r}" for key, a, b in checks if a != b]
    if effective["attention_modules"] == 0:
        out.append("no attention module found")
    return out


def verify(compressor, want: Expected, probe: Optional[dict] = None) -> dict:
    """The effective settings, or one line naming every knob the modules do not carry as the recipe says."""
    effective = read_effective(compressor)
    bad = mismatches(effective, want)
    if bad:
        raise SettingsMismatch("the built model does not carry the recipe's settings: " + "; ".join(bad))
    if probe is not None:
        effective["bidirectionality_probe"] = probe
    return effective


def expected_for(settings, attention: str, attention_dropout: float, row_seeded: bool,
                 memory_trainable: bool = True, prefix_ids: Optional[list[int]] = None,
                 memory_source: str = "fresh", compiled: bool = False) -> Expected:
    """``settings``: the recipe's ModelSettings; ``attention``: what the loader resolved it to;
    ``memory_trainable``: whether the stage trains the memory tokens (when the pooling has them);
    ``prefix_ids``: what ``model.first_token`` resolved to; ``memory_source``: fresh or carried."""
    if row_seeded and attention_dropout > 0:
        from .row_dropout import ATTENTION_NAME

        attention = attention if attention.startswith(ATTENTION_NAME) else f"{ATTENTION_NAME}_{attention}"
    lora = settings.lora
    memory = settings.pooling == "memory"
    return Expected(attention, float(attention_dropout), row_seeded, lora.r, lora.alpha, lora.dropout,
                    list(lora.target_modules), settings.pooling, settings.memory_tokens if memory else 0,
                    memory and memory_trainable, list(prefix_ids or []), settings.memory_init, memory_source,
                    bool(settings.train_input_embeddings),
                    settings.dtype if settings.dtype != "auto" else None, bool(compiled))


def write_effective(effective: dict, output_dir: str) -> str:
    import os

    path = os.path.join(output_dir, "effective_settings.json")
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w") as fh:
        jsonio.dump(effective, fh, indent=2)
    return path


def summary(effective: dict) -> str:
    """The effective settings on one log line."""
    lora = effective["lora"]
    probe = effective.get("bidirectionality_probe", {})
    parts = [
        f"{effective['model_type']} {effective['dtype']}",
        f"attention {effective['attention_implementation']} (dropout {effective['attention_dropout']}"
        f"{', row-seeded' if effective['attention_dropout_row_seeded'] else ''})",
        f"LoRA r={lora['r']} alpha={lora['alpha']} dropout={lora['dropout']} on {','.join(lora['targets'])}"
        f" ({lora['layers']} layers)",
        f"first token {effective['first_token_ids'] or 'none'}",
        f"pooling {effective['pooling']}" + (f" of K={effective['memory_tokens']['k']} memory tokens"
                                              f"{'' if effective['memory_tokens']['trainable'] else ' (frozen)'}"
                                              f", pairwise cosine {effective['memory_tokens']['pairwise_cosine']}"
                                              f", spread {effective['memory_tokens']['spread']}"
                                              if effective["memory_tokens"]["k"] else ""),
        *(["E's input-embedding delta trains"] if effective.get("input_embeddings_trainable") else []),
        f"{effective['trainable_parameters']:,} trainable parameters",
        f"packing {effective['packing']} tokens a row" if effective.get("packing") else "padded batches",
        *([f"{effective['compiled_blocks'][0]} decoder blocks compiled"] if effective.get("compiled_blocks", [0])[0] else []),
    ]
    if probe:
        parts.append(f"bidirectional check passed (position 0 moved {probe['encoder_change']:.2g} encoder, "
                     f"{probe['causal_change']:.2g} causal)")
    return "effective settings: " + "; ".join(parts)

