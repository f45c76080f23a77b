"""A tiny random Llama with a byte-level BPE tokenizer that reads any prompt text, for fast runs."""

from __future__ import annotations

from pathlib import Path

import pytest

_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_llama(folder: Path, corpus: list[str], *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = _CHAT
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from genrec_sftdata import NextPoiConfig, build_next_poi, prepare, synthesize_city

    prepared = prepare(synthesize_city(n_users=8, seed=1, n_pois=40, checkins_per_user=40))
    built = build_next_poi(prepared, config=NextPoiConfig(max_history=4))
    corpus = [p + "\n" + c for p, c in zip(built["train"]["prompt"], built["train"]["completion"])]
    corpus += [
        '{"traits": ["extroverted"], "age": "adult", "summary": "A user who visits coffee shops."}',
        "user profile preferences routines socio-economic education gender",
    ]
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), corpus)


# ------------------------------------------------- a local mirror of the public data sets (offline)


class MirrorServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; ``requests`` logs each path asked for. A
    ``GENREC_DATA_MIRROR`` pointing here makes ``genrec_sftdata.fetch`` download from it."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                data = server.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def amazon_files(name: str, *, users: int = 400, items: int = 200, per_user: int = 40) -> dict[str, bytes]:
    """Amazon 5-core reviews and metadata in the published format (gzip JSON lines; the 2014 metadata as
    Python literals), large enough that GORACS's split (5,000 test and 5,000 valid samples, or 10% and
    10% for Food) leaves training samples: each user's reviews give ``per_user - 10`` samples."""
    import gzip
    import json

    from genrec_sftdata import list_datasets

    source = next(s for s in list_datasets() if s.name == name)
    reviews = []
    for u in range(users):
        for k in range(per_user):
            item = (7 * u + 3 * k) % items
            reviews.append({"overall": float(1 + (u + k) % 5), "verified": True, "reviewerID": f"A{u:05d}",
                            "asin": f"B{item:05d}", "reviewText": "fine", "summary": "ok",
                            "unixReviewTime": 1_420_070_400 + 600 * (k * users + u)})  # fmt: skip
    # Movies keeps titles over 50 characters only; short ones elsewhere keep CTR prompts within 512 tokens.
    pad = " with a title long enough for GORACS's movies rule" if source.options["domain"] == "movies" else ""
    meta = [{"asin": f"B{i:05d}", "title": f"Item {i}{pad}",
             "brand": f"Brand{i % 7}", "categories": [["Things"]]} for i in range(items)]  # fmt: skip
    literal = source.urls[1].startswith("http://snap")
    review_text = "".join(json.dumps(r) + "\n" for r in reviews)
    meta_text = "".join((repr(m) if literal else json.dumps(m)) + "\n" for m in meta)
    reviews_file, meta_file = source.files
    return {reviews_file: gzip.compress(review_text.encode(), mtime=0), meta_file: gzip.compress(meta_text.encode(), mtime=0)}


def tsmc_zip(users: int = 12, per_user: int = 60) -> bytes:
    """Foursquare TSMC2014 check-ins (tab-separated, latin-1, CRLF) zipped as published."""
    import io
    import zipfile
    from datetime import datetime, timedelta

    lines = []
    start = datetime(2012, 4, 3, 18, 0, 9)
    for u in range(users):
        for k in range(per_user):
            poi = (3 * u + k) % 9
            t = start + timedelta(hours=5 * k + u)
            lines.append("\t".join([str(470 + u), f"49bbd6c0f964a520f4531f{poi:02d}", f"4bf58dd8d48988d127951{poi:03d}",
                                    f"Category {poi % 4}", f"{40.7 + poi / 100}", f"{-74.0 - poi / 100}", "-240",
                                    t.strftime("%a %b %d %H:%M:%S +0000 %Y")]))  # fmt: skip
    text = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("dataset_tsmc2014/dataset_TSMC2014_NYC.txt", text)
        zf.writestr("dataset_tsmc2014/dataset_TSMC2014_TKY.txt", text)
    return buf.getvalue()


@pytest.fixture(scope="module")
def data_mirror():
    """A local mirror of the Amazon and Foursquare data sets, as ``GENREC_DATA_MIRROR`` (proxies bypassed)."""
    import os

    server = MirrorServer()
    for name in ("amazon-games", "amazon-movies", "amazon-food"):
        for fname, data in amazon_files(name).items():
            server.files[f"/{name}/{fname}"] = data
    server.files["/foursquare-nyc/dataset_tsmc2014.zip"] = tsmc_zip()
    names = ("GENREC_DATA_MIRROR", "no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY", "GENREC_OFFLINE")
    old = {k: os.environ.get(k) for k in names}
    for k in ("http_proxy", "HTTP_PROXY", "GENREC_OFFLINE"):
        os.environ.pop(k, None)
    os.environ.update({"GENREC_DATA_MIRROR": server.url, "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"})
    yield server
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.close()
