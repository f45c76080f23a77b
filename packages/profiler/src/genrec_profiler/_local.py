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
#: What a constrained answer starts with, written into the prompt: both schemas open with the traits,
#: so these tokens cost a prefill position instead of a decode step each.
CONSTRAINED_PREFIX = '{"traits": ["'
#: What a constrained answer starts with, per request protocol (the first key of its schema).
_PREFIXES = {"genup_cot": '{"profile_analysis": "'}


def constrained_prefix(protocol: str | None) -> str:
    """The text written for the model before a constrained answer of ``protocol``'s schema."""
    return _PREFIXES.get(protocol or "genrec", CONSTRAINED_PREFIX)


def _growing_cache() -> Any:
    """A transformers KV cache whose layers grow by doubling a buffer instead of ``torch.cat``.

    Appending a decoded token to a ``DynamicLayer`` copies the whole cache of that layer; here it
    writes one slot of a buffer with room to spare (the keys and values handed to attention are views
    of the filled part). ``None`` with a transformers that has no layered ``Cache``.
    """
    layer_cls = _growing_layer_class()
    if layer_cls is None:
        return None
    from transformers.cache_utils import Cache

    return Cache(layer_class_to_replicate=layer_cls)


_GROWING_LAYER: Any = None


def _growing_layer_class() -> Any:
    global _GROWING_LAYER
    if _GROWING_LAYER is not None:
        return _GROWING_LAYER or None
    try:
        from transformers.cache_utils import Cache, DynamicLayer  # noqa: F401 - both needed
    except ImportError:
        _GROWING_LAYER = False
        return None

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k: Any = None
            self._v: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            keys = self.keys
            assert keys is not None  # lazy_initialization has set it
            n = keys.shape[-2] if keys.numel() else 0
            buf = self._k
            # Replaced from outside (crop, reorder, repeat): start a new buffer from what is there.
            # (An empty view has no data pointer to compare: only its shape can disagree.)
            if buf is not None and (
                keys.shape[:-2] != buf.shape[:-2] or (n and keys.data_ptr() != buf.data_ptr())
            ):
                buf = None
            need = n + key_states.shape[-2]
            if buf is None or need > buf.shape[-2]:
                cap = max(need + 256, 2 * (buf.shape[-2] if buf is not None else 0))
                k = key_states.new_empty((*key_states.shape[:-2], cap, key_states.shape[-1]))
                v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
                if n:
                    k[..., :n, :].copy_(keys)
                    v[..., :n, :].copy_(self.values)
                self._k, self._v = k, v
            self._k[..., n:need, :].copy_(key_states)
            self._v[..., n:need, :].copy_(value_states)
            self.keys = self._k[..., :need, :]
            self.values = self._v[..., :need, :]
            return self.keys, self.values

    _GROWING_LAYER = GrowingLayer
    return GrowingLayer


def _view_layer(layer_cls: Any, keys: Any, values: Any, *, filled: int = 0) -> Any:
    """A growing cache layer whose buffer is ``keys``/``values`` (views are fine), ``filled`` slots used."""
    layer = layer_cls()
    layer.lazy_initialization(keys[..., :0, :], values[..., :0, :])
    layer._k, layer._v = keys, values
    layer.keys, layer.values = keys[..., :filled, :], values[..., :filled, :]
    return layer


def _keep_rows(cache: Any, keep: Sequence[int], cut: int) -> None:
    """Compact a growing cache to the batch rows ``keep`` (ascending), in place, dropping ``cut``
    leading positions (left padding no remaining row needs): only the filled part of rows that
    move is copied; the buffers keep their room for the positions still to come."""
    layer_cls = _growing_layer_class()
    for i, layer in enumerate(cache.layers):
        k, v, n = layer._k, layer._v, layer.keys.shape[-2]
        for dst, src in enumerate(keep):
            if dst != src:  # ascending: a row's source is never a destination still to be read
                k[dst, :, :n].copy_(k[src, :, :n])
                v[dst, :, :n].copy_(v[src, :, :n])
        m = len(keep)
        cache.layers[i] = _view_layer(layer_cls, k[:m, :, cut:], v[:m, :, cut:], filled=n - cut)


