#!/usr/bin/env python3
"""Download benchmark: kmm vs huggingface_hub vs curl against the project's fake hub.

Run through bench/downloads.sh (which builds the release binaries and the venv). Standard
library only. Every case runs the tools interleaved (kmm, hf, curl, kmm, hf, curl, ...) so
that background load on a shared machine hits all of them alike; the medians are printed.

Cases:
  big    one LFS file of --big-mib MiB (sha256-verified by kmm and huggingface_hub)
  small  --small-count regular files of 256 KiB in one repo
  capped a --capped-mib MiB LFS file from a second hub that caps each connection at
         --cap-mbps MB/s (as CDNs do on long links)
  resume kmm killed with SIGKILL once half of the file's chunks are recorded, then rerun;
         the bytes the hub served to the second run are counted (hub --stats-file)
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path


def log(message):
    print(message, file=sys.stderr, flush=True)


def generate(root: Path, big_mib: int, capped_mib: int, small_count: int):
    """Writes the fixture repos (random bytes, so nothing compresses or dedups)."""
    specs = [
        (root / "bench" / "big" / "model.safetensors", big_mib << 20),
        (root / "bench" / "capped" / "model.safetensors", capped_mib << 20),
    ]
    for i in range(small_count):
        specs.append((root / "bench" / "small" / f"shard-{i:03}.txt", 256 << 10))
    for path, size in specs:
        if path.exists() and path.stat().st_size == size:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            left = size
            while left:
                n = min(left, 8 << 20)
                out.write(os.urandom(n))
                left -= n
    for name in ["big", "capped", "small"]:
        (root / "bench" / name / "config.json").write_text('{"model_type":"bench"}')


class Hub:
    def __init__(self, binary: Path, root: Path, stats: Path, cap=None):
        args = [str(binary), "--root", str(root), "--port", "0", "--stats-file", str(stats)]
        # Uncapped, the CDN sends with sendfile as production CDNs do (the setup): the
        # hub shares the clients' 2 cores, and a streamed body costs it a copy of every byte.
        args += ["--bandwidth-cap", str(cap)] if cap else ["--zero-copy-cdn"]
        self.stats = stats
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("endpoint="):
            raise SystemExit(f"the fake hub did not start: {line!r}")
        self.endpoint = line.split("=", 1)[1]
        self.cdn = self.proc.stdout.readline().strip().split("=", 1)[1]

    def served(self) -> int:
        time.sleep(0.25)  # the stats file is rewritten every 100 ms
        text = self.stats.read_text()
        return int(re.search(r"body_bytes_served=(\d+)", text).group(1))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def timed(args, env, cwd=None):
    """Runs args under /usr/bin/time -v; returns (seconds, peak RSS bytes, CPU seconds)."""
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v"] + args, env=env, cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", proc.stderr).group(1))
              for kind in ["User", "System"])
    return elapsed, rss_kib * 1024, cpu


def clean_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "KMM_", "HUGGING"))}
    env.update(extra)
    return env


def run_kmm(kmm: Path, hub: Hub, repo: str, work: Path, extra_env=None):
    work.mkdir(parents=True)
    (work / "kari-models.toml").write_text(f'[models."{repo}"]\nrevision = "main"\n')
    env = clean_env({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(work / "hf-home"), **(extra_env or {})})
    return timed([str(kmm), "apply", "--quiet"], env, cwd=work)


HF_SCRIPT = """
import sys
from huggingface_hub import hf_hub_download, snapshot_download
repo, cache, file = sys.argv[1], sys.argv[2], sys.argv[3]
if file == "-":
    snapshot_download(repo, cache_dir=cache)
else:
    hf_hub_download(repo, file, cache_dir=cache)
"""


def run_hf(python: Path, hub: Hub, repo: str, work: Path, filename):
    work.mkdir(parents=True)
    env = clean_env({"HF_ENDPOINT": hub.endpoint, "HF_HUB_DISABLE_XET": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(work / "hf-home")})
    return timed([str(python), "-c", HF_SCRIPT, repo, str(work / "cache"), filename or "-"], env)


def resolve_cdn(hub: Hub, repo: str, path: str) -> str:
    """The CDN URL the resolve endpoint redirects to (resolved before timing curl)."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{redirect_url}",
                          f"{hub.endpoint}/{repo}/resolve/main/{path}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out or f"{hub.endpoint}/{repo}/resolve/main/{path}"


def run_curl(urls, work: Path):
    work.mkdir(parents=True)
    args = ["curl", "-s", "--fail"]
    for i, url in enumerate(urls):
        args += ["-o", str(work / f"f{i}"), url]
    return timed(args, clean_env({}))


