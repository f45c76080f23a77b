"""GenUP as published: the three recipes number for number, and GenUP's records token for token.

Sources (github.com/w11wo/GenUP): README.md ("SFT Training with QLoRA and FSDP"), train_qlora_fsdp.sh,
src/train_sft_qlora_fsdp.py (called train.py below) and src/create_sft_dataset.py; values train.py does
not set are the defaults of transformers' TrainingArguments and trl's SFTTrainer it ran with.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch

from genrec_core.models import build_tiny_model
from genrec_trainer import TrainConfig, TrainerError, load_config, recipe_path, train
from genrec_trainer._data import IGNORE_INDEX, tokenize_records
from genrec_trainer._model import load_tokenizer
from genrec_trainer._train import _epoch_order, _lr_lambda

# ---------------------------------------------------------------------------------------------- recipes


def _shared_genup_values(cfg: TrainConfig) -> None:
    """What all of GenUP's runs share."""
    assert cfg.max_length == 16384  # README "--max_length 16384"
    assert cfg.epochs == 3 and cfg.max_steps == 0  # README "--num_epochs 3"
    assert cfg.warmup_steps == 20  # README "--warmup_steps 20"
    assert cfg.max_grad_norm == 1.0  # README "--max_grad_norm 1.0"
    assert cfg.batch_size == 1  # README "--batch_size 1" (FourSquare-NYC; 2 for the other cities)
    assert cfg.grad_accum == 1  # TrainingArguments default gradient_accumulation_steps=1
    assert cfg.scheduler == "linear" and cfg.warmup_from_zero  # TrainingArguments default "linear"
    assert cfg.weight_decay == 0.0  # train.py optim="adamw_torch", default weight_decay 0.0
    assert cfg.seed == 42  # TrainingArguments default seed
    assert cfg.loss_average == "micro_batch"  # Trainer: each device's loss is a token mean
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (8, 16.0, 0.0)  # train.py LoraConfig
    assert cfg.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")  # train.py LoraConfig
    assert cfg.mode == "lora"
    assert cfg.quantization == "nf4" and cfg.double_quant  # train.py BitsAndBytesConfig
    assert cfg.dtype == "bfloat16" and cfg.mixed_precision == "bf16"  # train.py torch_dtype, bf16=True
    assert cfg.gradient_checkpointing  # README "--gradient_checkpointing"
    assert cfg.liger  # README "--apply_liger_kernel_to_llama"
    # train.py offloads (fsdp=[..., "offload"]): memory only, off in the recipes (see README)
    assert not cfg.fsdp_cpu_offload
    assert cfg.device == "cuda"
    assert not cfg.packing  # SFTTrainer default packing=False
    assert cfg.format == "prompt"
    assert cfg.text_column == "llama_prompt"  # train.py dataset_text_field="llama_prompt"
    assert cfg.response_template == "[/INST]"  # train.py DataCollatorForCompletionOnlyLM("[/INST]")
    assert cfg.add_bos == "auto"  # train.py: "<s>" in the text, tokenizer BOS off
    assert not cfg.train_eos  # train.py: pad := EOS, and the collator masks the pad id


def test_recipe_llama_2_7b_longlora() -> None:
    cfg = load_config(recipe_path("genup-llama-2-7b-longlora"))
    # README.md and train_qlora_fsdp.sh: --model_checkpoint "w11wo/Llama-2-7b-longlora-32k-merged"
    assert cfg.model == "w11wo/Llama-2-7b-longlora-32k-merged"
    assert cfg.lr == 2e-5  # README.md / train_qlora_fsdp.sh: --learning_rate 2e-5
    _shared_genup_values(cfg)


def test_recipe_llama_3_1_8b() -> None:
    cfg = load_config(recipe_path("genup-llama-3.1-8b"))
    # README.md: --model_checkpoint "meta-llama/Meta-Llama-3.1-8B", the hub's old name of this repo
    assert cfg.model == "meta-llama/Llama-3.1-8B"
    assert cfg.lr == 2e-4  # README.md (Llama-3.1-8B runs): --learning_rate 2e-4
    _shared_genup_values(cfg)


def test_recipe_llama_3_2_1b() -> None:
    cfg = load_config(recipe_path("genup-llama-3.2-1b"))
    # README.md: --model_checkpoint "meta-llama/Meta-Llama-3.2-1B" (no hub repo has that name)
    assert cfg.model == "meta-llama/Llama-3.2-1B"
    assert cfg.lr == 2e-4  # README.md (Llama-3.2-1B runs): --learning_rate 2e-4
    _shared_genup_values(cfg)


