"""GORACS's downstream fine-tuning as published: the two recipes number for number, and the
records token for token.

Sources: github.com/Mithas-114/GORACS codes/finetune/finetune_and_evaluate_seqrec.sh ("seqrec.sh"),
codes/finetune/finetune_seqrec/train.py ("train.py", BIGRec's train.py), finetune_and_evaluate_ctrpre.sh
("ctrpre.sh") and README.md; github.com/SAI990323/TALLRec finetune_rec.py (what ctrpre.sh leaves to
GORACS's finetune_ctrpre/train.py, a TALLRec copy absent from the snapshot we read); defaults of
transformers 4.32.1 and peft 0.3.0 (GORACS requirements.txt).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from genrec_core.models import build_tiny_model
from genrec_trainer import TrainConfig, TrainerError, load_config, recipe_path, train
from genrec_trainer._data import IGNORE_INDEX, read_records, tokenize_records
from genrec_trainer._model import load_tokenizer
from genrec_trainer._train import _epoch_order

RECIPES = ("goracs-bigrec-seqrec", "goracs-tallrec-ctr")


def _shared(cfg: TrainConfig) -> None:
    """What both scripts share (seqrec.sh and ctrpre.sh pass the same flags for these)."""
    # README.md: LLaMa-7B is huggingface.co/huggyllama/llama-7b (--base_model ../../models/LLMs/LLaMa-7B)
    assert cfg.model == "huggyllama/llama-7b"
    assert cfg.batch_size == 16  # "--micro_batch_size 16"
    assert cfg.grad_accum == 8  # "--batch_size 128": gradient_accumulation_steps = 128 // 16
    assert cfg.max_length == 512  # "--cutoff_len 512"
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16.0, 0.05)  # --lora_r/--lora_alpha/--lora_dropout
    assert cfg.target_modules == ("q_proj", "v_proj")  # "--lora_target_modules '[q_proj,v_proj]'"
    assert cfg.mode == "lora"
    assert cfg.quantization == "int8"  # from_pretrained(load_in_8bit=True)
    # prepare_model_for_int8_training (peft 0.3.0): non-int8 weights to float32, gradient checkpointing on
    assert cfg.dtype == "float32" and cfg.gradient_checkpointing
    assert cfg.warmup_steps == 20  # TrainingArguments(warmup_steps=20)
    assert cfg.scheduler == "linear" and cfg.warmup_from_zero  # TrainingArguments default "linear"
    assert cfg.weight_decay == 0.0  # optim="adamw_torch", default weight_decay=0.0
    assert cfg.max_grad_norm == 1.0  # TrainingArguments default
    assert cfg.loss_average == "micro_batch"  # Trainer 4.32: micro-batch token mean / accumulation steps
    assert cfg.seed == 42  # TrainingArguments default; the scripts' --seed only shuffles the file
    assert cfg.format == "prompt" and cfg.tokenize_joined  # tokenize(generate_prompt(data_point)): one string
    assert cfg.add_bos == "auto" and cfg.train_eos  # LlamaTokenizer's BOS; EOS appended, kept in labels
    assert not cfg.packing  # DataCollatorForSeq2Seq: one record per row
    assert cfg.log_every == 8  # logging_steps=8
    assert cfg.device == "cuda" and cfg.max_steps == 0


def test_recipe_goracs_bigrec_seqrec() -> None:
    cfg = load_config(recipe_path("goracs-bigrec-seqrec"))
    _shared(cfg)
    assert cfg.lr == 1e-4  # seqrec.sh lr=1e-4 (its "movies" test is malformed, so 3e-4 never applies)
    assert cfg.epochs == 50  # seqrec.sh "--num_epochs 50"
    assert cfg.loss_on_prompt  # seqrec.sh "--train_on_inputs" (train.py default True)
    assert cfg.truncation  # train.py tokenizer(truncation=True): cut at the right
    assert cfg.eval_every == 100 and cfg.save_every == 100  # train.py eval_steps=100, save_steps=100
    assert cfg.keep_checkpoints == 5  # train.py save_total_limit=5


def test_recipe_goracs_tallrec_ctr() -> None:
    cfg = load_config(recipe_path("goracs-tallrec-ctr"))
    _shared(cfg)
    assert cfg.lr == 1e-5  # ctrpre.sh "--learning_rate 1e-5" (TALLRec's instruct_7B.sh: 1e-4)
    assert cfg.epochs == 20  # ctrpre.sh "--num_epochs 20" (TALLRec's instruct_7B.sh: 200)
    assert not cfg.loss_on_prompt  # ctrpre.sh "--train_on_inputs False"
    assert not cfg.truncation  # ours: a right cut would drop the answer; refused instead
    # finetune_rec.py: eval_step = 10 for sample <= 128 (GORACS's CTR budgets); save_total_limit=1
    assert cfg.eval_every == 10 and cfg.save_every == 10 and cfg.keep_checkpoints == 1


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_every_line_names_its_source(name: str) -> None:
    text = recipe_path(name).read_text(encoding="utf-8")
    assert "github.com/Mithas-114/GORACS" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert "  # " in line, f"{name}: {line!r} does not name where its value comes from"


# ---------------------------------------------------------------------------------------------- tokens

# train.py generate_prompt() with an input (BIGRec / GORACS wording: one space after "request.")
PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. \n\n### Instruction:\nGuess the next game."
    "\n\n### Input:\nThe user played \"Tetris\".\n\n### Response:\n"
)
COMPLETION = '"Doom"'


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return load_tokenizer(build_tiny_model(tmp_path_factory.mktemp("llama") / "model", family="llama2"))


def _chars(tok, text: str) -> list[int]:
    """The tiny tokenizer's ids for plain characters, one per character."""
    ids = [tok.convert_tokens_to_ids(c) for c in text]
    assert tok.unk_token_id not in ids
    return ids


