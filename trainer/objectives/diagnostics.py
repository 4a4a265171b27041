"""Stage 1's diagnostics: what the memory tokens carry, measured on held-out windows (DESIGN.md §1).

A falling stage-1 loss does not show that anything passes through the memory tokens. For each held-out
window (context c, continuation y) this compares the frozen decoder D given

- the full context: the teacher, D on [first, c, y];
- the K memory states of E on c: the student, D on [first, h_1..h_K, y];
- nothing: D on [first, y], the student with no memory;

over the positions that predict y (the same positions in all three), and reports

- ``kl_memory``, ``kl_no_memory``: KL(teacher ‖ student) with and without memory, and
  ``recovered = 1 − kl_memory / kl_no_memory``: the share of what the context tells D about its
  continuation that passes through the K tokens (≤ 0 for memory that carries nothing);
- ``nll_memory``, ``nll_no_memory``, ``nll_teacher``: −log p(y) under each, and ``nll_recovered``, the share
  of the teacher's NLL gain over no context that the memory recovers;
- ``rc_memory``, ``rc_no_memory``: reconstruction, −log p(c) from D on [first, h, c] and on [first, c].

Each figure is averaged over a window's tokens, then over windows (the training losses' averaging).
Without a first token (``model.first_token: none``) nothing predicts y_1 without memory, so every figure
is taken over y_2..y_L. For ``mntp``: the masked-token loss and accuracy on the held-out texts, masked
with fixed per-row seeds (the same masks at every evaluation).
"""
from __future__ import annotations

import torch

from ..modeling.row_dropout import sample_seeds

COMPRESSION_SUMS = ("kl_memory", "kl_no_memory", "nll_memory", "nll_no_memory", "nll_teacher", "rc_memory",
                    "rc_no_memory")
MNTP_SUMS = ("mntp_loss", "mntp_accuracy")
EVAL_SEED = 2_024_1203  # the masks of the held-out mntp rows: fixed, independent of the training seed


@torch.no_grad()
def per_token(logits, teacher: torch.Tensor, students: list[torch.Tensor], targets: torch.Tensor,
              chunk: int = 1024) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """Per position, fp32 [N]: the teacher's −log p(target), and for each student KL(p_teacher ‖ p_student)
    and −log p_student(target); through the LM head a chunk of positions at a time (never [N × vocab] at
    once), the teacher's log-probabilities computed once per chunk for every student."""
    n = teacher.shape[0]
    nll_t = torch.empty(n, dtype=torch.float32, device=teacher.device)
    kls = [torch.empty_like(nll_t) for _ in students]
    nlls = [torch.empty_like(nll_t) for _ in students]
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        t = targets[s:e, None]
        log_t = torch.log_softmax(logits(teacher[s:e]).float(), -1)
        p_t = log_t.exp()
        nll_t[s:e] = -log_t.gather(-1, t).squeeze(-1)
        for student, kl, nll in zip(students, kls, nlls):
            log_s = torch.log_softmax(logits(student[s:e]).float(), -1)
            kl[s:e] = (p_t * (log_t - log_s)).sum(-1)
            nll[s:e] = -log_s.gather(-1, t).squeeze(-1)
    return nll_t, kls, nlls