def test_recipe_every_line_names_its_source() -> None:
    for name in ("genup-llama-2-7b-longlora", "genup-llama-3.1-8b", "genup-llama-3.2-1b"):
        text = recipe_path(name).read_text(encoding="utf-8")
        assert "train_sft_qlora_fsdp.py" in text and "README.md" in text
        settings = [line for line in text.splitlines() if line and not line.startswith("#")]
        bookkeeping = {"device", "eval_every", "log_every", "save_every"}
        for line in settings:
            if line.split("=")[0].strip() not in bookkeeping:
                assert "#" in line, f"{name}: {line!r} does not name where its value comes from"


# ---------------------------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module", params=["llama2", "llama3"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param) / "model", family=request.param)
    return request.param, load_tokenizer(folder)


# create_sft_dataset.py: LLAMA_PROMPT = "<s>[INST] <<SYS>>\n{profile}\n<</SYS>>\n\n{instruction} [/INST] {answer} </s>"
PROMPT = "<s>[INST] <<SYS>>\nYou are user 7.\n<</SYS>>\n\nWhich POI? [/INST]"
COMPLETION = " POI id 12. </s>"


def _chars(tok, text: str) -> list[int]:
    """The tiny tokenizer's ids for plain characters, one per character."""
    return [tok.convert_tokens_to_ids(c) for c in text]


def _genup_ids(family: str, tok) -> list[int]:
    """The ids GenUP's trainer fed: Llama 2 reads "<s>" and "</s>" as its BOS / EOS and gets no other
    BOS (add_bos_token switched off); Llama 3 gets its own <|begin_of_text|> and reads "<s>" and "</s>"
    as plain text, with no EOS added (trl's SFTTrainer adds none)."""
    text = PROMPT + COMPLETION
    if family == "llama2":
        body = text.removeprefix("<s>").removesuffix("</s>")
        return [tok.bos_token_id, *_chars(tok, body), tok.eos_token_id]
    return [tok.bos_token_id, *_chars(tok, text)]


def _tokenize(frame: pl.DataFrame, tok, **kw):
    kw.setdefault("fmt", "auto")
    return tokenize_records(frame, tok, max_length=512, truncation=False, path="x.parquet", **kw)


@pytest.mark.parametrize("marked_by", ["opening", "protocol"])
def test_genup_records_get_genups_ids_and_one_bos(family, marked_by: str) -> None:
    name, tok = family
    frame = pl.DataFrame({"prompt": [PROMPT], "completion": [COMPLETION]})
    if marked_by == "protocol":
        frame = frame.with_columns(protocol=pl.lit("genup"))
    ex = _tokenize(frame, tok).examples[0]
    expected = _genup_ids(name, tok)
    assert list(ex.input_ids) == expected
    assert ex.input_ids[0] == tok.bos_token_id
    assert list(ex.input_ids).count(tok.bos_token_id) == 1
    # Trained: exactly what follows "[/INST]", the completion (its "</s>" included, here).
    n_prompt = len(expected) - (len(COMPLETION) - 3 if name == "llama2" else len(COMPLETION))
    assert all(label == IGNORE_INDEX for label in ex.labels[:n_prompt])
    assert list(ex.labels[n_prompt:]) == expected[n_prompt:]


def test_genup_text_column_and_response_template(family) -> None:
    """GenUP's own data: one 'llama_prompt' text, loss after "[/INST]", "</s>" masked as pad."""
    name, tok = family
    frame = pl.DataFrame({"llama_prompt": [PROMPT + COMPLETION], "targets": ["12"]})
    ex = _tokenize(
        frame, tok, fmt="auto", text_column="llama_prompt", response_template="[/INST]", train_eos=False
    ).examples[0]
    expected = _genup_ids(name, tok)
    assert list(ex.input_ids) == expected
    assert list(ex.input_ids).count(tok.bos_token_id) == 1
    trained = [(i, label) for i, label in enumerate(ex.labels) if label != IGNORE_INDEX]
    first = trained[0][0]
    assert tok.decode(list(ex.input_ids[:first])).endswith("[/INST]")
    completion_ids = expected[first:]
    if name == "llama2":
        completion_ids = completion_ids[:-1]  # "</s>" is the EOS: masked with train_eos = false
        assert ex.labels[-1] == IGNORE_INDEX
    assert [label for _, label in trained] == completion_ids


