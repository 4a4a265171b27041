"""THE REFERENCE CODE'S APPROACH (``--baseline``), REIMPLEMENTED for comparison: two full model copies,
a vocabulary resized by K memory tokens, eager attention, padding to ``seq``, full logits, a per-sample fp32 loss."""
from __future__ import annotations

from typing import Callable

from .archs import ARCHS, MEMORY_TOKENS
from .engines import PlainEngine, build_base, lora_settings


def _right_join(a, a_len, b, b_len, width: int, pad: int):
    """Token rows [a_i[:a_len_i], b_i[:b_len_i]] right-padded to ``width``, and their attention mask."""
    import torch

    full = torch.cat([a, b], 1)
    idx = torch.arange(width, device=a.device)[None, :].expand(a.shape[0], -1)
    src = torch.where(idx < a_len[:, None], idx, idx - a_len[:, None] + a.shape[1])
    valid = idx < (a_len + b_len)[:, None]
    return torch.where(valid, torch.gather(full, 1, src.clamp(max=full.shape[1] - 1)), pad), valid


class ReferenceBaseline:
    """Two full model copies (encoder with LoRA on a vocabulary resized by K memory tokens; frozen
    decoder/teacher), eager attention, padding to ``seq``, full logits, per-sample fp32 loss loop."""

    def __init__(self, a, stage: str):
        import torch

        from trainer.modeling.adapters import attach_lora

        self.a, self.stage, self.seq = a, stage, a.seq
        self.prefix = torch.tensor(ARCHS[a.model_config][2], dtype=torch.long, device=a.device)
        enc = build_base(a.model_config, a.dtype, "eager", a.device, getattr(a, "weights", None))
        vocab = enc.get_input_embeddings().weight.shape[0]
        enc.resize_token_embeddings(vocab + MEMORY_TOKENS, mean_resizing=False)
        with torch.no_grad():  # new rows at the mean embedding, as a mean-initialised resize places them
            w = enc.get_input_embeddings().weight
            w[vocab:] = w[:vocab].float().mean(0).to(w.dtype)
        for p in enc.parameters():
            p.requires_grad_(False)
        if stage in ("ucl", "scl"):
            enc.config.attention_dropout = a.attention_dropout  # plain torch dropout in eager attention
        with torch.device(a.device):  # LoRA weights created where the base is
            self.encoder = attach_lora(enc, lora_settings())
        self.encoder.get_base_model().get_input_embeddings().weight.requires_grad_(stage != "encode")
        self.memory_ids = torch.arange(vocab, vocab + MEMORY_TOKENS, device=a.device)
        self.decoder = None
        if stage == "pretrain":
            self.decoder = build_base(a.model_config, a.dtype, "eager", a.device, getattr(a, "weights", None)).requires_grad_(False)
        if a.gradient_checkpointing and stage != "encode":
            for m in (self.encoder, self.decoder):
                if m is not None:
                    m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train(stage != "encode")

    def train(self, mode: bool):
        for m in (self.encoder, self.decoder):
            if m is not None:
                m.train(mode)

    def modules(self):
        return [m for m in (self.encoder, self.decoder) if m is not None]

    def _with_prefix(self, ids, lengths):
        import torch

        p = self.prefix.expand(ids.shape[0], -1)
        return torch.cat([p, ids], 1), lengths + p.shape[1]

    def memory_states(self, ids, lengths):
        """[prefix, text, m_1..m_K] padded to p + seq + K; bidirectional encoder copy; [B, K, H]."""
        import torch

        from trainer.modeling.attention import run_decoder

        ids, lengths = self._with_prefix(ids, lengths)
        mem = self.memory_ids.expand(ids.shape[0], -1)
        mem_len = torch.full_like(lengths, MEMORY_TOKENS)
        width = self.prefix.numel() + self.seq + MEMORY_TOKENS
        joined, mask = _right_join(ids, lengths, mem, mem_len, width, 0)
        hidden = run_decoder(self.encoder.get_base_model().get_decoder(), bidirectional=True,
                             input_ids=joined, attention_mask=mask.long())
        pos = torch.arange(width, device=ids.device)[None, :]
        is_memory = (pos >= lengths[:, None]) & (pos < (lengths + MEMORY_TOKENS)[:, None])
        return hidden[is_memory].view(ids.shape[0], MEMORY_TOKENS, -1)

    def embed_texts(self, ids, lengths):
        return self.memory_states(ids, lengths).mean(1)

    def compression_loss(self, batch: dict, objective: str):
        import torch
        import torch.nn.functional as F

        ctx, cl, cont, yl = batch["context"], batch["context_len"], batch["continuation"], batch["continuation_len"]
        memory = self.memory_states(ctx, cl)
        targets, tl = (ctx, cl) if objective == "rc" else (cont, yl)
        p, k, b = self.prefix.numel(), MEMORY_TOKENS, ctx.shape[0]
        embed = self.decoder.get_input_embeddings()
        # Decoder copy on [prefix, h_1..h_K, targets padded to seq]; full logits, as the HF head returns them.
        head = torch.cat([embed(self.prefix.expand(b, -1)), memory.to(embed.weight.dtype)], 1)
        y = F.pad(targets, (0, self.seq - targets.shape[1]))
        embeds = torch.cat([head, embed(y)], 1)
        pos = torch.arange(embeds.shape[1], device=ctx.device)[None, :]
        student = self.decoder(inputs_embeds=embeds, attention_mask=(pos < (p + k + tl)[:, None]).long(),
                               use_cache=False).logits  # [B, p+K+seq, V]
        teacher = None
        if objective == "kl":
            with torch.no_grad():
                ids, lengths = self._with_prefix(ctx, cl)
                full, mask = _right_join(ids, lengths, cont, yl, p + self.seq, 0)
                teacher = self.decoder(input_ids=full, attention_mask=mask.long(), use_cache=False).logits
        loss = 0.0
        for i in range(b):  # the reference's per-sample loop, fp32 over the full vocabulary
            n, s0 = int(tl[i]), p + k - 1
            log_ps = F.log_softmax(student[i, s0:s0 + n].float(), -1)
            if teacher is None:
                loss = loss + F.nll_loss(log_ps, targets[i, :n])
            else:
                t0 = p + int(cl[i]) - 1
                log_pt = F.log_softmax(teacher[i, t0:t0 + n].float(), -1)
                loss = loss + (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
        return loss / b


def baseline_step(a, stage: str, base: ReferenceBaseline) -> tuple[Callable[[dict], float], object]:
    """One training step of the reference approach: one pass with a graph, backward, optimizer step."""
    import torch

    from trainer.objectives.contrastive import supervised_loss, unsupervised_loss

    engine = PlainEngine(torch.nn.ModuleList(base.modules()))
    temperature = 0.05

    def step(batch: dict) -> float:
        if stage == "pretrain":
            loss = base.compression_loss(batch, a.objective)
        elif stage == "ucl":
            ids, lengths = batch["ids"], batch["lengths"]
            z = base.embed_texts(torch.cat([ids, ids]), torch.cat([lengths, lengths]))
            b = ids.shape[0]
            loss = unsupervised_loss({"view1": z[:b], "view2": z[b:]}, temperature)
        else:
            parts = [batch["query"], batch["positive"], batch["negative"]]
            width = max(x.shape[1] for x in parts)
            ids = torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[1])) for x in parts])
            lengths = torch.cat([batch["query_len"], batch["positive_len"], batch["negative_len"]])
            z = base.embed_texts(ids, lengths)
            b = batch["query"].shape[0]
            loss = supervised_loss({"query": z[:b], "positive": z[b:2 * b], "negative": z[2 * b:]}, temperature)
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    return step, engine
