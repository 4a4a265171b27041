"""The Compressor's structural guarantees (DESIGN.md §1), on tiny random models of every supported family,
in fp32: E is bidirectional and D causal; padding never leaks (garbage ids in the padding area); results do
not depend on the batch; one copy of the base weights; the adapter switch; gradient checkpointing with the
switch."""
import pytest
import torch
from torch.utils.checkpoint import CheckpointError

from tiny_models import FAMILIES, VOCAB, random_batch, tiny_causal_lm, tiny_compressor
from trainer.modeling.adapters import LoraSettings, enable_gradient_checkpointing, lora_layers
from trainer.modeling.attention import run_decoder
from trainer.modeling.compressor import build_compressor
from trainer.modeling.memory import splice_after_text
from trainer.objectives.compression import compression_loss

ALL = list(FAMILIES)
ATOL = 1e-5


def ids_of(*tokens) -> torch.Tensor:
    return torch.tensor([list(tokens)], dtype=torch.long)


def padded(seqs, g: torch.Generator, extra: int = 3):
    """Right-padded [B, T] with random (non-pad) ids in the padding area, and the lengths."""
    lengths = torch.tensor([len(s) for s in seqs])
    out = torch.randint(3, VOCAB, (len(seqs), int(lengths.max()) + extra), generator=g)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def random_texts(lengths, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (n,), generator=g) for n in lengths]


def alone(seq: torch.Tensor):
    return seq[None], torch.tensor([len(seq)])


def encoder_input(comp, text: torch.Tensor) -> torch.Tensor:
    """What E sees for one unpadded text: [prefix, text, m_1..m_K] as input embeddings, [1, P+L+K, H]."""
    ids = torch.cat([comp.prefix_ids, text])[None]
    return torch.cat([comp.embed(ids), comp.memory.weight[None]], 1)


def changed(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# -- 1. E is bidirectional, D is causal ---------------------------------------------------------------
@pytest.mark.parametrize("family", ALL)
def test_run_decoder_bidirectional_flag(family):
    comp = tiny_compressor(family)
    ids = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 1 - 3) % (VOCAB - 3) + 3
    mask = torch.ones_like(ids)

    def hidden(x, *, adapter, bidirectional):
        with comp.switch(adapter), torch.no_grad():
            return run_decoder(comp.decoder, bidirectional=bidirectional, input_ids=x, attention_mask=mask)

    # Encoder configuration: position 0 sees the last token.
    enc, enc_later = hidden(ids, adapter=True, bidirectional=True), hidden(later, adapter=True, bidirectional=True)
    assert changed(enc[:, 0], enc_later[:, 0]) > 1e-4
    # Teacher/decoder configuration: nothing before the changed token moves; the changed position does.
    dec, dec_later = hidden(ids, adapter=False, bidirectional=False), hidden(later, adapter=False, bidirectional=False)
    assert changed(dec[:, :-1], dec_later[:, :-1]) < 1e-6
    assert changed(dec[:, -1], dec_later[:, -1]) > 1e-4
    # It is the call's flag, not the adapter, that makes E bidirectional; and the flag leaves no state.
    causal_with_adapter = hidden(ids, adapter=True, bidirectional=False), hidden(later, adapter=True, bidirectional=False)
    assert changed(causal_with_adapter[0][:, :-1], causal_with_adapter[1][:, :-1]) < 1e-6
    assert changed(hidden(ids, adapter=True, bidirectional=True)[:, 0], enc[:, 0]) < 1e-6


@pytest.mark.parametrize("family", ALL)
def test_compressor_encoder_is_bidirectional(family):
    comp = tiny_compressor(family, k=3, prefix=(1,))
    p = comp.prefix_ids.numel()
    text = random_texts([7], seed=1)[0]
    later = text.clone()
    later[-1] = (later[-1] + 1 - 3) % (VOCAB - 3) + 3

    with torch.no_grad():
        # Trivially: the memory states see the whole text.
        m, m_later = comp.memory_states(*alone(text)), comp.memory_states(*alone(later))
        assert changed(m, m_later) > 1e-4

        def encode(t, memory=None):
            x = encoder_input(comp, t)
            if memory is not None:
                x = torch.cat([x[:, : -comp.k], memory[None]], 1)
            with comp.switch(True):
                return run_decoder(comp.decoder, bidirectional=True, inputs_embeds=x,
                                   attention_mask=torch.ones(x.shape[:2], dtype=torch.long))

        h = encode(text)
        # This manual E pass is the one the Compressor makes.
        assert torch.allclose(h[:, -comp.k :], m, atol=ATOL)
        # The first text position (and the prefix) depend on the last text token and on the memory tokens,
        # which all come after them.
        assert changed(h[:, p], encode(later)[:, p]) > 1e-4
        other_memory = comp.memory.weight + 0.5 * torch.randn(comp.memory.weight.shape, generator=torch.Generator().manual_seed(3))
        h_mem = encode(text, other_memory)
        assert changed(h[:, : p + 1], h_mem[:, : p + 1]) > 1e-4


