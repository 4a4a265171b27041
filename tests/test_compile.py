"""``train.compile``: compiled blocks give eager's losses and gradients, gradient caching stays exact with
dropout on, recompilations stay bounded over varying shapes, and the setting reaches the modules.
``model.dtype: auto``: resolved to what the device runs natively, and recorded."""
import json

import pytest
import torch

from conftest import launch, losses
from test_gradcache import dropout_compressor, grads, random_rows
from tiny_models import random_batch, tiny_compressor
from trainer.modeling.adapters import enable_gradient_checkpointing
from trainer.engine.gradcache import Rows, encode, first_pass, loss_and_row_gradients, replay
from trainer.modeling.compile import compile_blocks, compile_stats, compiled_blocks
from trainer.objectives.compression import compression_loss
from trainer.objectives.contrastive import gather_groups, unsupervised_loss


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-3)).item()


def assert_same_grads(got: dict, ref: dict, tol: float) -> None:
    assert got.keys() == ref.keys() and any("lora" in k for k in ref) and any("memory" in k for k in ref)
    for k in ref:
        assert relative_error(got[k], ref[k]) < tol, (k, relative_error(got[k], ref[k]))


def test_compiled_stage1_step_equals_eager(objective="kl"):
    """E, teacher and student passes through compiled blocks: the same loss and gradients as eager (fp32;
    LoRA dropout 0: compiled torch dropout draws other masks from the same distribution)."""
    eager, comp = tiny_compressor(), tiny_compressor()
    assert compile_blocks(comp.decoder) == compiled_blocks(comp.decoder) == 2 and compiled_blocks(eager.decoder) == 0
    out = {}
    for name, model in (("eager", eager), ("compiled", comp)):
        model.train().zero_grad()
        loss = compression_loss(model, objective, random_batch(4, seed=3))
        loss.backward()
        out[name] = (loss.detach(), grads(model))
    assert torch.allclose(out["compiled"][0], out["eager"][0], rtol=1e-5), (out["compiled"][0], out["eager"][0])
    assert_same_grads(out["compiled"][1], out["eager"][1], 1e-4)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_compiled_gradient_cache_is_exact_with_dropout(checkpointing):
    """Row-seeded LoRA and attention dropout inside compiled blocks: chunked gradient caching on the compiled
    model gives the eager model's uncached full-batch gradients (the masks are a function of the row, so
    compiled and eager draw the same ones). With gradient checkpointing too (the 7B recipes'): the checkpoint
    stays outside the compiled graph, its recomputation under the forward's row seeds and adapter state."""
    eager, comp = dropout_compressor(), dropout_compressor()
    checkpoints = []
    if checkpointing:
        enable_gradient_checkpointing(comp.model, comp.switch)
        for block in comp.decoder.layers:  # count that the compiled blocks still checkpoint
            block._gradient_checkpointing_func = counted(block._gradient_checkpointing_func, checkpoints)
    compile_blocks(comp.decoder)
    assert compiled_blocks(comp.decoder) == 2
    ids, lengths = random_rows(6, seed=1)
    rows = Rows(torch.cat([ids, ids]), torch.cat([lengths, lengths]), torch.arange(12) * 7919 + 11)
    loss_fn = lambda x: unsupervised_loss(gather_groups(x, {"view1": 6, "view2": 6}), 0.05)  # noqa: E731

    eager.zero_grad()
    ref_loss = loss_fn(encode(lambda i, n: eager.embed_texts(i, n), rows))
    ref_loss.backward()
    ref = grads(eager)

    comp.zero_grad()
    embed = lambda i, n: comp.embed_texts(i, n)  # noqa: E731
    local, kept = first_pass(embed, rows, 4)
    loss, g = loss_and_row_gradients(local, loss_fn)
    replay(embed, rows, g, 4, backward=lambda l: l.backward(), step=lambda: None, kept=kept)
    assert torch.allclose(loss, ref_loss.detach(), rtol=1e-5), (loss.item(), ref_loss.item())
    assert_same_grads(grads(comp), ref, 1e-4)
    assert len(checkpoints) == (2 * 3 if checkpointing else 0)  # 2 blocks x 3 chunks of the replay


