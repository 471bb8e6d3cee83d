#!/usr/bin/env python3
"""Regenerates the fixture repos under examples/hub (standard library only, deterministic).

Run from anywhere: `python3 examples/hub/generate.py [--out DIR]` (default: beside this script).
The output is committed; rerunning must produce identical bytes (no timestamps, no randomness
beyond fixed-seed generators), which tests/it/interop.rs checks.
Folder format: see README.md beside this script.
"""

import argparse
import json
import random
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# --- GGUF (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), version 3 -------------
GGUF_UINT32 = 4
GGUF_STRING = 8
GGUF_ALIGNMENT = 32


def gguf_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def gguf_file(name: str, file_type: int, total_size: int) -> bytes:
    """A GGUF v3 header with metadata and no tensors, zero-padded to `total_size`."""
    metadata = [
        ("general.architecture", GGUF_STRING, "llama"),
        ("general.name", GGUF_STRING, name),
        ("general.file_type", GGUF_UINT32, file_type),
        ("general.alignment", GGUF_UINT32, GGUF_ALIGNMENT),
        ("llama.context_length", GGUF_UINT32, 2048),
        ("llama.embedding_length", GGUF_UINT32, 2048),
        ("llama.block_count", GGUF_UINT32, 22),
    ]
    out = bytearray(b"GGUF")
    out += struct.pack("<I", 3)  # version
    out += struct.pack("<Q", 0)  # tensor_count
    out += struct.pack("<Q", len(metadata))
    for key, value_type, value in metadata:
        out += gguf_string(key)
        out += struct.pack("<I", value_type)
        out += gguf_string(value) if value_type == GGUF_STRING else struct.pack("<I", value)
    # Tensor data would start at the next alignment boundary; the padding stands in for it.
    assert len(out) < total_size
    out += bytes(total_size - len(out))
    return bytes(out)


# --- safetensors (https://github.com/huggingface/safetensors#format) --------------------------
def safetensors_file(tensors: dict, seed: int) -> bytes:
    """`tensors`: name -> shape. F32 values from a fixed-seed generator."""
    rng = random.Random(seed)
    header = {"__metadata__": {"format": "pt"}}
    data = bytearray()
    for name, shape in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        start = len(data)
        data += struct.pack(f"<{count}f", *(rng.uniform(-1.0, 1.0) for _ in range(count)))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [start, len(data)]}
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    header_bytes += b" " * (-len(header_bytes) % 8)  # the format pads the header with spaces
    return struct.pack("<Q", len(header_bytes)) + header_bytes + bytes(data)


def write(relative: str, content) -> None:
    path = OUT / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)


def write_json(relative: str, value) -> None:
    write(relative, json.dumps(value, indent=2) + "\n")


GITATTRIBUTES = "".join(
    f"*.{ext} filter=lfs diff=lfs merge=lfs -text\n"
    for ext in ["bin", "gguf", "h5", "msgpack", "onnx", "pt", "pth", "safetensors"]
)

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    w for w in "the of and to in a is that for it as was with be by on not he this are or his from at which".split()
]


def vocab_txt() -> str:
    return "".join(f"{w}\n" for w in WORDS)


def tokenizer_json() -> dict:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "vocab": {w: i for i, w in enumerate(WORDS)}},
    }


def tinyllama() -> None:
    base = "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"
    write_json(f"{base}/_hub.json", {"license": "apache-2.0", "pipeline_tag": "text-generation", "downloads": 90000, "likes": 120})
    write(
        f"{base}/README.md",
        "---\nlicense: apache-2.0\nmodel_creator: TinyLlama\nmodel_type: tinyllama\n---\n"
        "# TinyLlama 1.1B Chat v1.0 - GGUF (fixture)\n\nSmall stand-in files with genuine GGUF v3 headers.\n",
    )
    write_json(f"{base}/config.json", {"model_type": "llama"})
    write(
        f"{base}/tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
        gguf_file("tinyllama_tinyllama-1.1b-chat-v1.0", 15, 300 * 1024),
    )
    write(
        f"{base}/tinyllama-1.1b-chat-v1.0.Q2_K.gguf",
        gguf_file("tinyllama_tinyllama-1.1b-chat-v1.0", 10, 200 * 1024),
    )


