#!/usr/bin/env python3
"""Generates a large installed store for `bench/plan_scale.sh`.

    bench/gen_store.py OUT_DIR [--models 10000] [--files-per-model 20]

OUT_DIR gets what a machine with that many installed models looks like to kmm:

- `kari-models.toml` declaring every model (plain `[models."org/name"]` tables),
- `kari-models.lock` resolving each one (commit, files, sizes, upstream hashes), so that
  `kmm plan --offline` needs no hub,
- `models/model_registry.json` recording each one as installed (absolute `install_path`s,
  hashes, selection), and
- `models/<layout>/<org>/<name>/...` with every file on disk at its recorded size.

A quarter of the models hold GGUF files (routed to `models/llama-cpp/`), the others
safetensors shards plus small files in a subfolder (`models/transformers/`). File contents are
tiny and the upstream hashes are made up (consistent between lock and registry): a default
plan never hashes files whose record vouches for them, which is what this measures.
"""

import argparse
import hashlib
import json
import os
import sys


def model_files(index, count):
    """(path, content, is_lfs) of one model's files."""
    files = []
    gguf = index % 4 == 0
    for j in range(count):
        if gguf:
            path = f"model-{index}.Q{j}_K.gguf"
            lfs = True
        elif j % 2 == 0:
            path = f"model-{j:05}-of-{count:05}.safetensors"
            lfs = True
        else:
            path = f"extra/part-{j}.txt"
            lfs = False
        content = f"{index}:{path}\n".encode() * (1 + j % 3)
        files.append((path, content, lfs))
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--models", type=int, default=10_000)
    parser.add_argument("--files-per-model", type=int, default=20)
    args = parser.parse_args()

    out = os.path.abspath(args.out)
    models_dir = os.path.join(out, "models")
    os.makedirs(models_dir, exist_ok=True)
    manifest = ["[settings]", 'models_dir = "models"', ""]
    # Lock blocks by model id: kmm writes them sorted by id, so the generated lock is the one
    # `kmm lock` would write.
    blocks = {}
    registry = {}
    total_files = 0
    for index in range(args.models):
        model_id = f"bench-org-{index // 100}/model-{index}"
        files = sorted(model_files(index, args.files_per_model), key=lambda f: f[0])
        gguf = any(path.endswith(".gguf") for path, _, _ in files)
        library = "llama-cpp" if gguf else "transformers"
        install_dir = os.path.join(models_dir, library, model_id)
        commit = hashlib.sha1(model_id.encode()).hexdigest()
        record_files = []
        lock = blocks[model_id] = []
        lock.append("")
        lock.append(f'[models."{model_id}"]')
        lock.append('revision = "main"')
        lock.append(f'commit = "{commit}"')
        lock.append("include = []")
        lock.append("exclude = []")
        lock.append("files = [")
        for path, content, lfs in files:
            full = os.path.join(install_dir, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as handle:
                handle.write(content)
            digest = hashlib.sha256(content).hexdigest() if lfs else hashlib.sha1(
                b"blob %d\0" % len(content) + content
            ).hexdigest()
            key = "sha256" if lfs else "git_sha1"
            record_files.append({"path": path, "size": len(content), key: digest})
            lock.append(
                f'  {{ path = "{path}", size = {len(content)}, {key} = "{digest}" }},'
            )
            total_files += 1
        lock.append("]")
        manifest.append(f'[models."{model_id}"]')
        registry[model_id] = {
            "model_id": model_id,
            "library": library,
            "revision": "main",
            "installed_at": "2025-09-01T12:34:56Z",
            "install_path": install_dir,
            "files": record_files,
            "total_size": sum(f["size"] for f in record_files),
            "commit": commit,
            "selection": {"include": [], "exclude": []},
        }
        if index % 1000 == 999:
            print(f"  {index + 1} models", file=sys.stderr)
    with open(os.path.join(out, "kari-models.toml"), "w") as handle:
        handle.write("\n".join(manifest) + "\n")
    lock = [
        "# kari-models.lock: written by kmm (`kmm lock`). Commit it; do not edit.",
        "version = 1",
    ]
    for model_id in sorted(blocks):
        lock.extend(blocks[model_id])
    with open(os.path.join(out, "kari-models.lock"), "w") as handle:
        handle.write("\n".join(lock) + "\n")
    with open(os.path.join(models_dir, "model_registry.json"), "w") as handle:
        json.dump(registry, handle, indent=2, sort_keys=True)
        handle.write("\n")
    print(f"{args.models} models, {total_files} files in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