def drop(path: Path, settle: float = 0):
    """Deletes a run's files, flushes, and waits `settle` seconds: on a VM the gigabytes just
    freed are handed back to the host for a few seconds, and whichever tool runs meanwhile pays
    for it (measured: kmm 4.5 s right after curl, 2.7 s after a pause), so every run starts from
    a settled machine."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"])
    time.sleep(settle)


def case(name, size, rounds, runners, work: Path, warmup=0, settle=0.0):
    results = {tool: [] for tool in runners}
    # Untimed first runs (as hyperfine --warmup): the first transfer after a hub starts pays
    # for the machine settling (page cache, memory the hub just loaded), whichever tool runs it.
    for round_ in range(warmup):
        for tool, run in runners.items():
            target = work / f"{name}-{tool}-warmup-{round_}"
            seconds, _, _ = run(target)
            drop(target, settle)
            log(f"  {name} warm-up {tool}: {size / seconds / 1e6:8.1f} MB/s (not counted)")
    for round_ in range(rounds):
        for tool, run in runners.items():
            target = work / f"{name}-{tool}-{round_}"
            seconds, rss, cpu = run(target)
            drop(target, settle)
            results[tool].append((seconds, rss, cpu))
            log(f"  {name} round {round_ + 1}/{rounds} {tool}: {size / seconds / 1e6:8.1f} MB/s, "
                f"peak RSS {rss / 2**20:6.1f} MiB, CPU {cpu:5.2f} s")
    summary = {}
    for tool, runs in results.items():
        seconds = statistics.median(s for s, _, _ in runs)
        summary[tool] = {"mb_per_s": size / seconds / 1e6, "seconds": seconds,
                         "peak_rss_mib": max(r for _, r, _ in runs) / 2**20,
                         "cpu_seconds": statistics.median(c for _, _, c in runs)}
    return summary


def print_case(title, summary, targets):
    print(f"\n== {title}")
    print(f"{'tool':<18}{'median MB/s':>12}{'median s':>10}{'peak RSS MiB':>14}{'median CPU s':>14}")
    for tool, row in summary.items():
        print(f"{tool:<18}{row['mb_per_s']:>12.1f}{row['seconds']:>10.2f}{row['peak_rss_mib']:>14.1f}"
              f"{row['cpu_seconds']:>14.2f}")
    kmm = summary["kmm"]["mb_per_s"]
    for other in summary:
        if other != "kmm":
            print(f"kmm / {other}: {kmm / summary[other]['mb_per_s']:.2f}x")
    for line in targets:
        print(f"target: {line}")


def resume_case(kmm: Path, hub: Hub, size: int, work: Path, env_extra):
    """SIGKILL kmm once half of the chunks are recorded, rerun, count bytes served."""
    target = work / "resume"
    target.mkdir(parents=True)
    (target / "kari-models.toml").write_text('[models."bench/capped"]\nrevision = "main"\n')
    env = clean_env({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(target / "hf-home"), **env_extra})
    downloads = target / "models" / ".kmm" / "downloads"
    start_served = hub.served()
    proc = subprocess.Popen([str(kmm), "apply", "--quiet"], env=env, cwd=target,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fraction = 0.0
    while proc.poll() is None:
        states = list(downloads.glob("*.part.state")) if downloads.exists() else []
        if states:
            try:
                state = json.loads(states[0].read_text())
                chunks = -(-state["size"] // state["chunk_size"])
                fraction = len(state["done"]) / chunks
            except (ValueError, KeyError, OSError):
                pass
            if fraction >= 0.5:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.005)
    proc.wait()
    first = hub.served() - start_served
    before = hub.served()
    subprocess.run([str(kmm), "apply", "--quiet"], env=env, cwd=target, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = hub.served() - before
    drop(target)
    print("\n== resume: SIGKILL at >= 50% of chunks recorded, then rerun")
    print(f"killed with {fraction * 100:.0f}% of chunks recorded; first run was served "
          f"{first / 2**20:.0f} MiB")
    print(f"second run transferred {second / 2**20:.0f} MiB = {second / size * 100:.1f}% of the file")
    print("target: second run <= 55% of the file")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kmm", required=True, type=Path)
    parser.add_argument("--fake-hub", required=True, type=Path)
    parser.add_argument("--python", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--big-mib", type=int, default=2048)
    parser.add_argument("--capped-mib", type=int, default=512)
    parser.add_argument("--small-count", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=6.0,
                        help="seconds to wait after deleting a large case's files (see drop())")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs of every tool before each case's timed rounds")
    parser.add_argument("--capped-rounds", type=int, default=3)
    parser.add_argument("--cases", default="big,small,capped,resume",
                        help="comma-separated subset of big,small,capped,resume")
    parser.add_argument("--cap-mbps", type=int, default=50)
    parser.add_argument("--capped-connections", type=int, default=4,
                        help="a second kmm run in the capped case with at most this many connections")
    args = parser.parse_args()

    data = args.work / "hub"
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    log(f"generating data under {data} ...")
    generate(data, args.big_mib, args.capped_mib, args.small_count)
    version = subprocess.run([str(args.python), "-c", "import huggingface_hub;print(huggingface_hub.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    hub = Hub(args.fake_hub, data, args.work / "stats-hub")
    capped = None
    try:
        print(f"kmm download benchmark: huggingface_hub {version}, curl single stream, "
              f"{os.cpu_count()} CPUs, fake hub (release) on loopback")

        cases = set(args.cases.split(","))
        big = args.big_mib << 20
        big_url = resolve_cdn(hub, "bench/big", "model.safetensors")
        if "big" in cases:
            run_big_case(args, hub, big, big_url, runs)
        if "small" in cases:
            run_small_case(args, hub, runs)
        # The capped hub holds only its repo, and starts once the first hub is gone: each hub
        # maps its fixtures, and on a VM a larger memory footprint makes page-cache writes
        # (every tool's main cost) slower for everyone.
        hub.stop()
        hub = None
        capped_root = args.work / "hub-capped"
        link_repo(data, capped_root, "bench/capped")
        capped = Hub(args.fake_hub, capped_root, args.work / "stats-capped", cap=args.cap_mbps * 1_000_000)
        time.sleep(args.settle)
        capped_size = args.capped_mib << 20
        if "capped" in cases:
            run_capped_case(args, capped, capped_size, runs)
        if "resume" in cases:
            resume_case(args.kmm, capped, capped_size, runs, {})
    finally:
        if hub:
            hub.stop()
        if capped:
            capped.stop()


def link_repo(data: Path, root: Path, repo: str):
    """A fixture root holding only `repo`, hard-linked to the generated files."""
    shutil.rmtree(root, ignore_errors=True)
    for path in (data / repo).rglob("*"):
        if path.is_file():
            target = root / path.relative_to(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def run_big_case(args, hub, big, big_url, runs):
    summary = case("big", big, args.rounds, {
        "kmm": lambda w: run_kmm(args.kmm, hub, "bench/big", w),
        "huggingface_hub": lambda w: run_hf(args.python, hub, "bench/big", w, "model.safetensors"),
        "curl": lambda w: run_curl([big_url], w),
    }, runs, args.warmup, args.settle)
    print_case(f"one {args.big_mib} MiB LFS file (kmm and huggingface_hub verify sha256)", summary,
               ["kmm >= 1.5x curl, >= 3x huggingface_hub, peak RSS <= 64 MiB"])


def run_small_case(args, hub, runs):
    small_size = args.small_count * (256 << 10)
    small_urls = [f"{hub.endpoint}/bench/small/resolve/main/shard-{i:03}.txt"
                  for i in range(args.small_count)]
    summary = case("small", small_size, args.rounds, {
        "kmm": lambda w: run_kmm(args.kmm, hub, "bench/small", w),
        "huggingface_hub": lambda w: run_hf(args.python, hub, "bench/small", w, None),
        "curl": lambda w: run_curl(small_urls, w),
    }, runs, args.warmup, min(args.settle, 1.0))
    print_case(f"{args.small_count} files of 256 KiB (+ config.json for kmm/hf)", summary,
               ["kmm >= curl's sequential throughput (~7x huggingface_hub)"])


def run_capped_case(args, capped, capped_size, runs):
    capped_url = resolve_cdn(capped, "bench/capped", "model.safetensors")
    summary = case("capped", capped_size, args.capped_rounds, {
        "kmm": lambda w: run_kmm(args.kmm, capped, "bench/capped", w),
        f"kmm (max {args.capped_connections} conn)": lambda w: run_kmm(
            args.kmm, capped, "bench/capped", w,
            {"KMM_CONNECTIONS_PER_FILE": str(args.capped_connections)}),
        "huggingface_hub": lambda w: run_hf(args.python, capped, "bench/capped", w, "model.safetensors"),
        "curl": lambda w: run_curl([capped_url], w),
    }, runs, args.warmup, args.settle)
    print_case(f"one {args.capped_mib} MiB LFS file, each connection capped at {args.cap_mbps} MB/s",
               summary, ["kmm >= 8x huggingface_hub"])


if __name__ == "__main__":
    main()