def tiny_bert() -> None:
    base = "acme/tiny-bert"
    write_json(f"{base}/_hub.json", {"pipeline_tag": "fill-mask", "tags": ["v1.0"], "downloads": 500, "likes": 3})
    write(f"{base}/README.md", "---\nlicense: apache-2.0\nlanguage: en\n---\n# tiny-bert\n\nA tiny BERT fixture.\n")
    write(f"{base}/.gitattributes", GITATTRIBUTES)
    write_json(
        f"{base}/config.json",
        {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 4, "num_hidden_layers": 1,
         "num_attention_heads": 1, "vocab_size": len(WORDS)},
    )
    write(f"{base}/model.safetensors", safetensors_file({"embeddings.weight": (len(WORDS), 4), "classifier.bias": (4,)}, 1))
    write_json(f"{base}/tokenizer/tokenizer.json", tokenizer_json())
    write(f"{base}/tokenizer/vocab.txt", vocab_txt())


def distilbert() -> None:
    base = "distilbert/distilbert-base-uncased"
    write_json(f"{base}/_hub.json", {"aliases": ["distilbert-base-uncased"], "license": "apache-2.0",
                                     "pipeline_tag": "fill-mask", "downloads": 10000000, "likes": 700})
    write(f"{base}/.gitattributes", GITATTRIBUTES)
    write_json(
        f"{base}/config.json",
        {"architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert", "dim": 8, "n_layers": 1,
         "n_heads": 1, "vocab_size": len(WORDS)},
    )
    write(f"{base}/vocab.txt", vocab_txt())
    write(f"{base}/model.safetensors", safetensors_file({"distilbert.embeddings.word_embeddings.weight": (len(WORDS), 8)}, 2))


def gpt2() -> None:
    base = "openai-community/gpt2"
    write_json(f"{base}/_hub.json", {"aliases": ["gpt2"], "license": "mit", "pipeline_tag": "text-generation",
                                     "downloads": 8000000, "likes": 2500})
    write(f"{base}/.gitattributes", GITATTRIBUTES)
    write_json(f"{base}/config.json", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 8,
                                       "n_layer": 1, "n_head": 1, "vocab_size": 16})
    write(f"{base}/model.safetensors", safetensors_file({"wte.weight": (16, 8), "wpe.weight": (8, 8)}, 3))
    vocab = {token: i for i, token in enumerate(["!", "\"", "a", "b", "c", "d", "e", "the", "Ġthe", "Ġa", "ab", "cd",
                                                   "ĠĠ", "Ċ", "<|endoftext|>", "Ġ"])}
    write_json(f"{base}/vocab.json", vocab)
    write(f"{base}/merges.txt", "#version: 0.2\na b\nc d\nt h\nth e\n")
    write_json(f"{base}/tokenizer.json", {"version": "1.0", "model": {"type": "BPE", "vocab": vocab,
                                                                      "merges": ["a b", "c d"]}})


def gated() -> None:
    base = "acme/gated-model"
    write_json(f"{base}/_hub.json", {"gated": "manual", "allowed_tokens": ["hf_fixture_token"], "license": "other"})
    write(f"{base}/README.md", "---\nlicense: other\nextra_gated_prompt: You agree to the fixture terms.\n---\n# gated-model\n")
    write_json(f"{base}/config.json", {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 4})
    write(f"{base}/model.safetensors", safetensors_file({"pooler.dense.weight": (4, 4)}, 4))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Regenerate the fake hub fixture repos.")
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write the repos (default: %(default)s)")
    OUT = parser.parse_args().out
    tinyllama()
    tiny_bert()
    distilbert()
    gpt2()
    gated()
