"""The ``llm2comp`` command: one entry point, a subcommand per pipeline step (DESIGN.md §5)."""
from __future__ import annotations

import argparse
import os
import sys

from data_prep.errors import UserError, at_least


class RecipeHelp(argparse.Action):
    """``--help`` of a training command: its usage, then every recipe key with its default, generated from
    the typed settings (imported only when asked: the stages import torch)."""

    def __init__(self, option_strings, dest, recipe: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show this help and the recipe keys")
        self.recipe = recipe

    def __call__(self, parser, namespace, values, option_string=None):
        import importlib

        from .config import describe

        module, name = self.recipe.split(":")
        schema = getattr(importlib.import_module(module), name)
        aliases = ", ".join(f"{k}= ({v})" for k, v in getattr(schema, "ALIASES", {}).items())
        parser.print_help()
        print("\nrecipe keys (set in RECIPE.yaml or as dotted.key=value overrides; defaults shown):")
        print("\n".join(describe(schema)))
        print(f"\nshort overrides: {aliases}\nrecipes: launch/recipes/*.yaml (docs/TRAINING.md)")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from data_prep import __version__
    from data_prep import cli as prep_cli

    from . import model_store

    parser = argparse.ArgumentParser(prog="llm2comp", description="Decoder LLMs to text encoders (LLM2Comp).")
    parser.add_argument("--version", action="version", version=f"llm2comp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    prep_cli.add_arguments(sub.add_parser("prep", help="tokenize corpora into Arrow shards (offline, CPU)"))
    p = sub.add_parser("pretrain", help="stage 1: compression pretraining (DeepSpeed)", add_help=False)
    p.add_argument("-h", "--help", action=RecipeHelp, recipe="trainer.stages.pretrain:PretrainRecipe")
    p.add_argument("--config", required=True, metavar="RECIPE.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data=DIR max_steps=100 model.lora.r=8")
    p.set_defaults(func=_run_pretrain)
    p = sub.add_parser("contrast", help="stages 2 and 3: contrastive training with gradient caching (DeepSpeed)",
                       add_help=False)
    p.add_argument("-h", "--help", action=RecipeHelp, recipe="trainer.stages.contrast:ContrastRecipe")
    p.add_argument("--config", required=True, metavar="RECIPE.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. init_from=RUN data=DIR chunk=8")
    p.set_defaults(func=_run_contrast)
    p = sub.add_parser("export", help="a finished run as one self-contained encoder directory", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, metavar="DIR")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--max-length", type=at_least(1), default=None,
                   help="tokens an input is cut to (default: the longest the training shards allowed)")
    p.add_argument("--adapter-only", action="store_true",
                   help="the stage adapters (PEFT), memory tokens and config, loaded on top of the base model by name")
    p.add_argument("--eval", action="append", metavar="RESULTS.json", help="`llm2comp eval` results for the model card")
    p.add_argument("--name", help="the model's name in its card (default: the output folder's name)")
    p.set_defaults(func=_lazy("trainer.serving.export"))
    p = sub.add_parser("encode", help="embed texts (.txt lines or .jsonl with --text-field) into a .npy file", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--input", required=True, metavar="FILE")
    p.add_argument("--output", required=True, metavar="FILE.npy")
    p.add_argument("--text-field", default="text", help=".jsonl input: the field holding each text")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="texts per forward pass")
    p.add_argument("--instruction", default=None, help="put before every text with the export's instruction template "
                   "(queries of a supervised model)")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder block (train.compile); pays "
                   "on many short texts, docs/BENCHMARKS.md")
    p.set_defaults(func=_lazy("trainer.serving.encode_cli"))
    ev = sub.add_parser("eval", help="evaluate an encoder").add_subparsers(dest="benchmark", required=True)
    p = ev.add_parser("sts", help="Spearman x100 of cosine similarity on every STS set in --data", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="llm2comp export, sentence-transformers or causal LM folder")
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--output", metavar="FILE.json")
    p.add_argument("--pooling", choices=["mean", "last", "memory"], help="for a plain causal LM")
    p.add_argument("--first-token", metavar="TOKEN", help="for a plain causal LM: the token every input starts with "
                   "(auto, none or a vocabulary entry, as model.first_token; default: what the tokenizer adds)")
    p.add_argument("--stsb-split", default="test", choices=["test", "dev", "train"])
    p.add_argument("--batch-size", type=at_least(1), default=64, help="texts per forward pass")
    p.add_argument("--instruction", default=None,
                   help="applied to both sentences with the model's instruction template (supervised models)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (logs, scripts)")
    p.set_defaults(func=_lazy("trainer.serving.eval_cli"))
    p = ev.add_parser("mteb", help="MTEB tasks or a benchmark, through the mteb package (offline: local folders, "
                      "cached tasks)")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="llm2comp export, sentence-transformers folder, or causal LM with --pooling")
    p.add_argument("--tasks", metavar="NAME,...", help="e.g. STSBenchmark,SICK-R,SciFact")
    p.add_argument("--benchmark", metavar="NAME", help="llm2comp-paper (the paper's 14 tasks), llm2comp-offline (the "
                   "eight tasks with local copies), llm2comp-offline6 (those six without retrieval), or one of mteb's, "
                   "e.g. 'MTEB(eng, v2)'")
    p.add_argument("--data-dir", metavar="DIR", help="task data in local folders, DIR/<Task>[-<subset>]/<split>.jsonl, "
                   "or for retrieval DIR/<Task>/{corpus.jsonl,queries.jsonl,qrels/<split>.tsv} (default: "
                   "$LLM2COMP_MTEB_DATA); other tasks load from the datasets cache or the Hub")
    p.add_argument("--output", metavar="DIR", help="per-task results and summary.json (required unless --download-only)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="texts per forward pass (default: %(default)s)")
    p.add_argument("--max-length", type=at_least(1), default=512, metavar="N", help="tokens of a text the model reads, "
                   "instruction included; longer texts are cut (default: %(default)s; a sentence-transformers model "
                   "keeps its own max_seq_length where that is shorter)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="the model's weights (auto: bf16 on a GPU, fp32 on a CPU); not for sentence-transformers")
    p.add_argument("--pooling", choices=["mean", "last", "memory"], help="for a plain causal LM")
    p.add_argument("--first-token", metavar="TOKEN", help="for a plain causal LM: the token every input starts with "
                   "(auto, none or a vocabulary entry, as model.first_token; default: what the tokenizer adds)")
    p.add_argument("--instructions", metavar="FILE", help="JSON task -> instruction, over the shipped table")
    p.add_argument("--compile", action="store_true", help="torch.compile each decoder block (llm2comp exports and "
                   "causal LMs; recorded as compiled_blocks in summary.json)")
    p.add_argument("--download-only", action="store_true", help="fill the Hugging Face cache with the tasks' data")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (logs, scripts)")
    p.set_defaults(func=_lazy("trainer.serving.evaluation.mteb_eval"))
    p = sub.add_parser("analyze", help="dimensional collapse: singular spectrum, effective rank, alignment, uniformity", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--input", required=True, metavar="FILE", help=".txt (text, or text<TAB>pair per line) or .jsonl")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--text-field", default="text")
    p.add_argument("--pooling", choices=["mean", "last", "memory"], help="for a plain causal LM")
    p.add_argument("--first-token", metavar="TOKEN", help="for a plain causal LM: the token every input starts with "
                   "(auto, none or a vocabulary entry, as model.first_token; default: what the tokenizer adds)")
    p.add_argument("--batch-size", type=at_least(1), default=64, help="texts per forward pass")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (logs, scripts)")
    p.set_defaults(func=_lazy("trainer.serving.analyze"))
    model_store.add_arguments(sub.add_parser("models", help="fetch real pretrained models for offline use"))
    return parser


def _run_pretrain(args) -> int:
    from .stages.pretrain import run  # torch and deepspeed load only for training commands

    return run(args)


def _lazy(module: str):
    """A command whose module (and torch) is imported only when it runs."""

    def run(args) -> int:
        import importlib

        return importlib.import_module(module).run(args)

    return run


def _run_contrast(args) -> int:
    from .stages.contrast import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"llm2comp {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"llm2comp {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `llm2comp ... | head`: the reader left; no traceback, the shell's SIGPIPE status
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def console() -> None:
    """The `llm2comp` command and `python -m trainer.cli`: main(), then an exit that cannot abort a finished
    distributed run at interpreter teardown (engine.dist.exit_process)."""
    code = main()
    dist = sys.modules.get(f"{__package__}.engine.dist")  # imported only by commands that can start a process group
    if dist is not None and dist.process_group_used():
        dist.exit_process(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
