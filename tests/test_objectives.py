"""Each compression objective equals a deliberately naive computation (full softmax, per-sample loop,
peft's own adapter switch), in value and in gradients, to 1e-5 in fp32."""
import pytest
import torch
import torch.nn.functional as F

from tiny_models import random_batch, tiny_compressor
from trainer.objectives.compression import compression_loss
from trainer.objectives.vocab_loss import chunked_vocab_loss


def naive_loss(comp, objective, batch):
    """Sample by sample, no padding anywhere, full [T, V] logits."""
    peft, prefix = comp.model, comp.prefix_ids.tolist()
    lm = peft.get_base_model()
    emb = lm.get_input_embeddings()
    losses = []
    for i in range(batch["context"].shape[0]):
        c = batch["context"][i, : batch["context_len"][i]].tolist()
        y = batch["continuation"][i, : batch["continuation_len"][i]].tolist()
        enc_in = torch.cat([emb(torch.tensor([prefix + c], dtype=torch.long)), comp.memory.weight[None]], 1)
        h_enc = lm(inputs_embeds=enc_in, is_causal=False, output_hidden_states=True).hidden_states[-1]
        mem = h_enc[:, -comp.k :]
        target = c if objective == "rc" else y
        with peft.disable_adapter():
            s_in = torch.cat([emb(torch.tensor([prefix], dtype=torch.long)), mem, emb(torch.tensor([target]))], 1)
            s_logits = lm(inputs_embeds=s_in).logits[0]
            p, k, n = len(prefix), comp.k, len(target)
            s_logp = F.log_softmax(s_logits[p + k - 1 : p + k - 1 + n].float(), -1)
            if objective == "kl":
                with torch.no_grad():
                    t_logits = lm(input_ids=torch.tensor([prefix + c + y])).logits[0]
                t_logp = F.log_softmax(t_logits[p + len(c) - 1 : p + len(c) - 1 + n].float(), -1)
                losses.append(F.kl_div(s_logp, t_logp, log_target=True, reduction="none").sum(-1).mean())
            else:
                losses.append(F.nll_loss(s_logp, torch.tensor(target)))
    return torch.stack(losses).mean()


def grads(comp):
    return {n: p.grad.clone() for n, p in comp.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("objective", ["kl", "nll", "rc"])
def test_objective_equals_naive_in_value_and_gradient(family, objective):
    comp = tiny_compressor(family, k=3, prefix=(1,))
    comp.loss_chunk = 5  # several chunks, one partial
    batch = random_batch(4, seed=2)
    ours = compression_loss(comp, objective, batch)
    ours.backward()
    g_ours = grads(comp)
    comp.zero_grad()
    ref = naive_loss(comp, objective, batch)
    ref.backward()
    g_ref = grads(comp)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours.item(), ref.item())
    assert set(g_ours) == set(g_ref) and any("memory" in n for n in g_ours) and any("lora_A" in n for n in g_ours)
    for name in g_ref:
        assert torch.allclose(g_ours[name], g_ref[name], atol=1e-5, rtol=1e-4), name
    base_trainable = [n for n, p in comp.named_parameters() if p.requires_grad and "lora" not in n and "memory" not in n]
    assert base_trainable == []


def test_no_prefix_tokenizer():
    comp = tiny_compressor("llama", k=2, prefix=())
    batch = random_batch(3, seed=5)
    assert torch.allclose(compression_loss(comp, "kl", batch), naive_loss(comp, "kl", batch), atol=1e-5)


def test_chunk_size_does_not_change_loss_or_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    h = torch.randn(23, 16, requires_grad=True)
    t = torch.randn(23, 16)
    w = torch.rand(23)
    out = {}
    for chunk in (1, 7, 23, 100):
        h.grad = None
        loss = chunked_vocab_loss(h, w, head, teacher_hidden=t, chunk=chunk)
        (2 * loss).backward()
        out[chunk] = (loss.detach(), h.grad.clone())
    for chunk in (7, 23, 100):
        assert torch.allclose(out[chunk][0], out[1][0], atol=1e-6)
        assert torch.allclose(out[chunk][1], out[1][1], atol=1e-6)
    # Against autograd through the full softmax.
    h.grad = None
    ref = (w * F.kl_div(F.log_softmax(head(h), -1), F.log_softmax(head(t), -1), log_target=True, reduction="none").sum(-1)).sum()
    (2 * ref).backward()
    assert torch.allclose(out[7][0], ref.detach(), atol=1e-6) and torch.allclose(out[7][1], h.grad, atol=1e-6)


