"""The serving side: what a finished run becomes and how it is used.

``export`` turns a run into a model directory (Hugging Face + sentence-transformers), ``encoder`` loads
one (``Encoder``), ``st_module`` is the sentence-transformers module inside it, ``evaluation`` scores it
(STS, MTEB) and ``analyze`` looks inside its memory tokens. Training lives in ``stages``/``engine``.

``from trainer.serving import Encoder`` imports torch only when the name is first used.
"""


def __getattr__(name):
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