@torch.no_grad()
def nll_of(logits, hidden: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[N] fp32 −log p(target) of each position's state."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(0, hidden.shape[0], chunk):
        log_p = torch.log_softmax(logits(hidden[s : s + chunk]).float(), -1)
        out[s : s + chunk] = -log_p.gather(-1, targets[s : s + chunk, None]).squeeze(-1)
    return out


def sample_means(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sample means [B] of ``values`` [sum(lengths)] packed sample after sample."""
    sample = torch.repeat_interleave(torch.arange(lengths.shape[0], device=values.device), lengths)
    sums = torch.zeros(lengths.shape[0], dtype=values.dtype, device=values.device).index_add_(0, sample, values)
    return sums / lengths.clamp_min(1).to(values.dtype)


def _packed(ids: torch.Tensor, lengths: torch.Tensor, skip_first: bool) -> torch.Tensor:
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    return ids[(pos >= int(skip_first)) & (pos < lengths[:, None])]


def _drop_first(states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Packed per-target states without each sample's first."""
    starts = torch.cumsum(lengths, 0) - lengths
    keep = torch.ones(states.shape[0], dtype=torch.bool, device=states.device)
    keep[starts] = False
    return states[keep]


@torch.no_grad()
def diagnose(model, batch: dict) -> torch.Tensor:
    """Sums over the batch's windows of each ``COMPRESSION_SUMS`` figure (per-window means), then the
    number of windows: [len(COMPRESSION_SUMS) + 1], for an all-reduce. ``batch["weight"]`` (0 or 1 per
    window) leaves out rows that only pad a rank's share."""
    ctx, ctx_len = batch["context"], batch["context_len"]
    cont, cont_len = batch["continuation"], batch["continuation_len"]
    weight = batch["weight"].float()
    chunk = model.loss_chunk
    skip = model.prefix_ids.numel() == 0  # nothing predicts the first target without memory or prefix
    memory = model.memory_states(ctx, ctx_len)
    empty = memory[:, :0]

    def student(m, targets, lengths):
        h = model.decoder_hidden(m, targets, lengths)
        return _drop_first(h, lengths) if skip and m.shape[1] else h

    lengths = cont_len - int(skip)
    teacher = model.teacher_hidden(ctx, ctx_len, cont, cont_len)
    teacher = _drop_first(teacher, cont_len) if skip else teacher
    with_memory, without = student(memory, cont, cont_len), student(empty, cont, cont_len)
    targets = _packed(cont, cont_len, skip)
    rc_lengths = ctx_len - int(skip)
    rc_targets = _packed(ctx, ctx_len, skip)
    nll_teacher, (kl_memory, kl_none), (nll_memory, nll_none) = per_token(
        model.logits, teacher, [with_memory, without], targets, chunk)
    figures = [sample_means(f, lengths) for f in (kl_memory, kl_none, nll_memory, nll_none, nll_teacher)]
    for m in (memory, empty):
        figures.append(sample_means(nll_of(model.logits, student(m, ctx, ctx_len), rc_targets, chunk), rc_lengths))
    sums = torch.stack([(f * weight).sum() for f in figures])
    return torch.cat([sums, weight.sum()[None]])


@torch.no_grad()
def diagnose_mntp(model, batch: dict, ratio: float, mask_id: int, mode: str) -> torch.Tensor:
    """[masked-token loss sum, correct predictions, masked tokens] over the batch's held-out texts."""
    from .mntp import corrupt, mask_positions

    ids, lengths, rows, weight = batch["ids"], batch["lengths"], batch["rows"], batch["weight"]
    seeds = sample_seeds(EVAL_SEED, 0, 0, rows, torch.zeros_like(rows))
    p = model.prefix_ids.numel()
    selected = mask_positions(seeds, lengths, ids.shape[1], ratio, first=0 if p else 1) & (weight[:, None] > 0)
    inputs = corrupt(ids, selected, seeds, mask_id, mode, model.config.get_text_config().vocab_size)
    hidden = model.text_states(inputs, lengths)
    r, c = selected.nonzero(as_tuple=True)
    predictors, targets = hidden[r, c + p - 1], ids[r, c]
    nll = nll_of(model.logits, predictors, targets, model.loss_chunk)
    correct = torch.zeros((), device=ids.device)
    for s in range(0, predictors.shape[0], model.loss_chunk):
        correct += (model.logits(predictors[s : s + model.loss_chunk]).argmax(-1) == targets[s : s + model.loss_chunk]).sum()
    return torch.stack([nll.sum(), correct.float(), torch.tensor(float(targets.numel()), device=ids.device)])


def compression_figures(sums: torch.Tensor) -> dict:
    """The reported figures from all-reduced ``diagnose`` sums."""
    n = max(float(sums[-1]), 1.0)
    f = {name: float(v) / n for name, v in zip(COMPRESSION_SUMS, sums[:-1])}
    f["recovered"] = 1.0 - f["kl_memory"] / f["kl_no_memory"] if f["kl_no_memory"] > 0 else float("nan")
    gain = f["nll_no_memory"] - f["nll_teacher"]
    f["nll_recovered"] = (f["nll_no_memory"] - f["nll_memory"]) / gain if gain > 0 else float("nan")
    f["windows"] = int(round(float(sums[-1])))
    return f


def mntp_figures(sums: torch.Tensor) -> dict:
    n = max(float(sums[2]), 1.0)
    return {"mntp_loss": float(sums[0]) / n, "mntp_accuracy": float(sums[1]) / n, "masked_tokens": int(sums[2])}


def summary(figures: dict) -> str:
    """One line for the log and the run's final summary."""
    if "recovered" in figures:
        return (f"kl {figures['kl_no_memory']:.4f} -> {figures['kl_memory']:.4f} (no memory -> memory), "
                f"recovered {figures['recovered']:.3f}; nll {figures['nll_no_memory']:.3f} -> {figures['nll_memory']:.3f} "
                f"(teacher {figures['nll_teacher']:.3f}); rc {figures['rc_no_memory']:.3f} -> {figures['rc_memory']:.3f}; "
                f"{figures['windows']} held-out windows")
    return (f"masked-token accuracy {figures['mntp_accuracy']:.4f}, loss {figures['mntp_loss']:.4f}; "
            f"{figures['masked_tokens']} masked tokens")
