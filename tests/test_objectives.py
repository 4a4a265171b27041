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