def _tokenize(tok, *, prompt: str = PROMPT, completion: str = COMPLETION, **kw):
    frame = pl.DataFrame({"record_id": ["r0"], "prompt": [prompt], "completion": [completion]})
    kw.setdefault("max_length", 512)
    kw.setdefault("truncation", False)
    return tokenize_records(frame, tok, fmt="prompt", path="x.parquet", **kw).examples[0]


def test_loss_on_prompt_labels_every_token(tok) -> None:
    """train_on_inputs=True (alpaca-lora tokenize()): labels are the input ids, BOS to EOS."""
    ex = _tokenize(tok, loss_on_prompt=True, tokenize_joined=True)
    expected = [tok.bos_token_id, *_chars(tok, PROMPT + COMPLETION), tok.eos_token_id]
    assert list(ex.input_ids) == expected
    for position, (token, label) in enumerate(zip(ex.input_ids, ex.labels, strict=True)):
        assert label == token, position
    # The prompt's own characters are targets now, "### Response:\n" included.
    assert IGNORE_INDEX not in ex.labels


def test_loss_on_prompt_false_masks_exactly_the_prompt(tok) -> None:
    """train_on_inputs=False: -100 over len(tokenize(user_prompt)) tokens (BOS + prompt), then the output + EOS."""
    ex = _tokenize(tok, loss_on_prompt=False, tokenize_joined=True)
    n_prompt = 1 + len(PROMPT)
    assert list(ex.labels[:n_prompt]) == [IGNORE_INDEX] * n_prompt
    assert list(ex.labels[n_prompt:]) == [*_chars(tok, COMPLETION), tok.eos_token_id]


def test_loss_on_prompt_survives_padding(tok) -> None:
    """Padding is the only place without a label (DataCollatorForSeq2Seq pads labels with -100)."""
    from genrec_trainer._data import collate

    long = _tokenize(tok, loss_on_prompt=True, tokenize_joined=True)
    short = _tokenize(tok, completion='"Go"', loss_on_prompt=True, tokenize_joined=True)
    batch = collate([long, short], pad_id=int(tok.pad_token_id))
    n = len(short.input_ids)
    assert batch["labels"][1, :n].tolist() == list(short.input_ids)
    assert (batch["labels"][1, n:] == IGNORE_INDEX).all()
    assert batch["labels"][0].tolist() == list(long.input_ids)


def test_tokenize_joined_is_one_pass_of_the_whole_text(tok) -> None:
    ex = _tokenize(tok, tokenize_joined=True)
    whole = tok(PROMPT + COMPLETION)["input_ids"]
    assert list(ex.input_ids) == [*whole, tok.eos_token_id]


def test_loss_on_prompt_truncates_at_the_right_like_cutoff_len(tok) -> None:
    """train.py tokenizer(truncation=True, max_length=cutoff_len): the first cutoff_len tokens, no EOS."""
    ex = _tokenize(tok, loss_on_prompt=True, tokenize_joined=True, max_length=40, truncation=True)
    expected = [tok.bos_token_id, *_chars(tok, PROMPT)][:40]
    assert list(ex.input_ids) == expected and list(ex.labels) == expected


def test_loss_on_prompt_reaches_the_loss(tmp_path: Path, tiny_model: Path) -> None:
    """The first step's loss is the token mean over whole records (prompt included), per micro-batch."""
    records = pl.DataFrame(
        {
            "record_id": [f"r{i}" for i in range(4)],
            "prompt": [PROMPT.replace("Tetris", name) for name in ("Tetris", "Pong", "Myst", "Zork")],
            "completion": ['"Doom"', '"Quake"', '"Riven"', '"Zork II"'],
        }
    )
    path = tmp_path / "train.parquet"
    records.write_parquet(path)
    cfg = load_config(
        None,
        model=str(tiny_model),
        train=str(path),
        output=str(tmp_path / "run"),
        format="prompt",
        loss_on_prompt=True,
        tokenize_joined=True,
        batch_size=1,
        grad_accum=4,
        max_steps=1,
        loss_average="micro_batch",
        progress=False,
        dtype="float32",
    )
    result = train(cfg)
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model)
    examples = tokenize_records(
        read_records(path), tokenizer, fmt="prompt", max_length=512, truncation=False, path="t",
        loss_on_prompt=True, tokenize_joined=True,
    ).examples
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    means = []
    with torch.no_grad():  # LoRA B starts at zero: the first step's model is the base model
        for i in _epoch_order(len(examples), cfg.seed, 0):
            ids = examples[i].input_ids
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            nll = [-float(logp[p - 1, t]) for p, t in enumerate(ids) if p > 0]  # every token after the first
            means.append(sum(nll) / len(nll))
    assert result.losses[0] == pytest.approx(sum(means) / len(means), rel=1e-4)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"loss_on_prompt": "yes"}, "'loss_on_prompt'"),
        ({"tokenize_joined": 1}, "'tokenize_joined'"),
        ({"loss_on_prompt": True, "response_template": "[/INST]"}, "'loss_on_prompt'"),
        ({"tokenize_joined": True, "format": "text"}, "'tokenize_joined'"),
        ({"tokenize_joined": True, "format": "messages"}, "'tokenize_joined'"),
    ],
)
def test_new_fields_are_validated_at_construction(kw: dict, needle: str) -> None:
    with pytest.raises(TrainerError, match=needle):
        TrainConfig(**kw)
