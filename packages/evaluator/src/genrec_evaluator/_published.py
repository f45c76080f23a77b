"""BIGRec / TALLRec / GORACS evaluation as their published scripts do it (SeqRec and CTR).

Read from github.com/SAI990323/BIGRec (``inference.py``, ``data/game/evaluate.py``,
``data/embedding.ipynb``), github.com/SAI990323/TALLRec (``evaluate.py``, ``finetune_rec.py``) and
github.com/Mithas-114/GORACS (``codes/finetune/finetune_and_evaluate_*.sh``,
``datasets/food/SeqRec/evaluate.py``, ``codes/data/generate_item_embeddings.ipynb``,
``codes/data/data_process_SeqRec.ipynb``). Our own code; the numbers and rules are theirs.

The numpy parts import without torch; the model parts import torch inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from genrec_evaluator._errors import EvaluatorError

# Their SeqRec cut-offs: BIGRec's evaluate.py lists six, GORACS's evaluate.py reports two.
BIGREC_KS = (1, 3, 5, 10, 20, 50)
GORACS_KS = (5, 10)

# BIGRec inference.py's evaluate(): beam search (no sampling, so temperature 0 / top-p 0.9 / top-k 40
# are inert), 4 beams, the best beam kept, 128 new tokens, prompts in batches of 8 padded on the left
# with id 0 (LLaMA's <unk>).
BIGREC_GENERATION: dict[str, Any] = {
    "num_beams": 4, "max_new_tokens": 128, "temperature": 0.0, "top_p": 0.9, "top_k": 40, "batch_size": 8,
}
# BIGRec's evaluate.py and embedding notebook embed titles 16 at a time.
BIGREC_EMBED_BATCH = 16
BIGREC_PAD_ID = 0

# BIGRec's inference prompt has two spaces after "request." (GORACS's SeqRec training prompt has one);
# TALLRec's has alpaca-lora's stray noqa comment (hash, "noqa: E501") inside the string, which its models were trained on.
_HEAD_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.")
_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
# (Split in two so that linters do not read the string as a directive.)
_TAIL = {"bigrec": "  ", "tallrec": "  #" + " noqa: E501"}


def alpaca_prompt(instruction: str, input: str | None, *, style: str) -> str:
    """The prompt BIGRec's ``inference.py`` (``style="bigrec"``) or TALLRec's ``evaluate.py``
    (``style="tallrec"``) builds; an empty input takes the no-input template, as their ``if input:`` does."""
    if style not in _TAIL:
        raise EvaluatorError(f"prompt style must be bigrec or tallrec, got {style!r}")
    if input:
        return f"{_HEAD_INPUT}{_TAIL[style]}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"{_HEAD_NO_INPUT}{_TAIL[style]}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def bigrec_title(generated: str) -> str:
    """The text BIGRec embeds: the output after the last ``Response:\\n`` with its double quotes
    stripped (``predict[0].strip('"')``); whitespace and anything after the title stay."""
    return generated.split("Response:\n")[-1].strip('"')


def bigrec_item_text(title: str) -> str:
    """An item title as BIGRec's embedding notebook prepares it: ``strip(" ").strip('"')``."""
    return title.strip(" ").strip('"')


def bigrec_name_key(title: str) -> str:
    """The key BIGRec's ``item_dict`` files a title under (``strip('"\\n').strip(" ")``)."""
    return title.strip('"\n').strip(" ")


def argsort_positions(dist: np.ndarray) -> np.ndarray:
    """0-based position of every item in the stable ascending argsort of ``dist`` (what
    ``dist.argsort().argsort()`` gives): items closer than ``j``, plus items at the same distance
    with a smaller index."""
    pos = np.empty(dist.shape[0], dtype=np.int64)
    pos[np.argsort(dist, kind="stable")] = np.arange(dist.shape[0])
    return pos


