"""The task lists ``eval mteb --benchmark`` knows besides mteb's own benchmarks.

``llm2comp-paper``: the 14 MTEB tasks of the LLM2Comp paper's tables (Zhang et al., AAAI 2026, arXiv
2511.17129: two classification, three clustering, three retrieval, three STS, one pair-classification and two
reranking tasks), as mteb names them. The paper compares with LLM2Vec's published per-task MTEB figures, so
these are MTEB's original (v1) tasks, not the ``.v2`` versions that supersede some of them (mteb 2.x still
runs both), STS17 on its English subset ``en-en`` and every task on its test split, as the English MTEB
leaderboard scores them.

``llm2comp-offline``: the eight tasks whose data ``../shared/data/mteb`` holds (seven of the paper's, two of them
retrieval, and AmazonCounterfactualClassification, English subset ``en``), scored on the test split.
``llm2comp-offline6``: the six of them without retrieval, the set every result before the retrieval tasks were
copied was scored on: its average stays comparable with those results.
"""
from __future__ import annotations

PAPER = ("Banking77Classification", "EmotionClassification", "TwentyNewsgroupsClustering", "BiorxivClusteringS2S",
         "MedrxivClusteringS2S", "SciFact", "NFCorpus", "ArguAna", "STS17", "SICK-R", "STSBenchmark",
         "SprintDuplicateQuestions", "StackOverflowDupQuestions", "SciDocsRR")
OFFLINE6 = ("Banking77Classification", "EmotionClassification", "AmazonCounterfactualClassification", "STS17",
            "SICK-R", "STSBenchmark")
RETRIEVAL = ("SciFact", "NFCorpus")
OFFLINE = (*OFFLINE6, *RETRIEVAL)
BENCHMARKS = {"llm2comp-paper": PAPER, "llm2comp-offline": OFFLINE, "llm2comp-offline6": OFFLINE6}
SUBSETS = {"STS17": ("en-en",), "AmazonCounterfactualClassification": ("en",)}  # the English MTEB's subsets
SPLITS = ("test",)


def benchmark_tasks(name: str) -> list:
    """The tasks of one of ``BENCHMARKS``, as mteb task objects restricted to the subsets and split scored."""
    import warnings

    import mteb

    with warnings.catch_warnings():  # the v1 tasks warn that a .v2 supersedes them: the paper used v1
        warnings.simplefilter("ignore")
        return [mteb.get_task(t, hf_subsets=list(SUBSETS[t]) if t in SUBSETS else None, eval_splits=list(SPLITS))
                for t in BENCHMARKS[name]]