def naive_mntp(comp, ids, lengths, inputs, selected):
    """Sample by sample, no padding: E (adapter on, bidirectional) on [prefix, corrupted text], full-vocabulary
    cross-entropy of each selected token from the logits one position before it; mean over selected tokens."""
    lm, prefix = comp.model.get_base_model(), comp.prefix_ids.tolist()
    losses = []
    for i in range(ids.shape[0]):
        n = int(lengths[i])
        logits = lm(input_ids=torch.tensor([prefix + inputs[i, :n].tolist()]), is_causal=False).logits[0].float()
        for j in selected[i, :n].nonzero().flatten().tolist():
            losses.append(F.cross_entropy(logits[len(prefix) + j - 1][None], ids[i, j][None]))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("prefix, mode", [((1,), "bert"), ((), "all")])
def test_mntp_equals_naive_in_value_and_gradient(family, prefix, mode):
    from trainer.objectives.mntp import corrupt, mask_positions, mntp_loss

    comp = tiny_compressor(family, k=3, prefix=prefix)
    comp.memory.weight.requires_grad_(False)  # as the mntp stage does: no loss reaches them
    comp.loss_chunk = 4
    batch = random_batch(6, seed=3)
    ids, lengths = batch["context"], batch["context_len"]
    seeds = torch.arange(6) * 31 + 5
    selected = mask_positions(seeds, lengths, ids.shape[1], 0.4, first=0 if prefix else 1)
    inputs = corrupt(ids, selected, seeds, 2, mode, comp.config.vocab_size)
    assert selected.sum() >= 6 and (prefix or not selected[:, 0].any())  # no prefix: position 0 has no predictor
    assert torch.equal(inputs[~selected], ids[~selected]) and (inputs[selected] == 2).any()
    ours = mntp_loss(comp, ids, lengths, seeds, ratio=0.4, mask_id=2, mode=mode)
    ours.backward()
    g_ours = grads(comp)
    comp.zero_grad()
    ref = naive_mntp(comp, ids, lengths, inputs, selected)
    ref.backward()
    g_ref = grads(comp)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours.item(), ref.item())
    assert any("lora_A" in n for n in g_ref)
    for name in g_ref:
        assert torch.allclose(g_ours[name], g_ref[name], atol=1e-5, rtol=1e-4), name


def test_mntp_masks_are_row_invariant_and_at_the_ratios():
    from trainer.objectives.mntp import corrupt, mask_positions

    seeds = torch.arange(4000) * 7 + 3
    lengths = torch.full((4000,), 50)
    ids = torch.randint(5, 1000, (4000, 64))
    selected = mask_positions(seeds, lengths, 64, 0.2)
    assert abs(selected[:, :50].float().mean().item() - 0.2) < 0.01 and not selected[:, 50:].any()
    out = corrupt(ids, selected, seeds, 1, "bert", 1000)
    masked, same = (out == 1)[selected].float().mean().item(), (out == ids)[selected].float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(same - 0.1) < 0.01  # and about 10 % random (a few collide)
    assert ((out[selected] >= 0) & (out[selected] < 1000)).all()
    assert torch.equal(corrupt(ids, selected, seeds, 1, "all", 1000)[selected], torch.ones(int(selected.sum()), dtype=torch.long))
    # A row's masking depends on its seed only: not on its neighbours, its place in the batch or the width.
    again = mask_positions(seeds[[5, 1]], lengths[[5, 1]], 80, 0.2)
    assert torch.equal(again[:, :64], selected[[5, 1]])
    wide = torch.cat([ids[[5, 1]], ids[[5, 1], :16]], 1)
    assert torch.equal(corrupt(wide, again, seeds[[5, 1]], 1, "bert", 1000)[:, :64], out[[5, 1]])