def counted(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapper


@torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)  # not dynamo's silent fall-back to eager
def test_recompilations_stay_bounded_over_lengths_and_batch_sizes():
    """Dynamic shapes: after the first calls of each kind (E with grad, E without, D, teacher), new lengths
    and batch sizes compile nothing new; a shape-specialised compile would add frames at every length. And
    one graph serves every layer: both models have 10 (above dynamo's recompile limit of 8), the contrastive
    one with each layer's own dropout salts, which as int attributes would compile once per layer until the limit, then
    leave the remaining blocks eager."""
    from trainer.modeling.dropout import enable_row_seeded_dropout
    from trainer.modeling.row_dropout import row_seeds

    comp = tiny_compressor(num_hidden_layers=10)  # stage 1's model; the contrastive stages' (row-seeded dropout)
    drop = tiny_compressor(k=3, prefix=(1,), lora_dropout=0.1, num_hidden_layers=10)
    enable_row_seeded_dropout(drop, 0.2)
    drop.train()
    compile_blocks(comp.decoder)
    compile_blocks(drop.decoder)
    comp.train()

    def step(b, seed, ctx, cont):
        comp.zero_grad()
        compression_loss(comp, "kl", random_batch(b, seed=seed, ctx=ctx, cont=cont)).backward()
        ids, lengths = random_rows(b, seed=seed, lo=ctx[0], hi=ctx[1])
        with torch.no_grad():
            comp.embed_texts(ids, lengths)
        with row_seeds(torch.arange(b) + seed):  # dropout masks from row seeds, as ContrastTask encodes
            drop.embed_texts(ids, lengths).sum().backward()

    step(3, 0, (4, 9), (3, 6))
    step(5, 1, (10, 20), (7, 11))
    warm = compile_stats()
    for i, (b, ctx, cont) in enumerate([(2, (3, 5), (3, 4)), (7, (20, 40), (9, 30)), (4, (6, 13), (5, 8)),
                                        (6, (30, 60), (12, 25))]):
        step(b, 10 + i, ctx, cont)
    after = compile_stats()
    assert after["frames_compiled"] == warm["frames_compiled"], (warm, after)
    assert warm["frames_compiled"] <= 12, warm  # a few kinds of call, not one per layer
    assert after["graph_breaks"] == warm["graph_breaks"], (warm, after)


def test_a_compile_setting_the_modules_do_not_carry_is_refused():
    from trainer.modeling.effective import Expected, SettingsMismatch, read_effective, verify

    comp = tiny_compressor().train()
    want = Expected("sdpa", 0.0, False, 4, 8, 0.0, ["down_proj", "gate_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
                    "memory", 3, True, [1], compiled=True)
    with pytest.raises(SettingsMismatch, match="train.compile"):
        verify(comp, want)
    compile_blocks(comp.decoder)
    assert read_effective(comp)["compiled_blocks"] == [2, 2]
    verify(comp, want)  # now it does
    with pytest.raises(SettingsMismatch, match="model.dtype"):
        verify(comp, Expected(**{**want.__dict__, "dtype": "bfloat16"}))


def test_train_compile_and_auto_precision_reach_the_run(tmp_path, compression_data):
    """Through the trainer: train.compile=true compiles every block (read back into effective_settings.json),
    the run trains, and model.dtype/train.precision auto resolve to this CPU's choice, which recipe.yaml
    records."""
    from trainer.engine.precision import native_bf16

    r = launch(1, f"data={compression_data}", f"output_dir={tmp_path}", "max_steps=3", "train.compile=true",
               "model.dtype=auto", "train.precision=auto", "train.eval_every=0")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    effective = json.loads((tmp_path / "effective_settings.json").read_text())
    assert effective["compiled_blocks"] == [2, 2]
    native, _ = native_bf16("cpu")
    want = "bfloat16" if native else "float32"
    assert effective["dtype"] == want
    import yaml

    recipe = yaml.safe_load((tmp_path / "recipe.yaml").read_text())
    assert recipe["model"]["dtype"] == want and recipe["train"]["precision"] == ("bf16" if native else "fp32")
    assert f"model.dtype auto -> {want}" in r.stdout
    loss = losses(tmp_path)
    assert set(loss) == {1, 2, 3} and all(0 < v < 100 for v in loss.values())
