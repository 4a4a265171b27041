"""Recipe settings take effect on the modules: attention dropout reaches every attention module of every
family, the row-seeded attention computes what each model's own attention computes (soft-capping and
sliding windows included), the guard stops a model whose modules disagree with the recipe, attention
implementations are chosen per model, and the bidirectionality self-check catches a causal encoder."""
import json

import pytest
import torch

from data_prep.errors import UserError
from tiny_models import FAMILIES, VOCAB, tiny_compressor, tiny_config
from trainer.engine.gradcache import Rows, encode
from trainer.modeling import row_dropout
from trainer.modeling.adapters import LoraSettings
from trainer.modeling.attention import resolve_attention, run_decoder
from trainer.modeling.dropout import attention_modules, enable_row_seeded_dropout
from trainer.modeling.effective import SettingsMismatch, verify
from trainer.modeling.effective import expected_for as _expected_for
from trainer.modeling.probe import NotBidirectional
from trainer.modeling.settings import ModelSettings


def expected_for(*args, **kwargs):
    """The tiny compressors here start every input with token 1."""
    return _expected_for(*args, prefix_ids=[1], **kwargs)


def rows(n=4, seed=0, lo=3, hi=10):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    ids = torch.randint(3, VOCAB, (n, hi), generator=g)
    ids[torch.arange(hi)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def views(comp, ids, lengths):
    """The two SimCSE views of each text: the same rows under two dropout seeds."""
    embed = lambda i, l: comp.embed_texts(i, l)
    with torch.no_grad():
        a = encode(embed, Rows(ids, lengths, torch.arange(len(ids)) * 2))
        b = encode(embed, Rows(ids, lengths, torch.arange(len(ids)) * 2 + 1))
    return a, b


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_attention_dropout_makes_the_two_views_differ(family):
    ids, lengths = rows()
    comp = tiny_compressor(family, lora_dropout=0.0).train()
    enable_row_seeded_dropout(comp, 0.0)
    a, b = views(comp, ids, lengths)
    assert torch.equal(a, b), "no dropout at all: both views are one encoding"

    comp = tiny_compressor(family, lora_dropout=0.0).train()
    enable_row_seeded_dropout(comp, 0.2)
    modules = attention_modules(comp.model)
    assert len(modules) == comp.config.num_hidden_layers and all(m.attention_dropout == 0.2 for m in modules)
    calls = row_dropout.STATS["dropout_calls"]
    a, b = views(comp, ids, lengths)
    assert row_dropout.STATS["dropout_calls"] > calls, "the row-seeded attention path did not run"
    assert (a - b).abs().max() > 1e-3 * a.abs().max(), "attention dropout 0.2 must give two different views"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_row_seeded_attention_computes_the_models_own_attention(family, monkeypatch):
    """With every probability kept, the explicit path equals the model's own implementation: same
    scaling, soft-capping (Gemma 2), masks, sliding windows (Gemma 2 and Mistral at window 4)."""
    overrides = {"sliding_window": 4} if family in ("gemma2", "mistral") else {}
    if family == "gemma2":
        overrides["attn_logit_softcapping"] = 0.5  # binding at a tiny model's logit scale
    ids, lengths = rows(seed=5, lo=3, hi=9)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    comp = tiny_compressor(family, lora_dropout=0.0, **overrides).train()
    own = {b: run_decoder(comp.decoder, bidirectional=b, input_ids=ids, attention_mask=mask) for b in (True, False)}
    enable_row_seeded_dropout(comp, 0.3)
    monkeypatch.setattr(row_dropout, "row_dropout", lambda x, p, salt, seeds: x)  # keep everything
    calls = row_dropout.STATS["dropout_calls"]
    with row_dropout.row_seeds(torch.arange(len(ids))):
        explicit = {b: run_decoder(comp.decoder, bidirectional=b, input_ids=ids, attention_mask=mask) for b in (True, False)}
    assert row_dropout.STATS["dropout_calls"] >= calls + 2 * comp.config.num_hidden_layers
    for b in (True, False):
        real = mask.bool()
        err = (explicit[b] - own[b])[real].abs().max() / own[b][real].abs().max()
        assert err < 1e-5, (family, "bidirectional" if b else "causal", err.item())


def test_row_seeded_attention_refuses_what_it_does_not_implement():
    comp = tiny_compressor("llama", lora_dropout=0.0).train()
    enable_row_seeded_dropout(comp, 0.2)
    impl = row_dropout._row_dropout_attention("sdpa", False)
    module = attention_modules(comp.model)[0]
    q = torch.randn(1, 4, 3, 8)
    with row_dropout.row_seeds(torch.tensor([1])), pytest.raises(UserError, match="s_aux"):
        impl(module, q, q[:, :2], q[:, :2], None, dropout=0.2, s_aux=torch.zeros(4))


def settings(**lora):
    return ModelSettings(memory_tokens=3, attention="auto", dtype="float32", lora=LoraSettings(**{"r": 4, "alpha": 8, "dropout": 0.0, **lora}))


def test_guard_reads_settings_back_from_the_modules():
    comp = tiny_compressor("llama", lora_dropout=0.1).train()
    enable_row_seeded_dropout(comp, 0.2)
    eff = verify(comp, expected_for(settings(dropout=0.1), "sdpa", 0.2, row_seeded=True))
    assert eff["attention_dropout"] == 0.2 and eff["attention_dropout_row_seeded"]
    assert eff["lora"] == {"layers": 12, "r": 4, "alpha": 8.0, "dropout": 0.1, "dropout_row_seeded": True,
                           "targets": sorted(LoraSettings().target_modules)}
    assert eff["frozen_base"] and eff["training_mode"] and eff["first_token_ids"] == [1]
    assert eff["memory_tokens"]["k"] == 3 and eff["memory_tokens"]["trainable"]


def test_guard_stops_on_each_kind_of_mismatch():
    want = expected_for(settings(), "sdpa", 0.2, row_seeded=True)

    # Today's bug: the rate written into the config after the modules copied it.
    comp = tiny_compressor("llama").train()
    comp.config.attention_dropout = 0.2
    with pytest.raises(SettingsMismatch, match=r"attention dropout: recipe 0\.2, modules 0\.0"):
        verify(comp, want)

    comp = tiny_compressor("llama").train()
    enable_row_seeded_dropout(comp, 0.2)
    verify(comp, want)
    cases = [
        (lambda c: c.eval(), "training mode"),
        (lambda c: setattr(attention_modules(c.model)[1], "attention_dropout", 0.1), "attention dropout"),
        (lambda c: c.memory.weight.requires_grad_(False), "memory tokens trainable"),
        (lambda c: c.model.get_base_model().lm_head.weight.requires_grad_(True), "frozen base"),
    ]
    for breaks, needle in cases:
        comp = tiny_compressor("llama").train()
        enable_row_seeded_dropout(comp, 0.2)
        breaks(comp)
        with pytest.raises(SettingsMismatch, match=needle) as e:
            verify(comp, want)
        assert "\n" not in str(e.value)
    comp = tiny_compressor("llama").train()
    enable_row_seeded_dropout(comp, 0.2)
    for field, value, needle in [("lora_r", 16, "model.lora.r"), ("lora_dropout", 0.05, "model.lora.dropout"),
                                 ("lora_targets", ["q_proj"], "target_modules"), ("memory_tokens", 8, "memory_tokens"),
                                 ("attention", "eager", "attention implementation")]:
        wrong = expected_for(settings(), "sdpa", 0.2, row_seeded=True)
        setattr(wrong, field, value)
        with pytest.raises(SettingsMismatch, match=needle):
            verify(comp, wrong)


def test_attention_is_chosen_per_model():
    assert resolve_attention("auto", tiny_config("llama")) == "sdpa"  # no GPU or flash-attn here
    assert resolve_attention("auto", tiny_config("gemma2")) == "eager"  # no SDPA path: soft-capped logits
    with pytest.raises(UserError, match="Gemma2 does not support it") as e:
        resolve_attention("sdpa", tiny_config("gemma2"))
    assert "model.attention=auto" in str(e.value)
    with pytest.raises(UserError, match="flash-attn does not import here"):
        resolve_attention("flash_attention_2", tiny_config("llama"))
    assert resolve_attention("eager", tiny_config("llama")) == "eager"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bidirectionality_check_passes_on_every_family(family):
    comp = tiny_compressor(family).train()
    probe = comp.check_bidirectional()
    assert probe["encoder_change"] > 1e-2 and probe["causal_change"] == 0.0
    assert comp.training, "the check restores training mode"


def _register(name, always_causal: bool):
    """An attention implementation that ignores the per-call switch: always causal, or never."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def attention(module, q, k, v, mask, **kwargs):
        kwargs["is_causal"] = always_causal
        return sdpa_attention_forward(module, q, k, v, None, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


@pytest.mark.parametrize("always_causal, needle", [(True, "the encoder call is causal"),
                                                   (False, "the causal call sees later tokens")])
def test_bidirectionality_check_catches_an_attention_that_ignores_the_switch(always_causal, needle):
    import transformers

    comp = tiny_compressor("llama").train()
    comp.config._attn_implementation = _register(f"llm2comp_test_{always_causal}", always_causal)
    with pytest.raises(NotBidirectional) as e:
        comp.check_bidirectional()
    msg = str(e.value)
    assert needle in msg and transformers.__version__ in msg and f"llm2comp_test_{always_causal}" in msg


def test_a_causal_encoder_is_refused_at_load(tmp_path, monkeypatch):
    import trainer.serving.encoder as encoder_module
    from trainer.serving.encoder import Encoder

    comp = tiny_compressor("llama")
    base = comp.model.get_base_model()
    base.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file({"memory": comp.memory.weight.detach().contiguous()}, tmp_path / "memory.safetensors")
    (tmp_path / "llm2comp_config.json").write_text(json.dumps({"prefix_ids": [1], "pad_id": 0, "max_length": 16}))
    monkeypatch.setattr(encoder_module.Encoder, "__init__", lambda self, model, *a: setattr(self, "model", model))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(encoder_module, "load_attention", lambda *a: _register("llm2comp_test_load", True))
    with pytest.raises(NotBidirectional, match="llm2comp_test_load"):
        Encoder.from_pretrained(str(tmp_path), device="cpu")