@pytest.mark.parametrize("family", ALL)
def test_compressor_decoder_and_teacher_are_causal(family):
    """Each returned state predicts the next target; changing the last target token moves none of them,
    changing the first target token moves all but the first."""
    comp = tiny_compressor(family)
    context, target = random_texts([6, 5], seed=4)
    last, first = target.clone(), target.clone()
    last[-1] = (last[-1] + 1 - 3) % (VOCAB - 3) + 3
    first[0] = (first[0] + 1 - 3) % (VOCAB - 3) + 3
    memory = torch.randn(1, comp.k, comp.config.hidden_size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for run in (
            lambda t: comp.decoder_hidden(memory, *alone(t)),
            lambda t: comp.teacher_hidden(*alone(context), *alone(t)),
        ):
            h = run(target)
            assert h.shape == (len(target), comp.config.hidden_size)
            assert changed(h, run(last)) < 1e-6
            h_first = run(first)
            assert changed(h[0], h_first[0]) < 1e-6
            assert changed(h[1:], h_first[1:]) > 1e-4


# -- 2./3. Padding never leaks; results do not depend on the batch -----------------------------------
@pytest.mark.parametrize("family", ALL)
def test_memory_states_padding_and_batch_invariance(family):
    comp = tiny_compressor(family, k=3, prefix=(1,))
    texts = random_texts([5, 11, 2, 8, 1], seed=6)
    with torch.no_grad():
        ref_m = torch.cat([comp.memory_states(*alone(t)) for t in texts])
        ref_e = torch.cat([comp.embed_texts(*alone(t)) for t in texts])
        assert changed(ref_e[0], ref_e[1]) > 1e-4  # distinct texts, distinct embeddings
        g = torch.Generator().manual_seed(7)
        for trial in range(3):
            order = torch.randperm(len(texts), generator=g) if trial else torch.arange(len(texts))
            ids, lengths = padded([texts[i] for i in order], g, extra=trial * 4)
            m = comp.memory_states(ids, lengths)
            e = comp.embed_texts(ids, lengths)
            assert m.shape == (len(texts), comp.k, comp.config.hidden_size)
            assert torch.allclose(m, ref_m[order], atol=ATOL), (trial, changed(m, ref_m[order]))
            assert torch.allclose(e, ref_e[order], atol=ATOL), (trial, changed(e, ref_e[order]))
            # Other garbage in the padding area: the same result, exactly where the text is.
            noisy = torch.where(torch.arange(ids.shape[1])[None] < lengths[:, None], ids,
                                torch.randint(3, VOCAB, ids.shape, generator=g))
            assert torch.allclose(comp.embed_texts(noisy, lengths), e, atol=ATOL)


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_text_pooling_is_batch_invariant_and_bidirectional(family, pooling):
    """mean (LLM2Vec) / last (E5-Mistral style) pooling: no memory tokens; each equals its naive definition
    on the text alone, whatever the batch, order and padding garbage."""
    from trainer.modeling.adapters import LoraSettings
    from trainer.modeling.compressor import build_compressor

    comp = build_compressor(tiny_causal_lm(family), 3, [1], 0, LoraSettings(r=4, alpha=8, dropout=0.0), pooling=pooling)
    assert comp.memory is None and comp.k == 0
    texts = random_texts([5, 11, 2, 8, 1], seed=9)
    lm = comp.model.get_base_model()
    with torch.no_grad():
        ref = []
        for t in texts:
            h = lm(input_ids=torch.cat([comp.prefix_ids, t])[None], is_causal=False, output_hidden_states=True)
            h = h.hidden_states[-1][0, 1:]  # the text's states, without the prefix
            ref.append(h.mean(0) if pooling == "mean" else h[-1])
        ref = torch.stack(ref)
        g = torch.Generator().manual_seed(10)
        for trial in range(3):
            order = torch.randperm(len(texts), generator=g) if trial else torch.arange(len(texts))
            ids, lengths = padded([texts[i] for i in order], g, extra=trial * 4)
            e = comp.embed_texts(ids, lengths)
            assert torch.allclose(e, ref[order], atol=ATOL), (trial, changed(e, ref[order]))
        # The text states come from the bidirectional E: the last token moves the first one's state.
        a, b = texts[1].clone(), texts[1].clone()
        b[-1] = (b[-1] + 1) % VOCAB
        first = [comp.text_states(*alone(x))[0, 1] for x in (a, b)]
        assert changed(*first) > 1e-4


@pytest.mark.parametrize("family", ALL)
def test_decoder_hidden_padding_and_batch_invariance(family):
    comp = tiny_compressor(family, k=2)
    targets = random_texts([4, 9, 1, 6], seed=8)
    memory = torch.randn(len(targets), comp.k, comp.config.hidden_size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = [comp.decoder_hidden(memory[i : i + 1], *alone(t)) for i, t in enumerate(targets)]
        g = torch.Generator().manual_seed(10)
        for trial in range(2):
            order = torch.randperm(len(targets), generator=g) if trial else torch.arange(len(targets))
            ids, lengths = padded([targets[i] for i in order], g, extra=2 + trial * 3)
            h = comp.decoder_hidden(memory[order], ids, lengths)
            expected = torch.cat([ref[i] for i in order])
            assert h.shape == expected.shape
            assert torch.allclose(h, expected, atol=ATOL), (trial, changed(h, expected))


@pytest.mark.parametrize("family", ALL)
def test_teacher_hidden_padding_and_batch_invariance(family):
    comp = tiny_compressor(family)
    contexts = random_texts([3, 10, 6, 1], seed=11)
    targets = random_texts([7, 2, 5, 4], seed=12)
    with torch.no_grad():
        ref = [comp.teacher_hidden(*alone(c), *alone(t)) for c, t in zip(contexts, targets)]
        g = torch.Generator().manual_seed(13)
        for trial in range(2):
            order = torch.randperm(len(targets), generator=g) if trial else torch.arange(len(targets))
            c, cl = padded([contexts[i] for i in order], g, extra=1 + trial * 2)
            t, tl = padded([targets[i] for i in order], g, extra=3)
            h = comp.teacher_hidden(c, cl, t, tl)
            expected = torch.cat([ref[i] for i in order])
            assert h.shape == expected.shape
            assert torch.allclose(h, expected, atol=ATOL), (trial, changed(h, expected))


# -- 4. One copy of the base parameters ------------------------------------------------------------
def unique_numel(params) -> int:
    seen, n = set(), 0
    for p in params:
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", ALL)
def test_single_copy_of_base_parameters(family, tied):
    base = tiny_causal_lm(family)
    if tied:
        base.get_output_embeddings().weight = base.get_input_embeddings().weight
    lora = LoraSettings(r=4, alpha=8, dropout=0.0)
    base_ptrs = {p.data_ptr() for p in base.parameters()}
    n_base = unique_numel(base.parameters())
    n_lora = sum(lora.r * (m.in_features + m.out_features) for name, m in base.named_modules()
                 if name.rsplit(".", 1)[-1] in lora.target_modules)
    k, hidden = 3, base.config.hidden_size

    comp = build_compressor(base, k, [1], pad_id=0, lora=lora)

    assert comp.model.get_base_model() is base
    all_params = list(comp.parameters())
    assert unique_numel(all_params) == n_base + n_lora + k * hidden
    named = dict(comp.named_parameters(remove_duplicate=False))
    frozen = {n: p for n, p in named.items() if "lora_" not in n and n != "memory.weight"}
    # The frozen parameters are the base model's own tensors, each of them, and nothing else.
    assert {p.data_ptr() for p in frozen.values()} == base_ptrs
    assert unique_numel(frozen.values()) == n_base
    # Apart from tying, no two parameters share storage (nothing was copied into a second module).
    ptrs = [p.data_ptr() for p in named.values()]
    assert len(set(ptrs)) == len(ptrs) - (1 if tied else 0)
    lora_numel = sum(p.numel() for n, p in named.items() if "lora_" in n)
    assert lora_numel == n_lora
    # requires_grad exactly for LoRA and memory.
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if "lora_" in n} | {"memory.weight"}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)