def test_add_bos_choices(family) -> None:
    name, tok = family
    plain = pl.DataFrame({"prompt": ["Which POI? [/INST]"], "completion": [" 12"]})
    ex = _tokenize(plain, tok).examples[0]
    assert ex.input_ids[0] == tok.bos_token_id  # no BOS in the text: the tokenizer's goes first
    never = _tokenize(plain, tok, add_bos="never").examples[0]
    assert tok.bos_token_id not in never.input_ids
    genup = pl.DataFrame({"prompt": [PROMPT], "completion": [COMPLETION]})
    always = _tokenize(genup, tok, add_bos="always").examples[0]
    assert always.input_ids[0] == tok.bos_token_id
    # Only Llama 2 reads "<s>" as its BOS: 'always' then doubles it, as GenUP's switch avoided.
    assert list(always.input_ids).count(tok.bos_token_id) == (2 if name == "llama2" else 1)


def test_genup_records_skip_the_chat_template(family) -> None:
    _, tok = family
    frame = pl.DataFrame(
        {
            "prompt": [PROMPT],
            "completion": [COMPLETION],
            "messages": [[{"role": "user", "content": "Which POI?"}, {"role": "assistant", "content": "12"}]],
        }
    )
    assert _tokenize(frame, tok).format == "prompt"


def test_missing_response_template_is_named(family) -> None:
    _, tok = family
    frame = pl.DataFrame({"record_id": ["r1"], "text": ["<s>no template here </s>"]})
    with pytest.raises(TrainerError, match=r"'r1'.*response_template '\[/INST\]'"):
        _tokenize(frame, tok, response_template="[/INST]")


# ---------------------------------------------------------------------------------------------- loop


def test_warmup_from_zero_is_transformers_linear_schedule() -> None:
    from transformers import get_linear_schedule_with_warmup

    cfg = TrainConfig(scheduler="linear", warmup_steps=20, warmup_from_zero=True, epochs=3)
    total = 150
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_linear_schedule_with_warmup(opt, num_warmup_steps=20, num_training_steps=total)
    ours = _lr_lambda(cfg, total)
    for step in range(total + 2):
        assert ours(step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12), step
    assert ours(0) == 0.0


def test_micro_batch_loss_average(tmp_path: Path, tiny_model: Path, city) -> None:
    """loss_average = 'micro_batch': a step's loss is the mean of each micro-batch's token mean."""
    cfg = load_config(
        None,
        model=str(tiny_model),
        train=str(city["train"]),
        output=str(tmp_path / "run"),
        batch_size=1,
        grad_accum=4,
        max_steps=1,
        lr=1e-3,
        loss_average="micro_batch",
        progress=False,
        dtype="float32",
    )
    result = train(cfg)
    from transformers import AutoModelForCausalLM

    from genrec_trainer._data import read_records

    tok = load_tokenizer(tiny_model)
    examples = tokenize_records(
        read_records(city["train"]), tok, fmt="auto", max_length=cfg.max_length, truncation=False, path="t"
    ).examples
    first = [examples[i] for i in _epoch_order(len(examples), cfg.seed, 0)[:4]]
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    means = []
    with torch.no_grad():  # LoRA B starts at zero: the first step's model is the base model
        for ex in first:
            logp = torch.log_softmax(model(torch.tensor([ex.input_ids])).logits[0].double(), -1)
            nll = [-float(logp[p - 1, t]) for p, t in enumerate(ex.labels) if t != IGNORE_INDEX and p > 0]
            means.append(sum(nll) / len(nll))
    assert result.losses[0] == pytest.approx(sum(means) / len(means), rel=1e-4)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"add_bos": "yes"}, "'add_bos'"),
        ({"loss_average": "mean"}, "'loss_average'"),
        ({"text_column": " "}, "'text_column'"),
        ({"warmup_from_zero": 1}, "'warmup_from_zero'"),
        ({"train_eos": "no"}, "'train_eos'"),
        ({"response_template": 3}, "'response_template'"),
    ],
)
def test_new_fields_are_validated(kw: dict, needle: str) -> None:
    with pytest.raises(TrainerError, match=needle):
        TrainConfig(**kw)