_DECODE_ATTENTION = "genrec_decode"
_REGISTERED = False


def _register_decode_attention() -> bool:
    """Register the ``genrec_decode`` attention with transformers (once); False where it cannot be.

    Decode steps that pass ``genrec_row_starts`` (our loop, one query position) go to the compiled
    kernel of :mod:`genrec_profiler._attention`, each row from its first real position (no mask is
    read); everything else (prompts) is transformers' own SDPA, unchanged.
    """
    global _REGISTERED
    if _REGISTERED:
        return True
    try:
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    from genrec_profiler._attention import decode_attention

    def attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
        starts = kwargs.pop("genrec_row_starts", None)
        if starts is None or query.shape[2] != 1:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        kernel = decode_attention()
        if kernel is None or any(kwargs.get(k) is not None for k in ("softcap", "sliding_window", "position_bias")):
            # Our loop only passes row starts where the kernel serves the model (see LocalBackend).
            raise ProfilerError("decode attention kernel unavailable for this call")
        scale = kwargs.get("scaling")
        if scale is None:
            scale = query.shape[-1] ** -0.5
        return kernel(query, key, value, starts, scale), None

    AttentionInterface.register(_DECODE_ATTENTION, attention)
    AttentionMaskInterface.register(_DECODE_ATTENTION, sdpa_mask)
    _REGISTERED = True
    return True


# Inputs of at most this many rows (a decode step of a batch) use the packed weights.
_PACKED_MAX_ROWS = 64


