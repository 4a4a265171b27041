"""The fixed first position of every input of E and D (DESIGN.md §1), from ``model.first_token``.

A causal LM turns its first position into an attention sink. Without a fixed token there, the student
D on ``[h_1..h_K, y]`` would have to put ``h_1`` in the sink's place, and the encoder's first text token
would be one. Llama's tokenizer adds BOS; SmolLM2's and Qwen's add nothing, so a configured token takes
the place. Training, export and ``Encoder`` all read the ids resolved here (recorded in the run's lineage).
"""
from __future__ import annotations

from typing import Optional

from data_prep.errors import UserError

AUTO, NONE = "auto", "none"


def resolve_first_token(tokenizer, identity: dict, setting: str, inherited: Optional[list[int]] = None) -> list[int]:
    """The prefix ids for ``setting`` (``auto`` | ``none`` | a vocabulary entry).

    ``inherited``: the ids an earlier stage of this model trained with; ``auto`` keeps them, and an explicit
    setting that differs is refused (an encoder changed mid-lineage would read its memory from another sink)."""
    setting = setting.strip()
    if inherited is not None and setting == AUTO:
        return list(inherited)
    if setting == NONE:
        ids: list[int] = []
    elif setting == AUTO:
        if identity["prefix_ids"]:
            ids = list(identity["prefix_ids"])
        else:
            token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
            if token_id is None:
                raise UserError(f"model.first_token auto: tokenizer {identity.get('name_or_path')} adds no prefix and "
                                "has neither a bos nor an eos token; name one vocabulary entry or none")
            ids = [int(token_id)]
    else:
        vocab = tokenizer.get_vocab()
        if setting not in vocab:
            raise UserError(f"model.first_token {setting!r} is not a single entry of the vocabulary of "
                            f"{identity.get('name_or_path')}; name one that is, or auto / none")
        ids = [int(vocab[setting])]
    if inherited is not None and list(inherited) != ids:
        raise UserError(f"model.first_token {setting!r} gives ids {ids}, but the run this stage starts from "
                        f"(init.init_from) trained with {list(inherited)}; keep auto to inherit them")
    return ids


def describe(tokenizer, ids: list[int]) -> str:
    return " ".join(tokenizer.convert_ids_to_tokens(ids)) if ids else "none"
