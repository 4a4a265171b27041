"""Gradient caching equals the uncached full-batch computation, with dropout on (single process);
row-seeded dropout is batch-invariant."""
import pytest
import torch

from tiny_models import VOCAB, tiny_compressor
from trainer.modeling.adapters import enable_gradient_checkpointing
from trainer.engine.gradcache import Rows, encode, first_pass, loss_and_row_gradients, replay
from trainer.modeling import row_dropout
from trainer.objectives.contrastive import gather_groups, supervised_loss, unsupervised_loss


def dropout_compressor(family="llama", lora_dropout=0.1, attention_dropout=0.2):
    from trainer.modeling.dropout import enable_row_seeded_dropout

    comp = tiny_compressor(family, k=3, prefix=(1,), lora_dropout=lora_dropout)
    enable_row_seeded_dropout(comp, attention_dropout)  # what ContrastTask does
    return comp.train()


def random_rows(n, seed=0, lo=3, hi=12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    ids = torch.randint(3, VOCAB, (n, hi), generator=g)
    ids[torch.arange(hi)[None, :] >= lengths[:, None]] = 0
    return ids, lengths


def grads(comp):
    return {n: p.grad.clone() for n, p in comp.named_parameters() if p.grad is not None}


def embed_fn(comp):
    return lambda ids, lengths: comp.embed_texts(ids, lengths)


@pytest.mark.parametrize("objective", ["ucl", "scl"])
@pytest.mark.parametrize("chunk, checkpointing", [(1, False), (2, False), (5, False), (100, False), (2, True), (100, True)])
def test_cached_gradients_equal_uncached_with_dropout(objective, chunk, checkpointing):
    comp = dropout_compressor()
    n = 6
    if objective == "ucl":
        ids, lengths = random_rows(n, seed=1)
        rows = Rows(torch.cat([ids, ids]), torch.cat([lengths, lengths]), torch.arange(2 * n) * 7919 + 11)
        sizes = {"view1": n, "view2": n}
        loss_fn = lambda x: unsupervised_loss(gather_groups(x, sizes), 0.05)
    else:
        ids, lengths = random_rows(3 * n, seed=2)  # queries, positives, one hard negative each
        rows = Rows(ids, lengths, torch.arange(3 * n) + 101)
        sizes = {"query": n, "positive": n, "negative": n}
        loss_fn = lambda x: supervised_loss(gather_groups(x, sizes), 0.05)

    comp.zero_grad()
    calls = row_dropout.STATS["dropout_calls"]
    full = encode(embed_fn(comp), rows)  # one pass, with a graph, whole batch
    assert row_dropout.STATS["dropout_calls"] > calls, "row-seeded attention dropout did not run"
    ref_loss = loss_fn(full)
    ref_loss.backward()
    ref = grads(comp)

    comp.zero_grad()
    if checkpointing:  # the recomputation in backward must replay the forward's dropout masks
        enable_gradient_checkpointing(comp.model, comp.switch)
    local, kept = first_pass(embed_fn(comp), rows, chunk)  # chunk 100: one pass, its graph kept
    assert (kept is not None) == (chunk >= len(rows))
    loss, g = loss_and_row_gradients(local, loss_fn)
    replay(embed_fn(comp), rows, g, chunk, backward=lambda l: l.backward(), step=lambda: None, kept=kept)
    got = grads(comp)

    assert torch.allclose(loss, ref_loss.detach(), atol=1e-5), (loss.item(), ref_loss.item())
    assert ref.keys() == got.keys() and any("lora" in k for k in ref) and any("memory" in k for k in ref)
    for k in ref:
        # fp32 sums in another order: compare relative to the tensor's scale (memory grads reach ~100).
        err = ((got[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-3)).item()
        assert err < 1e-5, (k, err)


def test_dropout_is_on_and_row_seeded():
    comp = dropout_compressor()
    ids, lengths = random_rows(4, seed=3)
    with torch.no_grad():
        a = encode(embed_fn(comp), Rows(ids, lengths, torch.tensor([1, 2, 3, 4])))
        b = encode(embed_fn(comp), Rows(ids, lengths, torch.tensor([5, 6, 7, 8])))
        again = encode(embed_fn(comp), Rows(ids[[2, 0]], lengths[[2, 0]], torch.tensor([3, 1])))
        comp.eval()
        plain = encode(embed_fn(comp), Rows(ids, lengths, torch.tensor([1, 2, 3, 4])))
    assert not torch.allclose(a, b, atol=1e-4), "other seeds must give other dropout masks"
    assert not torch.allclose(a, plain, atol=1e-4), "dropout must be active in training mode"
    # The same row and seed give the same embedding in another batch, order and padding width.
    assert torch.allclose(again, a[[2, 0]], atol=1e-6)


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_row_keep_masks_are_bernoulli_independent_and_shape_independent(p):
    keep = row_dropout.row_keep(torch.arange(256) * 7919 + 11, 3, (24, 96), p, "cpu")
    q = 1 - p
    assert abs(keep.float().mean().item() - q) < 0.01
    # Neighbours along every axis (rows with adjacent seeds, tokens, features) are independent draws.
    for a, b in [(keep[1:], keep[:-1]), (keep[:, 1:], keep[:, :-1]), (keep[:, :, 1:], keep[:, :, :-1])]:
        assert abs((a & b).float().mean().item() - q * q) < 0.01
    wider = row_dropout.row_keep(torch.arange(256) * 7919 + 11, 3, (30, 128), p, "cpu")
    assert torch.equal(wider[:, :24, :96], keep)  # a row's mask does not depend on the padding width
    other = row_dropout.row_keep(torch.arange(256) * 7919 + 11, 4, (24, 96), p, "cpu")
    assert abs((other & keep).float().mean().item() - q * q) < 0.01  # another module, another mask


def test_compiled_mask_is_bit_identical_to_the_reference():
    """On a GPU the mask is one compiled kernel (trainer/modeling/row_dropout.py: keep_mask); the compiled
    function must draw exactly the eager masks. Compiled here for the CPU, at a padded and a packed shape."""
    seeds = torch.arange(8, dtype=torch.int64) * 7919 + 11
    compiled = torch.compile(row_dropout.keep_from, dynamic=False)
    nd = 3
    coords = [row_dropout._arange(19, 1, nd, "cpu"), row_dropout._arange(96, 2, nd, "cpu")]
    assert torch.equal(compiled(seeds.view(-1, 1, 1), coords, 3, 0.1), row_dropout.row_keep(seeds, 3, (19, 96), 0.1, "cpu"))
    pos = torch.randint(0, 40, (2, 24))
    packed = row_dropout.PackedSeeds(seeds[torch.randint(0, 8, (2, 24))], pos)
    h = torch.arange(4)[None, :, None, None]
    got = compiled(packed.seed[:, None, :, None], [h, pos[:, None, :, None], pos[:, None, None, :]], 9, 0.2)
    assert torch.equal(got, packed.keep_attention(9, 4, 0.2))


def test_chunks_grouped_by_length_give_the_same_gradients_with_less_padding():
    """Chunks are cut from the rows sorted by length: the loss sees the embeddings in batch order, so the
    gradients are those of chunks in batch order, while far fewer padded positions are encoded."""
    n, chunk = 8, 4
    ids, lengths = random_rows(3 * n, seed=5, lo=2, hi=40)  # queries, positives, negatives of mixed lengths
    rows = Rows(ids, lengths, torch.arange(3 * n) + 7)
    sizes = {"query": n, "positive": n, "negative": n}
    loss_fn = lambda x: supervised_loss(gather_groups(x, sizes), 0.05)
    result = {}
    for grouped in (False, True):
        comp = dropout_compressor()
        computed = []

        def embed(i, n_):
            computed.append(i.numel())  # token positions the encoder computes, padding included
            return comp.embed_texts(i, n_)

        local, kept = first_pass(embed, rows, chunk, group_by_length=grouped)
        assert kept is None
        loss, g = loss_and_row_gradients(local, loss_fn)
        replay(embed, rows, g, chunk, backward=lambda l: l.backward(), step=lambda: None, group_by_length=grouped)
        result[grouped] = (loss, grads(comp), sum(computed))
        assert sum(computed) == 2 * rows.padded_tokens(chunk, grouped)  # two passes over the same chunks
    (loss0, g0, t0), (loss1, g1, t1) = result[False], result[True]
    assert torch.allclose(loss0, loss1, atol=1e-6)
    assert g0.keys() == g1.keys() and any("lora" in k for k in g0)
    for k in g0:
        err = ((g1[k] - g0[k]).abs().max() / g0[k].abs().max().clamp_min(1e-3)).item()
        assert err < 1e-5, (k, err)
    real = 2 * int(lengths.sum())
    assert t1 < t0 and (t1 - real) < 0.5 * (t0 - real), (t0, t1, real)  # at least half the padding gone


def test_recipe_setting_chunk_by_length_reaches_the_stage():
    """contrast.chunk_by_length takes effect in ContrastTask's own loss/update: same loss, fewer positions."""
    from trainer.engine.dist import World
    from trainer.engine.settings import TrainSettings
    from trainer.stages.contrast import ContrastRecipe, ContrastSettings, ContrastTask

    b = 6
    q, ql = random_rows(b, seed=8, lo=2, hi=40)
    p, pl = random_rows(b, seed=9, lo=2, hi=40)
    ng, nl = random_rows(b, seed=10, lo=2, hi=40)
    batch = {"query": q, "query_len": ql, "positive": p, "positive_len": pl, "negative": ng, "negative_len": nl}
    seen = {}
    for grouped in (False, True):
        comp, positions = dropout_compressor(), []

        class Engine:
            micro_steps = global_steps = 0

            def __call__(self, what, ids, lengths):
                positions.append(ids.numel())
                return comp.embed_texts(ids, lengths)

            def backward(self, loss, scale_wrt_gas=True):
                loss.backward()

            def step(self):
                self.micro_steps += 1

        settings = ContrastSettings(kind="scl", chunk=4, chunk_by_length=grouped)
        task = ContrastTask(ContrastRecipe(contrast=settings, train=TrainSettings(micro_batch=b)))
        task.world, task.pad_id = World(0, 1, 0), 0
        engine = Engine()
        out = task.loss(engine, batch)
        task.update(engine, out)
        assert engine.micro_steps == task.micro_steps_per_batch == 5  # 18 rows in chunks of 4
        seen[grouped] = (out.loss.item(), sum(positions))
    assert seen[True][0] == pytest.approx(seen[False][0], abs=1e-6)
    assert seen[True][1] < seen[False][1], seen
