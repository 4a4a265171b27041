"""Stage 1's fixes against the authors' method, each read back from the built modules or shown to change the
output (issue 24): the fixed first token, distinct memory slots at the scale of real tokens, frozen memory
in stages 2-3, E's input-embedding delta, warm-up from a floor; and the held-out compression diagnostics,
equal to a naive computation, on windows picked by a fixed rule."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data_prep.errors import UserError
from tiny_models import FAMILIES, VOCAB, random_batch, tiny_causal_lm, tiny_compressor
from trainer.modeling.adapters import LoraSettings
from trainer.modeling.compressor import build_compressor
from trainer.modeling.first_token import resolve_first_token


# -- the first token ---------------------------------------------------------------------------------
class Tok:
    """The tokenizer attributes the resolution reads."""

    def __init__(self, bos=None, eos=None, vocab=None):
        self.bos_token_id, self.eos_token_id = bos, eos
        self.vocab = vocab or {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}

    def get_vocab(self):
        return self.vocab


def test_first_token_resolution():
    llama = {"prefix_ids": [1], "name_or_path": "llama"}  # a tokenizer that adds BOS
    smol = {"prefix_ids": [], "name_or_path": "smollm2"}  # one that adds nothing
    assert resolve_first_token(Tok(bos=1), llama, "auto") == [1]
    assert resolve_first_token(Tok(bos=1, eos=2), smol, "auto") == [1]  # its bos_token, though it adds none
    assert resolve_first_token(Tok(eos=2), smol, "auto") == [2]  # no bos: the document separator
    assert resolve_first_token(Tok(bos=1), smol, "<|endoftext|>") == [0]
    assert resolve_first_token(Tok(bos=1), llama, "none") == []
    assert resolve_first_token(Tok(bos=1), smol, "auto", inherited=[0]) == [0]  # a chained stage keeps its run's
    assert resolve_first_token(Tok(bos=1), smol, "<|endoftext|>", inherited=[0]) == [0]
    with pytest.raises(UserError, match="init.init_from"):
        resolve_first_token(Tok(bos=1), smol, "<|im_start|>", inherited=[0])
    with pytest.raises(UserError, match="not a single entry"):
        resolve_first_token(Tok(bos=1), smol, "<|nope|>")
    with pytest.raises(UserError, match="neither a bos nor an eos"):
        resolve_first_token(Tok(), smol, "auto")


def tiny_settings(tmp_path, tokenizer, **model):
    from trainer.modeling.settings import ModelSettings

    if not (tmp_path / "base").exists():
        tiny_causal_lm("llama", vocab_size=49152).save_pretrained(tmp_path / "base")
    return ModelSettings(path=str(tmp_path / "base"), tokenizer=tokenizer, dtype="float32", attention="sdpa",
                         memory_tokens=3, lora=LoraSettings(r=4, alpha=8, dropout=0.0), **model)


def test_first_token_reaches_encoder_teacher_and_student(tmp_path, smollm2_tokenizer):
    """SmolLM2's tokenizer adds nothing; model.first_token puts <|endoftext|> (id 0) first in E's input, the
    teacher's and the student's, read back from the modules and from what they compute."""
    from trainer.modeling.build import build_model

    model, identity, lineage = build_model(tiny_settings(tmp_path, smollm2_tokenizer, first_token="<|endoftext|>"))
    assert identity["prefix_ids"] == [] and model.prefix_ids.tolist() == [0] and lineage["prefix_ids"] == [0]
    none, _, _ = build_model(tiny_settings(tmp_path, smollm2_tokenizer, first_token="none"))
    assert none.prefix_ids.tolist() == []
    model.eval()
    lm, emb = model.model.get_base_model(), model.embed
    b = random_batch(1, seed=3)
    c, y = b["context"][0].tolist(), b["continuation"][0].tolist()
    with torch.no_grad():
        memory = model.memory_states(b["context"], b["context_len"])
        enc = lm(inputs_embeds=torch.cat([emb(torch.tensor([[0] + c])), model.memory.weight[None]], 1),
                 is_causal=False, output_hidden_states=True).hidden_states[-1][:, -3:]
        assert torch.allclose(memory, enc, atol=1e-5)
        teacher = model.teacher_hidden(b["context"], b["context_len"], b["continuation"], b["continuation_len"])
        full = lm(input_ids=torch.tensor([[0] + c + y]), output_hidden_states=True).hidden_states[-1][0]
        assert torch.allclose(teacher, full[len(c) : len(c) + len(y)], atol=1e-5)
        student = model.decoder_hidden(memory, b["continuation"], b["continuation_len"])
        s_in = torch.cat([emb(torch.tensor([[0]])), memory, emb(torch.tensor([y]))], 1)
        ref = lm(inputs_embeds=s_in, output_hidden_states=True).hidden_states[-1][0]
        assert torch.allclose(student, ref[3 : 3 + len(y)], atol=1e-5)
        # The setting changes what E computes.
        assert (none.memory_states(b["context"], b["context_len"]) - memory).abs().max() > 1e-4


# -- the memory slots ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))  # Gemma scales embeddings by sqrt(hidden)
@pytest.mark.parametrize("mode", ["sampled", "mean"])
def test_memory_slots_start_distinct_at_the_scale_of_real_tokens(family, mode):
    base = tiny_causal_lm(family)
    with torch.no_grad():  # real embedding matrices have a clearly nonzero mean; give this one one
        base.get_input_embeddings().weight += 0.2 * torch.randn(base.config.hidden_size,
                                                                generator=torch.Generator().manual_seed(18))
    comp = build_compressor(base, 6, [1], pad_id=0, lora=LoraSettings(r=4, alpha=8, dropout=0.0), init_mode=mode)
    with torch.no_grad():
        tokens = comp.embed(torch.arange(VOCAB)[None])[0]  # what the decoder sees of real tokens
        mean = tokens.mean(0)
        typical = (tokens - mean).norm(dim=1).median()
        memory = comp.memory.weight
        spread = (memory - mean).norm(dim=1)
        pair = torch.cdist(memory, memory)[~torch.eye(6, dtype=torch.bool)]
        token_pair = torch.cdist(tokens, tokens)[~torch.eye(VOCAB, dtype=torch.bool)].median()
    if mode == "sampled":  # as far from the mean, and from each other, as real tokens are
        assert 0.6 * typical < spread.min() and spread.max() < 1.6 * typical
        assert pair.min() > 0.5 * token_pair
    else:  # the old behaviour: K near-copies of the mean embedding
        assert spread.max() < 0.05 * typical and pair.min() > 1e-3 * typical


def test_memory_slots_on_smollm2_are_as_distinct_as_its_tokens(smollm2):
    """On the real SmolLM2 embeddings: the old slots had pairwise cosine 0.9999; sampled ones sit with real tokens."""
    from safetensors.torch import load_file

    from trainer.modeling.memory import initial_memory, pairwise_cosine

    import glob

    weight = load_file(glob.glob(f"{smollm2}/*.safetensors")[0])["model.embed_tokens.weight"].float()
    emb = torch.nn.Embedding.from_pretrained(weight)
    sampled, old = initial_memory(emb, weight.shape[0], 8), initial_memory(emb, weight.shape[0], 8, mode="mean")
    tokens = weight[torch.randint(0, weight.shape[0], (200,), generator=torch.Generator().manual_seed(0))]
    assert pairwise_cosine(old) > 0.999
    assert abs(pairwise_cosine(sampled) - pairwise_cosine(tokens)) < 0.1
    assert abs(sampled.norm(dim=1).mean() / tokens.norm(dim=1).mean() - 1) < 0.15


# -- the effective-settings guard reads every new knob back --------------------------------------------
def test_guard_reads_back_first_token_memory_init_and_trainables():
    from trainer.modeling.effective import SettingsMismatch, expected_for, read_effective, verify
    from trainer.modeling.settings import ModelSettings

    comp = tiny_compressor("llama", k=4, prefix=(1,))  # sampled slots, memory trainable, no delta
    settings = ModelSettings(dtype="float32", memory_tokens=4, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    want = lambda **kw: expected_for(settings, "sdpa", 0.0, False, prefix_ids=[1], **kw)
    eff = verify(comp.train(), want())
    assert eff["first_token_ids"] == [1] and eff["memory_tokens"]["spread"] > 0.5
    assert eff["memory_tokens"]["trainable"] and not eff["input_embeddings_trainable"]
    cases = {
        "model.first_token ids": expected_for(settings, "sdpa", 0.0, False, prefix_ids=[0]),
        "memory tokens trainable": want(memory_trainable=False),
        "model.memory_init": expected_for(ModelSettings(dtype="float32", memory_tokens=4, memory_init="mean",
                                                        lora=LoraSettings(r=4, alpha=8, dropout=0.0)),
                                          "sdpa", 0.0, False, prefix_ids=[1]),
        "model.train_input_embeddings": expected_for(ModelSettings(dtype="float32", memory_tokens=4, train_input_embeddings=True,
                                                                   lora=LoraSettings(r=4, alpha=8, dropout=0.0)),
                                                     "sdpa", 0.0, False, prefix_ids=[1]),
    }
    for key, expected in cases.items():
        with pytest.raises(SettingsMismatch, match=key.replace(".", r"\.")):
            verify(comp, expected)
    # Carried (trained) slots are not judged by the init rule.
    assert read_effective(comp)["memory_tokens"]["k"] == 4
    verify(comp, expected_for(ModelSettings(dtype="float32", memory_tokens=4, memory_init="mean",
                                            lora=LoraSettings(r=4, alpha=8, dropout=0.0)),
                              "sdpa", 0.0, False, prefix_ids=[1], memory_source="runs/stage1"))


# -- E's input-embedding delta -------------------------------------------------------------------------
def test_input_embedding_delta_trains_the_encoder_only(tmp_path):
    """Gradients reach the delta through E; D (teacher, student decoder) reads the base table; only seen rows
    move; the saved delta folded into a base table gives E's inputs exactly (Gemma's scaled table too)."""
    from trainer.modeling.embedding_delta import fold_delta, save_delta
    from trainer.objectives.compression import compression_loss

    for family in ("llama", "gemma"):
        base = tiny_causal_lm(family)
        comp = build_compressor(base, 3, [1], pad_id=0, lora=LoraSettings(r=4, alpha=8, dropout=0.0),
                                embedding_delta=True)
        batch = random_batch(3, seed=1)
        with torch.no_grad():
            teacher_before = comp.teacher_hidden(batch["context"], batch["context_len"], batch["continuation"],
                                                 batch["continuation_len"])
        compression_loss(comp, "kl", batch).backward()
        grad = comp.embedding_delta.weight.grad
        seen = set(batch["context"][torch.arange(batch["context"].shape[1])[None] < batch["context_len"][:, None]].tolist()) | {1}
        rows = set(torch.nonzero(grad.abs().sum(-1) > 0).flatten().tolist())
        assert rows and rows <= seen, "only the tokens E read get a gradient"
        with torch.no_grad():
            comp.embedding_delta.weight[sorted(rows)] += 0.3
            ids = torch.tensor([sorted(rows)])
            assert (comp.encoder_embed(ids) - comp.embed(ids)).abs().min() > 0.29
            teacher_after = comp.teacher_hidden(batch["context"], batch["context_len"], batch["continuation"],
                                                batch["continuation_len"])
            assert torch.equal(teacher_before, teacher_after), "D must not see E's delta"
            n = save_delta(comp.embedding_delta.weight, str(tmp_path / f"{family}.safetensors"))
            assert n == len(rows)
            folded = tiny_causal_lm(family)
            fold_delta(folded.get_input_embeddings(), str(tmp_path / f"{family}.safetensors"))
            assert torch.allclose(folded.get_input_embeddings()(ids), comp.encoder_embed(ids), atol=1e-5)


# -- the schedule ---------------------------------------------------------------------------------------
def test_warmup_from_a_floor_then_linear_decay():
    from trainer.engine.deepspeed_setup import lr_lambda
    from trainer.engine.settings import OptimSettings

    o = OptimSettings(lr=1e-4, warmup_steps=200, warmup_start_lr=1e-5, schedule="linear", min_lr_ratio=0.1)
    f = lr_lambda(o, 2000)
    lr = lambda s: 1e-4 * f(s)
    assert lr(0) == pytest.approx(1e-5) and lr(100) == pytest.approx(5.5e-5) and lr(200) == pytest.approx(1e-4)
    assert lr(1100) == pytest.approx(5.5e-5) and lr(2000) == pytest.approx(1e-5)
    log = lr_lambda(OptimSettings(lr=1e-4, warmup_steps=3200, warmup_start_lr=1e-5, warmup_type="log",
                                  schedule="linear", min_lr_ratio=0.1), 32000)
    # DeepSpeed's WarmupDecayLR: min + (max - min) * log(step + 1) / log(warmup), then linear back to min.
    assert 1e-4 * log(0) == pytest.approx(1e-5)
    assert 1e-4 * log(99) == pytest.approx(1e-5 + 9e-5 * np.log(100) / np.log(3200))
    assert 1e-4 * log(32000) == pytest.approx(1e-5)
    old = lr_lambda(OptimSettings(lr=1e-4, warmup_ratio=0.1), 100)  # without a floor: lr / warmup at step 0
    assert old(0) == pytest.approx(0.1)


# The schedule DeepSpeed really steps: tests/test_export.py's stage-1 run logs its warm-up from a floor.


# -- the diagnostics ------------------------------------------------------------------------------------
def naive_diagnostics(comp, batch):
    """Window by window, full [T, V] log-softmaxes, peft's own adapter switch."""
    peft, prefix = comp.model, comp.prefix_ids.tolist()
    lm, emb, p, k = peft.get_base_model(), comp.embed, len(prefix), comp.k
    rows = {n: [] for n in ("kl_memory", "kl_no_memory", "nll_memory", "nll_no_memory", "nll_teacher", "rc_memory",
                            "rc_no_memory")}
    for i in range(batch["context"].shape[0]):
        c = batch["context"][i, : batch["context_len"][i]].tolist()
        y = batch["continuation"][i, : batch["continuation_len"][i]].tolist()
        h = lm(inputs_embeds=torch.cat([emb(torch.tensor([prefix + c])), comp.memory.weight[None]], 1),
               is_causal=False, output_hidden_states=True).hidden_states[-1][:, -k:]
        with peft.disable_adapter():
            def logp(embeds, first, n):
                return F.log_softmax(lm(inputs_embeds=embeds).logits[0, first : first + n].float(), -1)

            pre = emb(torch.tensor([prefix]))
            t = F.log_softmax(lm(input_ids=torch.tensor([prefix + c + y])).logits[0, p + len(c) - 1 : p + len(c) - 1 + len(y)].float(), -1)
            m = logp(torch.cat([pre, h, emb(torch.tensor([y]))], 1), p + k - 1, len(y))
            z = logp(torch.cat([pre, emb(torch.tensor([y]))], 1), p - 1, len(y))
            yt = torch.tensor(y)[:, None]
            rows["kl_memory"].append((t.exp() * (t - m)).sum(-1).mean())
            rows["kl_no_memory"].append((t.exp() * (t - z)).sum(-1).mean())
            for name, lp in (("nll_memory", m), ("nll_no_memory", z), ("nll_teacher", t)):
                rows[name].append(-lp.gather(-1, yt).mean())
            ct = torch.tensor(c)[:, None]
            rows["rc_memory"].append(-logp(torch.cat([pre, h, emb(torch.tensor([c]))], 1), p + k - 1, len(c)).gather(-1, ct).mean())
            rows["rc_no_memory"].append(-logp(torch.cat([pre, emb(torch.tensor([c]))], 1), p - 1, len(c)).gather(-1, ct).mean())
    return {n: float(torch.stack(v).mean()) for n, v in rows.items()}


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_diagnostics_equal_a_naive_computation(family):
    from trainer.objectives.diagnostics import compression_figures, diagnose

    comp = tiny_compressor(family, k=3, prefix=(1,)).eval()
    comp.loss_chunk = 4  # several chunks, one partial
    batch = random_batch(4, seed=6)
    with torch.no_grad():
        figures = compression_figures(diagnose(comp, {**batch, "weight": torch.ones(4)}))
        ref = naive_diagnostics(comp, batch)
        # A zero weight leaves a window out (ranks short of held-out rows repeat one).
        half = compression_figures(diagnose(comp, {**batch, "weight": torch.tensor([1.0, 1.0, 0.0, 0.0])}))
        ref_half = naive_diagnostics(comp, {k: v[:2] for k, v in batch.items()})
    for name, value in ref.items():
        assert figures[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
        assert half[name] == pytest.approx(ref_half[name], rel=1e-4, abs=1e-5), name
    assert figures["recovered"] == pytest.approx(1 - ref["kl_memory"] / ref["kl_no_memory"], rel=1e-4)
    assert figures["windows"] == 4 and half["windows"] == 2


def test_diagnostics_without_a_first_token_score_the_positions_both_can_predict():
    from trainer.objectives.diagnostics import compression_figures, diagnose

    comp = tiny_compressor("llama", k=3, prefix=()).eval()
    batch = random_batch(3, seed=8)
    with torch.no_grad():
        f = compression_figures(diagnose(comp, {**batch, "weight": torch.ones(3)}))
    assert all(np.isfinite(v) for v in f.values()) and f["kl_no_memory"] > 0


# -- the held-out rule -----------------------------------------------------------------------------------
def test_held_out_windows_follow_a_fixed_rule_and_never_train():
    from trainer.data.compression import CompressionBatches
    from trainer.data.holdout import hold_out

    rng = np.random.default_rng(0)
    docs = [f"doc-{d}" for d in rng.integers(0, 40, 300)]
    held, train = hold_out(docs, 25)
    assert len(held) == 25 and len(set(held) & set(train)) == 0
    held_docs = {docs[i] for i in held}
    assert all(docs[i] not in held_docs for i in train), "no window of a held-out document trains"
    assert len(train) + sum(d in held_docs for d in docs) == len(docs)
    # The rule depends on the data alone: shuffling the rows holds out the same (document, window) rows.
    perm = rng.permutation(len(docs))
    held2, _ = hold_out([docs[i] for i in perm], 25)
    assert sorted(docs[perm[i]] for i in held2) == sorted(docs[i] for i in held)
    with pytest.raises(UserError, match="eval.windows"):
        hold_out(docs, 300)

    class Rows:
        """The dataset protocol CompressionBatches reads (arrow table for lengths, row lookup)."""

        def __init__(self, n):
            import datasets

            self.ds = datasets.Dataset.from_dict({"context_ids": [[i % 7 + 3] * (2 + i % 5) for i in range(n)],
                                                  "continuation_ids": [[i] for i in range(n)]})
            self.data = self.ds.data

        def __getitem__(self, idx):
            return self.ds[idx]

    batches = CompressionBatches(Rows(len(docs)), 4, 2, 1, 0, 0, rows=train)
    it = iter(batches)
    seen = {int(x) for _ in range(200) for x in next(it)["continuation"][:, 0]}
    assert seen <= set(train.tolist()) and len(seen) > len(train) // 2


def test_an_evaluation_is_one_eval_row_a_tensorboard_scalar_and_a_progress_figure(tmp_path):
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.engine.metrics import MetricsLogger

    m = MetricsLogger(str(tmp_path), True, 0, 10, tensorboard=True, progress=True)
    m.log(1, {"loss": 2.0, "lr": 1e-4, "tokens_per_s": 10.0})
    m.log_eval(1, {"kl_memory": 0.5, "kl_no_memory": 1.0, "recovered": 0.5, "windows": 8})
    assert m.bar.postfix and "recovered=0.500" in m.bar.postfix and "loss=2.0000" in m.bar.postfix
    m.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["eval"] is True and rows[1]["step"] == 1 and rows[1]["recovered"] == 0.5 and "loss" not in rows[1]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert {"eval/recovered", "eval/kl_memory", "loss"} <= set(acc.Tags()["scalars"])
    assert acc.Scalars("eval/recovered")[0].value == 0.5


def test_untrained_memory_carries_nothing_on_the_real_smollm2(smollm2):
    """Before stage 1, E's final states at the memory positions are not input embeddings D can read: on the
    real SmolLM2 they make D's prediction of the continuation worse than no context at all (recovered < 0),
    (measured: -2.6 on held-out Wikipedia, docs/RESULTS.md)."""
    import random

    from conftest import make_text
    from data_prep.tokenizer import load_tokenizer
    from trainer.data.padding import pad_right
    from trainer.modeling.build import build_model
    from trainer.modeling.settings import ModelSettings
    from trainer.objectives.diagnostics import compression_figures, diagnose

    tok = load_tokenizer(smollm2)
    rng = random.Random(4)
    texts = [tok(make_text(rng, 60), add_special_tokens=False)["input_ids"] for _ in range(4)]
    context, context_len = pad_right([t[:40] for t in texts], 0)
    continuation, continuation_len = pad_right([t[40:56] for t in texts], 0)
    batch = {"context": context, "context_len": context_len, "continuation": continuation,
             "continuation_len": continuation_len, "weight": torch.ones(4)}
    model, _, _ = build_model(ModelSettings(path=smollm2, dtype="float32", attention="sdpa", first_token="<|endoftext|>"))
    with torch.no_grad():
        f = compression_figures(diagnose(model.eval(), batch))
    assert f["kl_no_memory"] > 0.05 and f["recovered"] < 0, f