def _pack_linears(lm: Any) -> int:
    """Swap the bfloat16 ``nn.Linear`` layers of ``lm`` for oneDNN ones with prepacked weights (CPU).

    A plain bf16 linear on the CPU repacks its weight for the matrix engine (AMX) at every call once
    more than one row comes in: a decode step at batch 8 then costs about twice batch 1 in the
    linears (130 us against 57 us for a 576 x 1536 layer). Packed once, the weight serves any number
    of rows at the batch-1 price (55-65 us); prompts keep the plain path. The results are the
    same numbers (the same oneDNN kernels; checked here on each layer's first use against
    ``F.linear`` and in the tests). Inference only: the packed layers have no gradient. Returns how
    many layers were packed (0 where this torch has no oneDNN packing or the check fails).
    """
    import torch

    mkldnn = getattr(torch.ops, "mkldnn", None)
    if mkldnn is None or not torch.backends.mkldnn.is_available():
        return 0
    try:
        reorder, pointwise = mkldnn._reorder_linear_weight, mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return 0

    class PackedLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.weight = linear.weight
            self.bias = linear.bias
            # 8 rows is the blocking hint; measured as fast as batch-1 packing at 1 row.
            self.packed = reorder(linear.weight.detach(), 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Decode steps (a few rows) take the packed weight; prompts (hundreds of rows) keep the
            # plain path, which the packed one is erratic against there (up to 2x slower at some
            # lengths with 2 threads).
            if x.numel() > _PACKED_MAX_ROWS * self.in_features:
                return torch.nn.functional.linear(x, self.weight, self.bias)
            bias = None if self.bias is None else self.bias.detach()
            return pointwise(x.contiguous(), self.packed, bias, "none", [], "")

    targets = [
        (name, mod) for name, mod in lm.named_modules()
        if type(mod) is torch.nn.Linear and mod.weight.dtype == torch.bfloat16 and mod.weight.device.type == "cpu"
    ]
    if not targets:
        return 0
    probe = torch.randn(3, targets[0][1].in_features, dtype=torch.bfloat16)
    try:
        packed = PackedLinear(targets[0][1])
        with torch.inference_mode():
            ours, ref = packed(probe).float(), targets[0][1](probe).float()
        if float((ours - ref).abs().max()) > 2e-2 * float(ref.abs().max()) + 1e-6:
            logger.warning("packed bf16 linear disagrees with F.linear; keeping plain linears")
            return 0
    except RuntimeError as exc:  # a oneDNN without bf16 support on this CPU
        logger.info("no packed bf16 linears here (%s)", exc)
        return 0
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        setattr(parent, attr, PackedLinear(mod))
    return len(targets)


def _resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 where ``device`` computes it natively, else float32."""
    if dtype != "auto":
        return dtype
    import torch

    if str(device).startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    if str(device) == "cpu":
        from genrec_core.models import cpu_has_native_bf16

        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return "float32"


class LocalBackend:
    """Generate with a local model (HF folder, ``.gguf`` file, hub id ``org/name`` or ``"smollm2"``, the
    default; see :func:`genrec_core.models.resolve_model`).

    Prompts are rendered with the tokenizer's chat template and generated in padded batches. Causal
    LMs continue from the last position, so padding goes on the LEFT: with right padding the shorter
    prompts of a batch would have to continue after pad tokens. ``do_sample=False`` is greedy;
    sampling is seeded per batch from ``seed`` so a run is reproducible for the same batch layout.
    ``response_prefix`` is written as the start of the answer (default ``{"``): small models such as
    SmolLM2-135M otherwise often open with prose and a code fence. Use ``""`` to let the model start
    freely. ``dtype="auto"`` computes in bfloat16 where the device does so natively (a GPU with bf16,
    a CPU with AMX or AVX512-BF16: about twice as fast as float32 there), float32 otherwise.
    ``decode_kernel`` (CPU, bfloat16 or float32): decode steps attend with a kernel compiled once by
    the machine's C compiler (see :mod:`genrec_profiler._attention`), where it builds and passes its
    check; ``decode_kernel`` tells whether it is in use.

    ``grammar`` (default ``"auto"``): decoding is constrained to the profile's JSON schema
    (:func:`genrec_profiler.profile_json_schema`, the request's protocol) by a grammar engine that masks
    the logits at every step of our loop, and a row stops as soon as its object closes. ``"auto"``
    takes the first of ``xgrammar``, ``llguidance``, ``outlines`` that is installed (unconstrained,
    with a warning, when none is); name one to require it; ``None`` turns it off. ``grammar_engine``
    tells which engine is in use once a batch has been constrained. Constrained answers start with
    :data:`CONSTRAINED_PREFIX` instead of ``response_prefix``. A constrained row whose budget runs out
    inside its last string (the summary) is closed there by the grammar's own ``"}`` on its last step
    (finish reason ``closed``) instead of being cut off. ``repetition_penalty`` (constrained decoding
    only; 1 = off): logits of tokens the row has already written are divided by it (multiplied when
    negative), as transformers' ``repetition_penalty`` but over the answer only, not the prompt (the
    answer should name the prompt's categories): SmolLM2-135M otherwise loops in its summary.
    """

    backend = "local"
    # Batches are padded to their longest prompt: generate_profiles groups users by prompt length.
    pads_batches = True

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
        decode_kernel: bool = True,
        grammar: str | None = "auto",
        repetition_penalty: float = 1.15,
    ) -> None:
        from genrec_profiler._checks import check_bool, check_float, check_int, check_str

        check_int("LocalBackend", "max_new_tokens", max_new_tokens, minimum=1)
        check_bool("LocalBackend", "do_sample", do_sample)
        # Temperature divides the logits when sampling: 0 is greedy, which do_sample=False asks for.
        check_float("LocalBackend", "temperature", temperature, low=0.0, low_open=do_sample)
        check_float("LocalBackend", "top_p", top_p, low=0.0, high=1.0, low_open=True)
        check_int("LocalBackend", "seed", seed, minimum=0)
        check_int("LocalBackend", "context_length", context_length, minimum=1, optional=True)
        check_str("LocalBackend", "response_prefix", response_prefix)
        check_str("LocalBackend", "device", device)
        check_bool("LocalBackend", "decode_kernel", decode_kernel)
        check_float("LocalBackend", "repetition_penalty", repetition_penalty, low=0.0, low_open=True)
        if dtype not in _DTYPES:
            raise ProfilerError(f"LocalBackend: dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        # Resolved before torch is imported: a bad model argument fails at once.
        from genrec_profiler._grammar import ENGINES, available_engines

        if grammar is not None and grammar != "auto":
            if grammar not in ENGINES:
                raise ProfilerError(f"LocalBackend: grammar must be auto, None or one of {', '.join(ENGINES)}, got {grammar!r}")
            if grammar not in available_engines():
                raise ProfilerError(f"LocalBackend: grammar engine {grammar!r} is not installed")
        self.grammar = grammar
        self.grammar_engine: str | None = None
        self._engines: dict[str, Any] = {}
        resolved = resolve_model(model)
        # What profile rows record: the hub id or alias as given, never a cache folder.
        self.model = resolved.name
        self.path = path = resolved.path
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
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
        # bf16 on the CPU: oneDNN linears with prepacked weights (batched decoding pays the batch-1
        # price per step in the linears; see _pack_linears).
        self.packed_linears = _pack_linears(self.lm) if device == "cpu" and self.dtype == "bfloat16" else 0
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.response_prefix = response_prefix
        if repetition_penalty <= 0:
            raise ProfilerError(f"LocalBackend: repetition_penalty must be positive, got {repetition_penalty}")
        self.repetition_penalty = repetition_penalty
        self._batches = 0
        # The prefill reads no logits but the last position's (see _prefill).
        from genrec_core.models import takes_logits_to_keep

        self._last_logits: dict[str, int] = {"logits_to_keep": 1} if takes_logits_to_keep(self.lm) else {}
        # Our cache layers attend to everything before them: models with sliding-window layers keep
        # transformers' own cache (and its masks).
        config = self.lm.config
        sliding = getattr(config, "sliding_window", None) or "sliding_attention" in (
            getattr(config, "layer_types", None) or ()
        )
        self._own_cache = not sliding and _growing_layer_class() is not None
        # Decode steps attend with the compiled kernel where it builds (see _attention): bfloat16 or
        # float32 on the CPU, a model on transformers' SDPA whose cache is ours.
        self.decode_kernel = False
        if (decode_kernel and self._own_cache and device == "cpu" and self.dtype in ("float32", "bfloat16")
                and getattr(config, "_attn_implementation", None) == "sdpa" and _register_decode_attention()):
            from genrec_profiler._attention import decode_attention

            if decode_attention() is not None:
                try:
                    self.lm.set_attn_implementation(_DECODE_ATTENTION)
                    self.decode_kernel = True
                except (ValueError, ImportError) as exc:  # pragma: no cover - a model that refuses it
                    logger.info("keeping transformers' sdpa attention: %s", exc)
        # Generation stops at the tokenizer's end-of-sequence token and at any the model declares.
        declared = getattr(getattr(self.lm, "generation_config", None), "eos_token_id", None)
        declared = [] if declared is None else [declared] if isinstance(declared, int) else list(declared)
        eos = self.tokenizer.eos_token_id
        self._stop_ids: set[int] = {int(t) for t in [*declared, *([] if eos is None else [eos])]}
        self.context_length = context_length or int(
            getattr(self.lm.config, "max_position_embeddings", 0) or 2048
        )
        self._banned: Any = None

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

    def render(self, messages: Sequence[dict[str, str]], prefix: str | None = None) -> str:
        """The chat-templated prompt, ending with ``prefix`` (default ``response_prefix``: the start of
        the answer)."""
        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return str(text) + (self.response_prefix if prefix is None else prefix)

    def engine(self, protocol: str = "genrec") -> Any:
        """The grammar engine compiled for ``protocol``'s schema (once), or None when unconstrained."""
        if self.grammar is None:
            return None
        if protocol in self._engines:
            return self._engines[protocol]
        from genrec_profiler._grammar import available_engines, build_engine, profile_json_schema

        names = available_engines() if self.grammar == "auto" else (self.grammar,)
        engine = None
        if not names:
            logger.warning("no grammar engine installed (xgrammar, llguidance or outlines-core): decoding is "
                           "unconstrained and invalid answers go to the repair parser")
        else:
            vocab = int(self.lm.get_output_embeddings().weight.shape[0])
            engine = build_engine(names[0], self.tokenizer, vocab, profile_json_schema(protocol),  # type: ignore[arg-type]
                                  sorted(self._stop_ids))
            logger.info("grammar %s: %s schema compiled in %.2fs", engine.name, protocol, engine.compile_s)
            self.grammar_engine = engine.name
            if self._banned is None:
                self._banned = self._control_tokens(vocab)
                self._close_ids = [int(t) for t in self.tokenizer.encode('"}', add_special_tokens=False)]
        self._engines[protocol] = engine
        return engine

    def _control_tokens(self, vocab: int) -> Any:
        """Tokens whose text holds a control character or half a character: never part of a compact
        JSON answer (JSON forbids control characters raw in strings; xgrammar 0.2 lets both through)."""
        torch = self._torch
        banned = torch.zeros(vocab, dtype=torch.bool)
        special = set(self.tokenizer.all_special_ids)
        for idx in range(min(vocab, len(self.tokenizer))):
            if idx in special:
                continue
            text = self.tokenizer.decode([idx])
            # A lone piece of a multi-byte character: xgrammar 0.2 lets strings end between the pieces,
            # which decodes to U+FFFD (and breaks the schema's length bounds).
            if any(ord(c) < 32 or c in "\x7f\ufffd" for c in text):
                banned[idx] = True
        return banned

    def generate_texts(self, prompts: Sequence[str], protocol: str | None = None) -> list[tuple[str, int, int, str]]:
        """(text, prompt tokens, new tokens, finish reason) for already rendered prompts, one batch.

        ``protocol`` (``genrec`` / ``genup``): constrain the answers to that profile schema (prompts
        then end with :data:`CONSTRAINED_PREFIX`, which the grammar reads first); finish reason
        ``stop`` once the object closes."""
        torch = self._torch
        engine = self.engine(protocol) if protocol is not None else None
        self._prefix = constrained_prefix(protocol)
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        # Sampling is seeded per batch: a run is reproducible for the same batch layout.
        seed = self.seed + self._batches
        self._batches += 1
        with torch.inference_mode():
            if self._own_cache:
                rows, finishes = self._decode(enc, seed, engine)
            else:
                rows, finishes = self._generate(enc, seed, engine)
        results = []
        for ids, finish, mask in zip(rows, finishes, enc["attention_mask"]):
            # tokens_out counts what the model produced, including the stop token.
            n_out = len(ids) + (1 if finish == "stop" else 0)
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            results.append((text, int(mask.sum()), n_out, finish))
        return results

    def _pick(self, logits: Any, generator: Any) -> Any:
        """The next token of each row from its last-position logits: greedy, or temperature and top-p
        sampling (the smallest set of most likely tokens whose probabilities reach ``top_p``)."""
        torch = self._torch
        logits = logits.float()
        if not self.do_sample:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            # A token stays when the tokens more likely than it have not reached top_p yet (so the
            # most likely one always stays).
            drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= self.top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_p, 1, generator=generator)
            return order.gather(-1, choice).squeeze(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def _decode(self, enc: dict[str, Any], seed: int, engine: Any = None) -> tuple[list[list[int]], list[str]]:
        """Our own decoding loop over the growing cache: new token ids (without the stop token) and
        the finish reason of each row.

        A row that stops leaves the batch at once (its cache rows are compacted away), so the rest
        of a batch decodes at the smaller batch's price instead of carrying finished rows to the
        end as ``generate`` does; left padding that no remaining row needs is cut from the cache
        and the mask too. Positions are explicit per row, so each row sees exactly the positions it
        would see alone.
        """
        torch = self._torch
        generator = torch.Generator(device=self.device).manual_seed(seed) if self.do_sample else None
        ids, mask = enc["input_ids"], enc["attention_mask"]
        batch, width = ids.shape
        lengths = mask.sum(dim=1)
        cache = self._prefill(enc) if batch > 1 else None
        steps = self.max_new_tokens
        # One mask buffer for the whole generation: decoded positions are ones already.
        full_mask = torch.ones((batch, width + steps), dtype=mask.dtype, device=ids.device)
        full_mask[:, :width] = mask
        if cache is not None:  # every prompt but its last token is in the cache
            inputs, positions = ids[:, -1:], (lengths - 1).unsqueeze(1)
        else:
            cache = _growing_cache()
            inputs, positions = ids, (mask.cumsum(dim=1) - 1).clamp(min=0)
        stop_ids = torch.tensor(sorted(self._stop_ids), dtype=ids.dtype, device=ids.device)
        out: list[list[int]] = [[] for _ in range(batch)]
        finishes = ["length"] * batch
        alive = list(range(batch))  # the original row of each batch row still decoding
        pads = [width - int(n) for n in lengths]
        start, filled = 0, width - inputs.shape[1]  # mask columns before ``start`` were cut away
        # Each row's first real position in the cache view (the kernel's starts); changes only when
        # rows leave.
        row_starts = torch.tensor(pads, dtype=torch.int64)
        matchers = [engine.start(getattr(self, "_prefix", CONSTRAINED_PREFIX)) for _ in range(batch)] if engine is not None else None
        bitmask = torch.zeros((batch, engine.words), dtype=torch.int32) if engine is not None else None
        for step in range(steps):
            filled += inputs.shape[1]
            # The kernel reads no mask (it starts each row at its first real position); one row with
            # no padding left in view needs none either.
            extra: dict[str, Any] = {}
            if self.decode_kernel and inputs.shape[1] == 1:
                extra["genrec_row_starts"] = row_starts
                attn = None
            elif len(alive) == 1 and start >= pads[alive[0]]:
                attn = None
            else:
                attn = full_mask[:, start:filled]
            logits = self.lm(input_ids=inputs, attention_mask=attn, position_ids=positions, past_key_values=cache,
                             use_cache=True, **self._last_logits, **extra).logits[:, -1, :]
            if matchers is not None:
                if self.repetition_penalty != 1.0:
                    logits = self._penalize(logits, [out[r] for r in alive])
                logits = self._mask(logits, engine, [matchers[r] for r in alive], bitmask)
                left = steps - step
                if left <= len(self._close_ids):
                    self._force_close(logits, bitmask, self._close_ids[len(self._close_ids) - left])
            tokens = self._pick(logits, generator)
            stopped = torch.isin(tokens, stop_ids).tolist()
            for i, (row, token, stop) in enumerate(zip(alive, tokens.tolist(), stopped)):
                if matchers is not None and not stop:
                    if not engine.accept(matchers[row], token):  # pragma: no cover - a masked token
                        raise ProfilerError(f"grammar {engine.name}: refused token {token} it allowed")
                    if engine.closed(matchers[row]):
                        # The object closed: the answer is complete, no end token needed.
                        out[row].append(token)
                        stop = stopped[i] = True
                        if step >= steps - len(self._close_ids):
                            finishes[row] = "closed"
                            continue
                if stop:
                    finishes[row] = "stop"
                else:
                    out[row].append(token)
            if step == steps - 1:
                break
            positions = positions[:, -1:] + 1
            if any(stopped):
                keep = [i for i, stop in enumerate(stopped) if not stop]
                if not keep:
                    break
                alive = [alive[i] for i in keep]
                cut = min(pads[r] for r in alive) - start  # padding no remaining row needs
                _keep_rows(cache, keep, cut)
                index = torch.tensor(keep, device=ids.device)
                full_mask = full_mask.index_select(0, index)
                tokens, positions = tokens.index_select(0, index), positions.index_select(0, index)
                start += cut
                row_starts = torch.tensor([pads[r] - start for r in alive], dtype=torch.int64)
            inputs = tokens.unsqueeze(1)
        return out, finishes

    def _penalize(self, logits: Any, written: Sequence[Sequence[int]]) -> Any:
        torch = self._torch
        logits = logits.float()
        for i, ids in enumerate(written):
            if ids:
                idx = torch.tensor(sorted(set(ids)), dtype=torch.long)
                seen = logits[i, idx]
                logits[i, idx] = torch.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
        return logits

    def _force_close(self, logits: Any, bitmask: Any, token: int) -> None:
        """On a row's last steps, take the closing token where the grammar allows it (the row is in its
        last string, past its minimum length): an object closed early beats one cut off."""
        allowed = (bitmask[: logits.shape[0], token // 32] >> (token % 32)) & 1
        for i in allowed.nonzero().flatten().tolist():
            logits[i].fill_(float("-inf"))
            logits[i, token] = 0.0

    def _mask(self, logits: Any, engine: Any, matchers: Sequence[Any], bitmask: Any) -> Any:
        """Logits (float) with every token the grammar forbids for each row at ``-inf``."""
        from genrec_profiler._grammar import apply_bitmask

        logits = logits.float()
        engine.fill(matchers, bitmask)
        apply_bitmask(logits, bitmask)
        return logits.masked_fill_(self._banned[: logits.shape[-1]], float("-inf"))

    def _generate(self, enc: dict[str, Any], seed: int, engine: Any = None) -> tuple[list[list[int]], list[str]]:
        """transformers' ``generate`` (models whose attention our cache cannot serve: sliding windows),
        constrained by ``engine`` through a logits processor when given."""
        from transformers import GenerationConfig, LogitsProcessorList

        torch = self._torch
        eos = sorted(self._stop_ids)
        # An explicit GenerationConfig so that sampling defaults shipped with a checkpoint never
        # leak into greedy runs.
        gen: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                               "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": eos}
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(seed)
        processors = LogitsProcessorList()
        matchers: list[Any] = []
        if engine is not None:
            batch, width = enc["input_ids"].shape
            matchers = [engine.start(getattr(self, "_prefix", CONSTRAINED_PREFIX)) for _ in range(batch)]
            processors.append(_GrammarProcessor(self, engine, matchers, width))
        output = self.lm.generate(**enc, generation_config=GenerationConfig(**gen),  # type: ignore[misc]
                                  logits_processor=processors)
        rows, finishes = [], []
        for r, row in enumerate(output[:, enc["input_ids"].shape[1] :].tolist()):
            at = next((i for i, t in enumerate(row) if t in self._stop_ids), None)
            rows.append(row if at is None else row[:at])
            finishes.append("length" if at is None else "stop")
            if matchers and at is None and rows[-1] and engine.closed(matchers[r]):
                finishes[-1] = "stop"
        return rows, finishes

    def _prefill(self, enc: dict[str, Any]) -> Any:
        """The batch's KV cache, each prompt (but its last token) run through the model alone.

        A padded batch prefills ``batch x longest prompt`` positions; prompt by prompt it is only the
        real tokens, at the same speed per token (the matrices are already large). Each prompt writes
        its keys and values straight into its row of one left-padded buffer per layer, sized for the
        whole generation, so that ``generate`` decodes the batch from it without another copy or
        allocation (fresh multi-megabyte buffers cost page faults that, on a small VM, took longer
        than the copies themselves). ``None`` for a prompt of a single token.
        """
        mask = enc["attention_mask"]
        lengths = [int(n) for n in mask.sum(dim=1)]
        layer_cls = _growing_layer_class()
        if min(lengths) < 2 or layer_cls is None:
            return None
        width = mask.shape[1] - 1
        capacity = width + self.max_new_tokens + 1
        rows = enc["input_ids"]
        # The first prompt in a cache of its own: it tells the layers' shapes.
        first = _growing_cache()
        n0 = lengths[0]
        self.lm(input_ids=rows[0, rows.shape[1] - n0 : -1].unsqueeze(0), past_key_values=first, use_cache=True,
                **self._last_logits)
        buffers = []
        for layer in first.layers:
            k = layer.keys.new_zeros((len(lengths), layer.keys.shape[1], capacity, layer.keys.shape[3]))
            v = layer.values.new_zeros((len(lengths), layer.values.shape[1], capacity, layer.values.shape[3]))
            k[0, :, width - (n0 - 1) : width] = layer.keys[0]
            v[0, :, width - (n0 - 1) : width] = layer.values[0]
            buffers.append((k, v))
        del first
        for b in range(1, len(lengths)):
            n = lengths[b]
            cache = _growing_cache()
            cache.layers = [
                _view_layer(layer_cls, k[b : b + 1, :, width - (n - 1) : width], v[b : b + 1, :, width - (n - 1) : width])
                for k, v in buffers
            ]
            self.lm(input_ids=rows[b, rows.shape[1] - n : -1].unsqueeze(0), past_key_values=cache, use_cache=True,
                    **self._last_logits)
            for layer, (k, _) in zip(cache.layers, buffers):
                if layer.keys.shape[-2] != n - 1 or layer.keys.data_ptr() != k[b, :, width - (n - 1)].data_ptr():
                    raise ProfilerError("prefill: a layer did not write into its batch buffer")  # pragma: no cover
        merged = _growing_cache()
        merged.layers = [_view_layer(layer_cls, k, v, filled=width) for k, v in buffers]
        return merged

    def complete(self, requests: Sequence[ProfileRequest]) -> list[Completion]:
        if not requests:
            return []
        results: list[Completion | None] = [None] * len(requests)
        for protocol in dict.fromkeys(r.protocol for r in requests):
            idx = [i for i, r in enumerate(requests) if r.protocol == protocol]
            constrained = self.engine(protocol) is not None
            prefix = constrained_prefix(protocol) if constrained else self.response_prefix
            prompts = [self.render(requests[i].messages, prefix) for i in idx]
            # The answer includes the prefix we wrote for the model, so that it parses as a whole.
            texts = self.generate_texts(prompts, protocol if constrained else None)
            for i, (text, n_in, n_out, finish) in zip(idx, texts):
                results[i] = Completion(text=prefix + text, tokens_in=n_in, tokens_out=n_out, finish_reason=finish)
        return [r for r in results if r is not None]


class _GrammarProcessor:
    """A transformers logits processor over a grammar engine (the ``generate`` path): each call first
    advances the rows' matchers by the token chosen last, then masks. A row whose object closed is
    given its end token, so that ``generate`` finishes it."""

    def __init__(self, backend: LocalBackend, engine: Any, matchers: list[Any], width: int) -> None:
        self.backend, self.engine, self.matchers, self.width = backend, engine, matchers, width
        torch = backend._torch
        self.bitmask = torch.zeros((len(matchers), engine.words), dtype=torch.int32)
        self.end = min(backend._stop_ids)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.width:
            for m, token in zip(self.matchers, input_ids[:, -1].tolist()):
                if not self.engine.closed(m) and token not in self.backend._stop_ids:
                    self.engine.accept(m, token)
        if self.backend.repetition_penalty != 1.0:
            # The same penalty as our loop (over the answer only), so both paths write the same text.
            scores = self.backend._penalize(scores, input_ids[:, self.width :].tolist())
        masked = self.backend._mask(scores, self.engine, self.matchers, self.bitmask)
        for r, m in enumerate(self.matchers):
            if self.engine.closed(m):
                masked[r].fill_(float("-inf"))
                masked[r, self.end] = 0.0
        return masked
