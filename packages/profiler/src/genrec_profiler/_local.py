"""The ``local`` backend: a Hugging Face causal LM through transformers, batched with left padding.

torch and transformers are imported when a backend is built, never when genrec_profiler is imported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from genrec_profiler._client import Completion, ProfileRequest
from genrec_profiler._errors import ProfilerError
from genrec_profiler._models import resolve_model

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 where ``device`` computes it natively, else float32."""
    if dtype != "auto":
        return dtype
    import torch

    if str(device).startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if str(device) == "cpu":
        cpu: Any = getattr(torch, "cpu", None)
        try:
            native = bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
        except AttributeError:  # an older torch without the probes
            native = False
        return "bfloat16" if native else "float32"
    return "float32"


class LocalBackend:
    """Generate with a local model (HF folder, ``.gguf`` file or ``"smollm2"``, the default).

    Prompts are rendered with the tokenizer's chat template and generated in padded batches. Causal
    LMs continue from the last position, so padding goes on the LEFT: with right padding the shorter
    prompts of a batch would have to continue after pad tokens. ``do_sample=False`` is greedy;
    sampling is seeded per batch from ``seed`` so a run is reproducible for the same batch layout.
    ``response_prefix`` is written as the start of the answer (default ``{"``): small models such as
    SmolLM2-135M otherwise often open with prose and a code fence. Use ``""`` to let the model start
    freely. ``dtype="auto"`` computes in bfloat16 where the device does so natively (a GPU with bf16,
    a CPU with AMX or AVX512-BF16: about twice as fast as float32 there), float32 otherwise.
    """

    backend = "local"

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        device: str = "cpu",
        context_length: int | None = None,
        response_prefix: str = '{"',
        dtype: str = "auto",
    ) -> None:
        if max_new_tokens < 1:
            raise ProfilerError(f"LocalBackend: max_new_tokens must be at least 1, got {max_new_tokens}")
        if dtype not in _DTYPES:
            raise ProfilerError(f"LocalBackend: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        path = resolve_model(model)
        self.model = "smollm2" if model is None or str(model).lower() == "smollm2" else str(model)
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ProfilerError(f"model {path}: the tokenizer has no chat template")
        self.dtype = _resolve_dtype(dtype, device)
        self.lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, self.dtype))
        self.lm.to(device)  # type: ignore[arg-type]
        self.lm.eval()
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.response_prefix = response_prefix
        self._batches = 0
        self.context_length = context_length or int(
            getattr(self.lm.config, "max_position_embeddings", 0) or 2048
        )

    @property
    def prompt_token_budget(self) -> int | None:
        # Leave room for the answer and for one feedback retry (the prompt plus the rejected answer
        # plus a short correction must still fit).
        return max(64, self.context_length - 2 * self.max_new_tokens - 96)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat-templated prompt, ending with ``response_prefix`` (the start of the answer)."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return str(text) + self.response_prefix

    def generate_texts(self, prompts: Sequence[str]) -> list[tuple[str, int, int, str]]:
        """(text, prompt tokens, new tokens, finish reason) for already rendered prompts, one batch."""
        from transformers import GenerationConfig

        torch = self._torch
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        eos = self.tokenizer.eos_token_id
        # An explicit GenerationConfig so that sampling defaults shipped with a checkpoint never
        # leak into greedy runs.
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": eos}
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(self.seed + self._batches)
        self._batches += 1
        with torch.inference_mode():
            output = self.lm.generate(**enc, generation_config=GenerationConfig(**gen))  # type: ignore[misc]
        new = output[:, enc["input_ids"].shape[1] :]
        results = []
        for row, mask in zip(new, enc["attention_mask"]):
            ids = row.tolist()
            finish = "length"
            if eos is not None and eos in ids:
                ids = ids[: ids.index(eos)]
                finish = "stop"
            # tokens_out counts what the model produced, including the end-of-sequence token.
            n_out = len(ids) + (1 if finish == "stop" else 0)
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            results.append((text, int(mask.sum()), n_out, finish))
        return results

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        if not requests:
            return []
        prompts = [self.render(r.messages) for r in requests]
        # The answer includes the prefix we wrote for the model, so that it parses as a whole.
        return [
            Completion(text=self.response_prefix + text, tokens_in=n_in, tokens_out=n_out, finish_reason=finish)
            for text, n_in, n_out, finish in self.generate_texts(prompts)
        ]