# -- 5. The adapter switch ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ALL)
def test_adapter_switch(family):
    reference = tiny_causal_lm(family, seed=0)  # the same weights, LoRA never attached
    comp = tiny_compressor(family, seed=0)
    g = torch.Generator().manual_seed(14)
    ids, lengths = padded(random_texts([9, 4], seed=15), g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    grad_flags = {n: p.requires_grad for n, p in comp.named_parameters()}
    flags = lambda: {n: p.requires_grad for n, p in comp.named_parameters()}  # noqa: E731
    assert comp.switch.enabled and len(comp.switch.layers) == len(lora_layers(comp.model)) > 0

    with torch.no_grad():
        for bidirectional in (False, True):
            ref = run_decoder(reference.get_decoder(), bidirectional=bidirectional, input_ids=ids, attention_mask=mask)
            with comp.switch(False):
                assert flags() == grad_flags
                off = run_decoder(comp.decoder, bidirectional=bidirectional, input_ids=ids, attention_mask=mask)
                with comp.switch(True):  # nested: on, then back off
                    on = run_decoder(comp.decoder, bidirectional=bidirectional, input_ids=ids, attention_mask=mask)
                assert not comp.switch.enabled
                assert torch.allclose(run_decoder(comp.decoder, bidirectional=bidirectional, input_ids=ids,
                                                  attention_mask=mask), off, atol=1e-6)
            valid = mask.bool()
            assert torch.allclose(off[valid], ref[valid], atol=1e-6), changed(off[valid], ref[valid])
            assert changed(on[valid], ref[valid]) > 1e-3
            assert comp.switch.enabled
            assert torch.allclose(run_decoder(comp.decoder, bidirectional=bidirectional, input_ids=ids,
                                              attention_mask=mask), on, atol=1e-6)
        # The teacher path is the plain base model, logits (and Gemma-2's soft-capping) included.
        context, target = random_texts([5, 4], seed=16)
        t = comp.teacher_hidden(*alone(context), *alone(target))
        full = torch.cat([comp.prefix_ids, context, target])[None]
        ref_logits = reference(input_ids=full).logits[0]
        start = comp.prefix_ids.numel() + len(context) - 1
        assert torch.allclose(comp.logits(t), ref_logits[start : start + len(target)], atol=1e-5)
    assert flags() == grad_flags
    # The switch restores its state when the block raises.
    with pytest.raises(RuntimeError):
        with comp.switch(False):
            raise RuntimeError
    assert comp.switch.enabled and not any(layer.disable_adapters for layer in comp.switch.layers)
    assert flags() == grad_flags


# -- 6. Gradient checkpointing recomputes with the adapter state of the forward ----------------------
def loss_and_grads(comp, batch):
    comp.zero_grad(set_to_none=True)
    loss = compression_loss(comp, "kl", batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in comp.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ALL)
def test_gradient_checkpointing_with_adapter_switch(family):
    comp = tiny_compressor(family, lora_dropout=0.0)
    comp.train()
    batch = random_batch(3, seed=17)
    # The adapter state each time the last layer's attention runs (a pre-hook: recomputation may stop early, before
    # the end of the layer).
    states = []
    comp.decoder.layers[-1].self_attn.register_forward_pre_hook(lambda *_: states.append(comp.switch.enabled))

    ref_loss, ref_grads = loss_and_grads(comp, batch)
    assert states == [True, False, False]  # E, D, teacher
    assert all(g.abs().sum() > 0 for n, g in ref_grads.items() if "lora_A" in n or "memory" in n)

    enable_gradient_checkpointing(comp.model, comp.switch)
    states.clear()
    loss, grads = loss_and_grads(comp, batch)
    # Forward as before, then backward recomputes D (adapter off) and E (adapter on); the teacher ran without grad.
    assert states == [True, False, False, False, True], states
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert set(grads) == set(ref_grads)
    for name in ref_grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), (name, changed(grads[name], ref_grads[name]))
    assert comp.switch.enabled

    # Control: the same checkpointing without the switch's context_fn recomputes D with the adapter on (the
    # state after the forward), which torch rejects (LoRA adds saved tensors) or which gives other gradients.
    comp.model.gradient_checkpointing_disable()
    comp.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    states.clear()
    try:
        _, wrong = loss_and_grads(comp, batch)
    except CheckpointError:
        pass
    else:
        assert max(changed(wrong[n], ref_grads[n]) for n in ref_grads) > 1e-4
    assert states[:3] == [True, False, False] and states[3] is True  # D's recomputation ran with the adapter on


# -- 7. The model is built as the recipe says ------------------------------------------------------------
# (The memory-slot initialisation, 'sampled' and 'mean': tests/test_stage1_fixes.py.)
def test_a_pretrained_base_is_built_in_training_mode(tmp_path, smollm2_tokenizer):
    """from_pretrained returns eval mode; training it as such would silently switch every dropout off."""
    from trainer.modeling.build import build_model
    from trainer.modeling.settings import ModelSettings

    tiny_causal_lm("llama").save_pretrained(tmp_path / "base")
    settings = ModelSettings(path=str(tmp_path / "base"), tokenizer=smollm2_tokenizer, dtype="float32",
                             attention="sdpa", memory_tokens=2, lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    model, _, _ = build_model(settings)
    frozen = [n for n, m in model.named_modules() if not m.training]
    assert not frozen, frozen[:5]