def bigrec_full_rank(dist: np.ndarray, same_title: np.ndarray) -> int:
    """BIGRec's 0-based rank: the best argsort position among the items that carry the target's title."""
    return int(argsort_positions(dist)[same_title].min())


def goracs_sampled_rank(dist: np.ndarray, target: int, candidates: Sequence[int]) -> int:
    """GORACS's 0-based sampled rank: how many of ``candidates`` (target and negatives, duplicates
    counted) come before ``target`` in the full argsort. Ties therefore count only when the tied item
    has a smaller index."""
    pos = argsort_positions(dist)
    return int(np.sum(pos[np.asarray(candidates, dtype=np.int64)] < pos[target]))


def tallrec_p_yes(logits: Any, yes_id: int, no_id: int) -> Any:
    """TALLRec's score from the first-step logits (torch, 1-D): softmax over the whole vocabulary in
    the logits' dtype (half precision in TALLRec), then a second softmax over the two probabilities
    in float32, so ``P = 1 / (1 + exp(p_no - p_yes))`` of probabilities, not of logits."""
    import torch

    probs = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
    pair = torch.tensor([float(probs[yes_id]), float(probs[no_id])], dtype=torch.float32)
    return float(torch.softmax(pair, dim=-1)[0])


def answer_token_id(tokenizer: Any, prompt: str, word: str) -> int:
    """The first token of ``word`` as it is tokenized right after ``prompt`` (as in training: after
    "### Response:\\n" LLaMA writes "Yes" as piece 8241, not the word-initial "▁Yes" 3869)."""
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + word, add_special_tokens=False)["input_ids"]
    if len(full) <= len(head) or list(full[: len(head)]) != list(head):
        raise EvaluatorError(f"the tokenizer merges {word!r} into the end of the prompt; pass yes_id/no_id explicitly")
    return int(full[len(head)])


class BigrecEmbedder:
    """A causal LM's last-layer hidden state at the last position, as BIGRec embeds titles: BOS added,
    batches of 16 in order, padded on the left with id 0, an attention mask but no position ids (so a
    padded title's positions are shifted by its padding, as in their script), no normalisation."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = BIGREC_EMBED_BATCH,
                 pad_id: int = BIGREC_PAD_ID) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.pad_id = pad_id

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                ids = [list(self.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts[start : start + self.batch_size]]
                width = max(len(i) for i in ids)
                input_ids = torch.tensor([[self.pad_id] * (width - len(i)) + i for i in ids], device=device)
                mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
                out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
                rows.append(out.hidden_states[-1][:, -1].double().cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0))


def bigrec_generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, num_beams: int = 4,
                    max_new_tokens: int = 128, batch_size: int = 8, progress: bool = False) -> list[str]:
    """BIGRec's decoding: left-padded batches (pad id 0), beam search, the best beam's new text."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    out: list[str] = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), batch_size), disable=not progress, desc="bigrec"):
            ids = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts[start : start + batch_size]]
            width = max(len(i) for i in ids)
            input_ids = torch.tensor([[BIGREC_PAD_ID] * (width - len(i)) + i for i in ids], device=device)
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
            seqs = model.generate(
                input_ids=input_ids, attention_mask=mask, do_sample=False, num_beams=num_beams,
                num_return_sequences=1, max_new_tokens=max_new_tokens, pad_token_id=BIGREC_PAD_ID,
                eos_token_id=eos,
            )
            # Their split is taken on the decoded prompt + output (a suffix decoded alone can lose a
            # leading space); the pads are dropped first, which their skip of <unk> does for LLaMA.
            for row, i in zip(seqs, ids):
                out.append(bigrec_title_part(tokenizer.decode(row[width - len(i) :], skip_special_tokens=True)))
    return out


def bigrec_title_part(decoded: str) -> str:
    """``output.split('Response:\\n')[-1]`` of BIGRec's inference."""
    return decoded.split("Response:\n")[-1]
