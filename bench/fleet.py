#!/usr/bin/env python3
"""Fleet benchmark: hosts started together against the fake hub, with and without the shared
tier (a local SeaweedFS), then one host filling from the filled tier against curl.

Run through bench/fleet.sh (which builds the release binaries and finds `weed`). Standard
library only.

Cases:
  tier     --hosts hosts (own workdir, manifest, HF_HOME, KMM_NODE_NAME) run `kmm apply --json`
           together with KMM_SHARED_STORE on a fresh prefix: the bytes the hub served (its
           --stats-file, before/after) over the model's bytes, the wall time until every host
           converged, each host's peak RSS and where its bytes came from
  no-tier  the same hosts without the tier (fresh workdirs): hub bytes / model bytes, wall time
  read     one fresh host with a converged host's lock, `kmm apply --frozen` (no hub request),
           from the filled tier, against its peer: curl in one process with keep-alive writing
           every object into a file (sequential and --parallel, the best kept), with the ceiling
           beside it (the same reads to /dev/null: sequential, --parallel, --parallel with 8 MiB
           ranges); cold (page cache dropped before every run, when this user can) and warm;
           medians of --rounds rounds, tools interleaved. Diagnostic rows: kmm with
           KMM_DIRECT_IO=0, with KMM_CONNECTIONS_PER_FILE=4, kmm on a host that has everything
           (its fixed cost)
The fleet cases run --fleet-rounds times (a fresh prefix and fresh workdirs each time); the
read case uses the tier filled by the first round.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

MODEL = "bench/fleet"
BUCKET = "kmm-bench"
# Credentials of the throwaway SeaweedFS this script starts on loopback.
ACCESS_KEY = "AKIDKMMBENCH"
SECRET_KEY = "kmm-bench-local-secret"
REGION = "us-east-1"
MIB = 1 << 20


def log(message):
    print(message, file=sys.stderr, flush=True)


def out(message=""):
    print(message, flush=True)


def generate(root: Path, lfs_mib: int, small_count: int) -> dict:
    """Writes the model repo (random bytes, so nothing compresses or dedups) and returns
    {repo path: size}: two LFS files and config.json plus `small_count` small regular files."""
    repo = root / MODEL
    specs = {
        "model-00001-of-00002.safetensors": lfs_mib * MIB,
        "model-00002-of-00002.safetensors": lfs_mib * MIB,
    }
    for path, size in specs.items():
        target = repo / path
        if target.exists() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out_file:
            left = size
            while left:
                n = min(left, 8 * MIB)
                out_file.write(os.urandom(n))
                left -= n
    (repo / "config.json").write_text('{"model_type":"bench","architectures":["BenchModel"]}\n')
    specs["config.json"] = (repo / "config.json").stat().st_size
    for i in range(small_count):
        path = f"extra/part-{i:02}.json"
        target = repo / path
        size = 2048 + (i * 613) % 6144  # 2 to 8 KiB
        if not (target.exists() and target.stat().st_size == size):
            target.parent.mkdir(parents=True, exist_ok=True)
            body = os.urandom(size).hex()[: size - 12]
            target.write_text('{"part":"' + body + '"}\n')
        specs[path] = target.stat().st_size
    return specs


def free_port_pair(taken):
    """A free port whose +10000 twin (weed's gRPC port) is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port >= 55535 or port in taken or port + 10000 in taken:
            continue
        try:
            with socket.socket() as twin:
                twin.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (its threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


class SeaweedFs:
    """One `weed server` (master, volume, filer, S3 gateway) on loopback, with one bucket."""

    def __init__(self, weed: Path, data: Path):
        shutil.rmtree(data, ignore_errors=True)
        (data / "store").mkdir(parents=True)
        identities = data / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "kmm", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = []
        for _ in range(4):
            port = free_port_pair(ports)
            ports += [port, port + 10000]
        master, volume, filer, s3 = ports[0], ports[2], ports[4], ports[6]
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.log_path = data / "weed.log"
        self.proc = subprocess.Popen(
            [str(weed), "server", f"-dir={data / 'store'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={master}", f"-volume.port={volume}", "-filer", f"-filer.port={filer}",
             "-s3", f"-s3.port={s3}", f"-s3.config={identities}", "-master.telemetry=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=1024",
             "-volume.max=0"],
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT)
        started = time.monotonic()
        while True:
            code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                                   f"http://127.0.0.1:{filer}/buckets/{BUCKET}/"],
                                  capture_output=True, text=True).stdout.strip()
            if code == "201":
                break
            self.check(started, "the bucket was not created")
            time.sleep(0.5)
        while True:
            listed = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
                                    + self.auth() + [f"{self.endpoint}/{BUCKET}?list-type=2&max-keys=1"],
                                    capture_output=True, text=True).stdout.strip()
            if listed == "200":
                break
            self.check(started, f"the S3 gateway did not list the bucket (HTTP {listed})")
            time.sleep(0.5)

    def check(self, started, what):
        if self.proc.poll() is not None:
            raise SystemExit(f"weed exited ({self.proc.returncode}); see {self.log_path}")
        if time.monotonic() - started > 90:
            raise SystemExit(f"SeaweedFS did not start in 90 s: {what}; see {self.log_path}")

    @staticmethod
    def auth():
        return ["--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}"]

    def url(self, key: str) -> str:
        return f"{self.endpoint}/{BUCKET}/{key}"

    def env(self, prefix: str) -> dict:
        return {"KMM_SHARED_STORE": f"s3://{BUCKET}/{prefix}", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def list(self, prefix: str) -> dict:
        """{key: size} of every object under `prefix` (ListObjectsV2, all pages)."""
        objects, token = {}, None
        while True:
            query = ["list-type=2", "max-keys=1000", "prefix=" + quote(prefix)]
            if token:
                query.append("continuation-token=" + quote(token))
            text = subprocess.run(["curl", "-s", "--fail"] + self.auth()
                                  + [f"{self.endpoint}/{BUCKET}?{'&'.join(sorted(query))}"],
                                  capture_output=True, text=True, check=True).stdout
            root = ET.fromstring(text)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for item in root.iter(f"{ns}Contents"):
                objects[item.find(f"{ns}Key").text] = int(item.find(f"{ns}Size").text)
            truncated = root.find(f"{ns}IsTruncated")
            token_el = root.find(f"{ns}NextContinuationToken")
            if truncated is None or truncated.text != "true" or token_el is None:
                return objects
            token = token_el.text

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self):
        # It takes ~10 s to stop on SIGTERM; the data is throwaway.
        self.proc.kill()
        self.proc.wait()


def quote(text: str) -> str:
    from urllib.parse import quote as q
    return q(text, safe="-_.~")


class Hub:
    def __init__(self, binary: Path, root: Path, stats: Path, cap: int):
        self.stats = stats
        self.proc = subprocess.Popen(
            [str(binary), "--root", str(root), "--port", "0", "--stats-file", str(stats),
             "--bandwidth-cap", str(cap)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("endpoint="):
            raise SystemExit(f"the fake hub did not start: {line!r}")
        self.endpoint = line.split("=", 1)[1]
        self.cdn = self.proc.stdout.readline().strip().split("=", 1)[1]

    def served(self) -> int:
        time.sleep(0.25)  # the stats file is rewritten every 100 ms
        return int(re.search(r"body_bytes_served=(\d+)", self.stats.read_text()).group(1))

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def clean_env(extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "KMM_", "HUGGING", "AWS_"))}
    env.update(extra)
    return env


def settle(path: Path, seconds: float):
    """Deletes a run's files, flushes, and waits: on a VM the gigabytes just freed are handed
    back to the host for a few seconds, and whatever runs meanwhile pays for it."""
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"])
    time.sleep(seconds)


def drop_caches() -> bool:
    subprocess.run(["sync"])
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- hosts

class Host:
    """One host: its own workdir, manifest (models_dir inside it), HF_HOME and node name."""

    def __init__(self, directory: Path, node: str, hub: Hub, tier_env: dict):
        self.dir = directory
        self.node = node
        self.models = directory / "models"
        directory.mkdir(parents=True)
        (directory / "kari-models.toml").write_text(
            f'[settings]\nmodels_dir = "{self.models}"\n\n[models."{MODEL}"]\nrevision = "main"\n')
        self.env = clean_env({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(directory / "hf-home"),
                              "KMM_NODE_NAME": node, **tier_env})
        self.proc = None
        self.started = self.finished = None

    def start(self, kmm: Path, args):
        self.stdout = self.dir / "apply.json"
        self.stderr = self.dir / "apply.stderr"
        self.rss_file = self.dir / "time.txt"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", str(self.rss_file), str(kmm)] + args,
            cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=open(self.stdout, "w"), stderr=open(self.stderr, "w"))

    def wait(self):
        self.proc.wait()
        self.finished = time.perf_counter()

    def result(self, expected: dict) -> dict:
        rc = self.proc.returncode
        fields = self.rss_file.read_text().strip().splitlines()[-1].split()
        rss = int(fields[0]) * 1024
        cpu = float(fields[1]) + float(fields[2])
        report, error = {}, None
        try:
            doc = json.loads(self.stdout.read_text())
            report = doc.get("data", {}).get("report", {}) or {}
            if "error" in doc:
                error = json.dumps(doc["error"])[:400]
        except ValueError as e:
            error = f"stdout is not JSON ({e})"
        if rc != 0 and not error:
            error = f"exit {rc}: {self.stderr.read_text()[-400:]}"
        installed = self.installed(expected)
        if rc == 0 and installed is not True:
            error = f"exit 0 but the model is not installed as expected: {installed}"
        warnings = [line.strip() for line in self.stderr.read_text(errors="replace").splitlines()
                    if "warn" in line.lower()]
        return {"node": self.node, "rc": rc, "seconds": self.finished - self.started, "warnings": warnings,
                "rss": rss, "cpu": cpu, "report": report, "error": error,
                "converged": rc == 0 and error is None}

    def installed(self, expected: dict):
        """True when every file of the model is installed with its size, else what is not."""
        root = self.models / "transformers" / MODEL
        wrong = []
        for path, size in expected.items():
            try:
                actual = (root / path).stat().st_size
            except OSError:
                actual = None
            if actual != size:
                wrong.append(f"{path}: {actual} bytes, expected {size}")
        return True if not wrong else "; ".join(wrong[:3]) + (f" (+{len(wrong) - 3})" if len(wrong) > 3 else "")


class Timeline(threading.Thread):
    """Polls the hub's stats file and the tier's blob listing while the hosts run: when the
    hub had served one model's worth, when the tier held the LFS blobs and every blob."""

    def __init__(self, hub: Hub, sw: SeaweedFs, prefix, model_bytes: int, n_files: int, n_lfs: int):
        super().__init__(daemon=True)
        self.hub, self.sw, self.prefix = hub, sw, prefix
        self.model_bytes, self.n_files, self.n_lfs = model_bytes, n_files, n_lfs
        self.events = {}
        self.stop_event = threading.Event()

    def begin(self, started: float, served_before: int):
        self.started, self.before = started, served_before
        self.start()

    def mark(self, name):
        self.events.setdefault(name, time.perf_counter() - self.started)

    def run(self):
        while not self.stop_event.is_set():
            try:
                served = int(re.search(r"body_bytes_served=(\d+)", self.hub.stats.read_text()).group(1))
                if served - self.before >= self.model_bytes:
                    self.mark("hub served one model's worth")
            except (OSError, AttributeError):
                pass
            if self.prefix:
                try:
                    blobs = self.sw.list(self.prefix + "/blobs/")
                except (subprocess.CalledProcessError, ET.ParseError):
                    blobs = {}
                lfs = sum(1 for key in blobs if "/blobs/sha256/" in key)
                if blobs:
                    self.mark("first blob in the tier")
                if lfs >= 1:
                    self.mark("first LFS blob in the tier")
                if lfs >= self.n_lfs:
                    self.mark("every LFS blob in the tier")
                if len(blobs) >= self.n_files:
                    self.mark("every blob in the tier")
            self.stop_event.wait(0.2)

    def finish(self):
        self.stop_event.set()
        self.join()


def run_together(hosts, kmm: Path, args, timeline=None, served_before=0):
    """Starts every host at once; returns the wall time until the last one exited."""
    started = time.perf_counter()
    if timeline:
        timeline.begin(started, served_before)
    for host in hosts:
        host.start(kmm, args)
    waiters = [threading.Thread(target=host.wait) for host in hosts]
    for waiter in waiters:
        waiter.start()
    for waiter in waiters:
        waiter.join()
    return max(host.finished for host in hosts) - started


def fleet_round(args, hub: Hub, sw: SeaweedFs, expected: dict, prefix, label: str, runs: Path):
    """One start of every host together (with the tier at `prefix`, or without it)."""
    model_bytes = sum(expected.values())
    base = runs / label
    shutil.rmtree(base, ignore_errors=True)
    tier_env = sw.env(prefix) if prefix else {}
    hosts = [Host(base / f"host-{i}", f"host-{i}", hub, tier_env) for i in range(args.hosts)]
    before = hub.served()
    hub_cpu, weed_cpu = hub.cpu(), sw.cpu()
    timeline = Timeline(hub, sw, prefix, model_bytes, len(expected),
                        sum(1 for path in expected if path.endswith(".safetensors")))
    wall = run_together(hosts, args.kmm, ["apply", "--json"], timeline, before)
    timeline.finish()
    served = hub.served() - before
    results = [host.result(expected) for host in hosts]
    row = {"label": label, "wall": wall, "hub_bytes": served, "ratio": served / model_bytes,
           "hosts": results, "converged": sum(r["converged"] for r in results),
           "hub_cpu": hub.cpu() - hub_cpu, "weed_cpu": sw.cpu() - weed_cpu, "base": base,
           "prefix": prefix, "timeline": timeline.events}
    if prefix:
        objects = sw.list(prefix + "/")
        row["objects"] = objects
        status = subprocess.run([str(args.kmm), "--json", "fleet", "status"], cwd=hosts[0].dir,
                                env=hosts[0].env, capture_output=True, text=True)
        try:
            data = json.loads(status.stdout)["data"]
            row["fleet_status"] = f"{data['converged']}/{len(data['hosts'])} hosts converged to host-0's lock"
        except (ValueError, KeyError, TypeError):
            row["fleet_status"] = f"kmm fleet status failed ({status.returncode}): {status.stderr.strip()[-300:]}"
        # The lock of a converged host, for the read case.
        for host, result in zip(hosts, results):
            if result["converged"]:
                shutil.copy(host.dir / "kari-models.lock", runs / f"{label}.lock")
                row["lock"] = runs / f"{label}.lock"
                break
    return row


def print_fleet_rounds(title: str, rows, model_bytes: int, tier: bool):
    out(f"\n== {title}")
    for i, row in enumerate(rows):
        out(f"round {i + 1}: hub served {row['hub_bytes'] / MIB:8.1f} MiB = {row['ratio']:.3f}x the model; "
            f"{row['converged']}/{len(row['hosts'])} converged; all done in {row['wall']:6.2f} s "
            f"(CPU: hub {row['hub_cpu']:.1f} s" + (f", SeaweedFS {row['weed_cpu']:.1f} s" if tier else "")
            + f", kmm {sum(h['cpu'] for h in row['hosts']):.1f} s)")
    shown = sorted(rows, key=lambda r: r["wall"])[len(rows) // 2]
    which = f"round {rows.index(shown) + 1}" + (" (median wall time)" if len(rows) > 1 else "")
    out(f"per host, {which}:")
    if tier:
        out(f"  {'host':<8}{'wall s':>8}{'peak RSS MiB':>14}{'CPU s':>7}{'from tier MiB':>15}"
            f"{'from hub MiB':>14}  state")
    else:
        out(f"  {'host':<8}{'wall s':>8}{'peak RSS MiB':>14}{'CPU s':>7}{'from hub MiB':>14}  state")
    for h in shown["hosts"]:
        rep = h["report"]
        state = "converged" if h["converged"] else f"FAILED: {h['error']}"
        if h["warnings"]:
            state += f"; {len(h['warnings'])} warning(s), first: {h['warnings'][0][:160]}"
        tail = (f"{rep.get('bytes_from_shared_store', 0) / MIB:>15.1f}" if tier else "") + \
            f"{rep.get('bytes_downloaded', 0) / MIB:>14.1f}"
        out(f"  {h['node']:<8}{h['seconds']:>8.2f}{h['rss'] / MIB:>14.1f}{h['cpu']:>7.1f}{tail}  {state}")
    events = sorted(shown["timeline"].items(), key=lambda item: item[1])
    firsts = sorted(h["seconds"] for h in shown["hosts"])
    events += [("first host done", firsts[0]), ("last host done", firsts[-1])]
    out("timeline (s after the start, polled every 0.2 s): "
        + "; ".join(f"{name} {at:.1f}" for name, at in sorted(events, key=lambda item: item[1])))
    if tier:
        objects = shown.get("objects", {})
        blobs = [k for k in objects if "/blobs/" in k]
        leases = [k for k in objects if "/leases/" in k]
        nodes = [k for k in objects if "/nodes/" in k]
        sha256 = [k for k in blobs if "/blobs/sha256/" in k]
        out(f"tier after the round: {len(blobs)} blobs ({len(sha256)} sha256, {len(blobs) - len(sha256)} sha1, "
            f"{sum(objects[k] for k in blobs) / MIB:.1f} MiB), {len(leases)} leases left, "
            f"{len(nodes)} node reports; kmm fleet status: {shown.get('fleet_status')}")
        took = sum(h["report"].get("bytes_downloaded", 0) for h in shown["hosts"])
        out(f"hosts' own count of hub bytes (sum of bytes_downloaded): {took / MIB:.1f} MiB "
            f"= {took / model_bytes:.3f}x the model")
    warned = sum(len(h["warnings"]) for r in rows for h in r["hosts"])
    out(f"warnings on the hosts' stderr, all rounds: {warned}")
    med_wall = statistics.median(r["wall"] for r in rows)
    med_ratio = statistics.median(r["ratio"] for r in rows)
    out(f"median over {len(rows)} round(s): hub bytes / model bytes {med_ratio:.3f}x, "
        f"wall time for all {len(shown['hosts'])} hosts {med_wall:.2f} s; "
        f"peak RSS max {max(h['rss'] for r in rows for h in r['hosts']) / MIB:.1f} MiB")
    return {"ratio": med_ratio, "wall": med_wall,
            "rss_max": max(h["rss"] for r in rows for h in r["hosts"]),
            "converged": all(r["converged"] == len(r["hosts"]) for r in rows)}


# ----------------------------------------------------------------------------- read case

def timed(args, env=None, cwd=None, stdout_path=None):
    """Runs args under /usr/bin/time; returns (seconds, peak RSS bytes, CPU s, rc, stdout)."""
    rss_file = Path(f"/tmp/kmm-fleet-bench-time-{os.getpid()}.txt")
    started = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file)] + args,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    fields = rss_file.read_text().strip().splitlines()[-1].split()
    rss_file.unlink()
    if stdout_path:
        stdout_path.write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(args[:3])} ...\n"
                         f"{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return elapsed, int(fields[0]) * 1024, float(fields[1]) + float(fields[2]), proc.stdout


def curl_config(sw: SeaweedFs, keys: dict, path: Path, ranged: bool, into=None):
    """A curl config of one transfer per object (or per 8 MiB range), each to /dev/null (or to
    a file per object under `into`)."""
    lines = []
    for n, (key, size) in enumerate(sorted(keys.items())):
        ranges = [None]
        if ranged and size > 8 * MIB:
            ranges = [(start, min(start + 8 * MIB, size) - 1) for start in range(0, size, 8 * MIB)]
        for r in ranges:
            if lines:
                lines.append("next")
            target = into / f"f{n:03}" if into else "/dev/null"
            lines += [f'url = "{sw.url(key)}"', f'output = "{target}"', "silent", "show-error", "fail",
                      f'aws-sigv4 = "aws:amz:{REGION}:s3"', f'user = "{ACCESS_KEY}:{SECRET_KEY}"',
                      r'write-out = "%{size_download} %{num_connects}\n"']
            if r:
                lines.append(f'range = "{r[0]}-{r[1]}"')
    path.write_text("\n".join(lines) + "\n")


def read_case(args, hub: Hub, sw: SeaweedFs, expected: dict, prefix: str, lock: Path, runs: Path):
    model_bytes = sum(expected.values())
    keys = sw.list(prefix + "/blobs/")
    if len(keys) != len(expected) or sum(keys.values()) != model_bytes:
        raise SystemExit(f"the tier at {prefix} does not hold the model: {len(keys)} blobs, "
                         f"{sum(keys.values())} bytes (expected {len(expected)}, {model_bytes})")
    base = runs / "read"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    configs = {}
    for name, ranged in [("seq", False), ("par", False), ("par-ranged", True)]:
        configs[name] = base / f"curl-{name}.cfg"
        curl_config(sw, keys, configs[name], ranged)
    files_dir = base / "curl-files"
    configs["files"] = base / "curl-files.cfg"
    curl_config(sw, keys, configs["files"], False, files_dir)
    configs["par-files"] = base / "curl-par-files.cfg"
    curl_config(sw, keys, configs["par-files"], False, files_dir)
    count = {"n": 0}

    def fresh_kmm(extra_env):
        count["n"] += 1
        host = Host(base / f"kmm-{count['n']}", "host-read", hub, {**sw.env(prefix), **extra_env})
        shutil.copy(lock, host.dir / "kari-models.lock")
        return host

    def apply(host):
        before = hub.served()
        seconds, rss, cpu, stdout = timed([str(args.kmm), "apply", "--frozen", "--json"],
                                          host.env, host.dir)
        served = hub.served() - before
        return seconds, rss, cpu, served, json.loads(stdout)["data"]["report"]

    def run_kmm(extra_env=None):
        host = fresh_kmm(extra_env or {})
        seconds, rss, cpu, served, report = apply(host)
        problems = []
        if served:
            problems.append(f"the hub served {served} bytes")
        if report.get("bytes_downloaded"):
            problems.append(f"bytes_downloaded={report['bytes_downloaded']}")
        if report.get("bytes_from_shared_store") != model_bytes:
            problems.append(f"bytes_from_shared_store={report.get('bytes_from_shared_store')}")
        installed = host.installed(expected)
        if installed is not True:
            problems.append(installed)
        if problems:
            raise SystemExit("kmm --frozen from the tier: " + "; ".join(problems))
        return seconds, rss, cpu, host.dir

    converged = {}

    def run_kmm_noop():
        """`kmm apply --frozen` on a host that has everything: the fixed cost of a run."""
        if "host" not in converged:
            converged["host"] = fresh_kmm({})
            apply(converged["host"])
        seconds, rss, cpu, served, report = apply(converged["host"])
        if served or report.get("bytes_from_shared_store") or report.get("bytes_downloaded"):
            raise SystemExit(f"kmm apply on a converged host moved bytes: {report}")
        return seconds, rss, cpu, None

    def run_curl(name, parallel):
        extra = ["--parallel", "--parallel-max", "8"] if parallel else []
        into_files = name in ("files", "par-files")
        if into_files:
            # Fresh files each run, as kmm writes a fresh store.
            shutil.rmtree(files_dir, ignore_errors=True)
            files_dir.mkdir(parents=True, exist_ok=True)
        seconds, rss, cpu, stdout = timed(["curl"] + extra + ["-K", str(configs[name])])
        sizes = [line.split() for line in stdout.splitlines() if line.strip()]
        got = sum(int(s[0]) for s in sizes)
        if got != model_bytes:
            raise SystemExit(f"curl {name} read {got} bytes, expected {model_bytes}")
        connects = sum(int(s[1]) for s in sizes)
        if into_files:
            return seconds, rss, cpu, files_dir
        return seconds, rss, cpu, connects

    # (name, role, run): "kmm" against the "peer" (curl filling files, as a host fills its
    # store, at its best) makes the target's ratio; the "ceiling" (curl to /dev/null) is printed
    # beside it; "info" rows explain.
    tools = [
        ("kmm apply --frozen", "kmm", lambda: run_kmm()),
        ("curl, sequential, into files", "peer", lambda: run_curl("files", False)),
        ("curl --parallel-max 8, into files", "peer", lambda: run_curl("par-files", True)),
        ("curl, sequential, to /dev/null", "ceiling", lambda: run_curl("seq", False)),
        ("curl --parallel-max 8, to /dev/null", "ceiling", lambda: run_curl("par", True)),
        ("curl --parallel-max 8, 8 MiB ranges, /dev/null", "ceiling", lambda: run_curl("par-ranged", True)),
        ("kmm, KMM_DIRECT_IO=0", "info", lambda: run_kmm({"KMM_DIRECT_IO": "0"})),
        ("kmm, KMM_CONNECTIONS_PER_FILE=4", "info", lambda: run_kmm({"KMM_CONNECTIONS_PER_FILE": "4"})),
        ("kmm, nothing to do (fixed cost)", "info", run_kmm_noop),
    ]
    roles = {name: role for name, role, _ in tools}
    can_drop = drop_caches()
    phases = ["cold", "warm"] if can_drop else ["warm"]
    results = {}
    for phase in phases:
        if phase == "warm":
            run_curl("seq", False)  # untimed: brings the objects into the page cache
        rows = {tool: [] for tool, _, _ in tools}
        for round_ in range(args.rounds):
            for tool, _, run in tools:
                if phase == "cold":
                    drop_caches()
                weed_cpu = sw.cpu()
                seconds, rss, cpu, extra = run()
                weed_cpu = sw.cpu() - weed_cpu
                if isinstance(extra, Path):
                    settle(extra, args.settle)
                    note = ""
                elif extra is None:
                    note = ""
                else:
                    note = f", {extra} new connection(s)"
                rows[tool].append((seconds, rss, cpu, weed_cpu))
                log(f"  read {phase} round {round_ + 1}/{args.rounds} {tool}: "
                    f"{model_bytes / seconds / 1e6:7.1f} MB/s, {seconds:.2f} s, peak RSS {rss / MIB:.1f} MiB, "
                    f"CPU {cpu:.2f} s, SeaweedFS CPU {weed_cpu:.2f} s{note}")
        results[phase] = {tool: {"seconds": statistics.median(r[0] for r in runs_),
                                 "rss": max(r[1] for r in runs_),
                                 "cpu": statistics.median(r[2] for r in runs_),
                                 "weed_cpu": statistics.median(r[3] for r in runs_)}
                          for tool, runs_ in rows.items()}
    return results, roles, can_drop, len(keys)


def print_read_case(results, roles, can_drop, n_keys, model_bytes, rounds):
    out(f"\n== one fresh host fills from the filled tier ({n_keys} objects, {model_bytes / MIB:.1f} MiB): "
        f"kmm apply --frozen (lock of a converged host, no hub request) vs curl from SeaweedFS")
    out("the peer: curl in one process with keep-alive writing every object into a file, as a host fills its")
    out("store (best of sequential and --parallel); the ceiling: the same reads to /dev/null. kmm also")
    out("verifies every byte's hash, which neither curl does.")
    if not can_drop:
        out("the page cache could not be dropped (needs root): only the warm phase was measured")
    summary = {}
    for phase, tools in results.items():
        what = ("page cache dropped before every run" if phase == "cold"
                else "objects already in the page cache")
        out(f"-- {phase} ({what}); medians of {rounds} rounds")
        prev = next(iter(tools))
        out(f"  {'tool':<38}{'MB/s':>8}{'s':>8}{'peak RSS MiB':>14}{'CPU s':>7}{'SeaweedFS CPU s':>17}")
        for tool, row in tools.items():
            if roles[tool] == "info" and roles[prev] != "info":
                out("  diagnostics (not in the ratio):")
            prev = tool
            rate = "-" if "nothing to do" in tool else f"{model_bytes / row['seconds'] / 1e6:.1f}"
            out(f"  {tool:<38}{rate:>8}{row['seconds']:>8.2f}"
                f"{row['rss'] / MIB:>14.1f}{row['cpu']:>7.2f}{row['weed_cpu']:>17.2f}")
        kmm_s = tools["kmm apply --frozen"]["seconds"]
        peers = {t: r for t, r in tools.items() if roles[t] == "peer"}
        best = min(peers, key=lambda t: peers[t]["seconds"])
        ratio = peers[best]["seconds"] / kmm_s
        out(f"  kmm / best peer ({best}): {ratio:.2f}x the throughput (target >= 0.80x)")
        ceilings = {t: r for t, r in tools.items() if roles[t] == "ceiling"}
        top = min(ceilings, key=lambda t: ceilings[t]["seconds"])
        ceiling = ceilings[top]["seconds"] / kmm_s
        out(f"  kmm / ceiling ({top}): {ceiling:.2f}x")
        summary[phase] = (ratio, best, ceiling)
    return summary


# ----------------------------------------------------------------------------- main

def write_reference(sw: SeaweedFs, path: Path, prefix: str):
    """One PUT of one LFS file with curl (one stream): what this SeaweedFS takes in. A small
    PUT first, untimed: a fresh SeaweedFS creates its volumes on the first write."""
    def put(source, key):
        started = time.perf_counter()
        proc = subprocess.run(["curl", "-s", "--fail", "-o", "/dev/null", "-T", str(source)]
                              + sw.auth() + ["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", sw.url(key)],
                              capture_output=True, text=True)
        return proc, time.perf_counter() - started
    put(path.parent / "config.json", f"{prefix}/warm-up")
    proc, seconds = put(path, f"{prefix}/put-test")
    if proc.returncode != 0:
        return f"curl PUT failed ({proc.returncode}): {proc.stderr.strip()[-200:]}"
    size = path.stat().st_size
    return f"{size / MIB:.0f} MiB in {seconds:.2f} s = {size / seconds / 1e6:.0f} MB/s"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kmm", required=True, type=Path)
    parser.add_argument("--fake-hub", required=True, type=Path)
    parser.add_argument("--weed", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--lfs-mib", type=int, default=480, help="size of each of the two LFS files")
    parser.add_argument("--small-count", type=int, default=40)
    parser.add_argument("--cap", type=int, default=50_000_000, help="hub bytes/s per connection")
    parser.add_argument("--fleet-rounds", type=int, default=3,
                        help="starts of the whole fleet with and without the tier")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the read case")
    parser.add_argument("--settle", type=float, default=4.0,
                        help="seconds to wait after deleting a run's files (see settle())")
    args = parser.parse_args()
    args.kmm = args.kmm.resolve()
    args.work = args.work.resolve()

    shutil.disk_usage(args.work)
    free = shutil.disk_usage(args.work).free
    need = (2 * args.lfs_mib * MIB) * (args.hosts + 3)
    if free < need:
        raise SystemExit(f"{args.work}: {free / 2**30:.1f} GiB free, the benchmark needs about "
                         f"{need / 2**30:.1f} GiB")
    runs = args.work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    log(f"generating data under {args.work / 'hub'} ...")
    expected = generate(args.work / "hub", args.lfs_mib, args.small_count)
    model_bytes = sum(expected.values())
    version = subprocess.run([str(args.kmm), "--version"], capture_output=True, text=True).stdout.strip()
    weed_version = subprocess.run([str(args.weed), "version"], capture_output=True, text=True).stdout.strip()
    weed_version = weed_version.splitlines()[0] if weed_version else "?"

    log("starting SeaweedFS ...")
    sw = SeaweedFs(args.weed, args.work / "seaweedfs")
    hub = None
    try:
        hub = Hub(args.fake_hub, args.work / "hub", args.work / "stats-hub", args.cap)
        run_id = time.strftime("%Y%m%d-%H%M%S")
        out(f"kmm fleet benchmark: {version}; {os.cpu_count()} CPUs, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; everything on loopback")
        out(f"model {MODEL}: {len(expected)} files, {model_bytes / MIB:.1f} MiB = {model_bytes} bytes "
            f"(2 LFS files of {args.lfs_mib} MiB, config.json, {args.small_count} small regular files of 2-8 KiB)")
        out(f"fake hub (release) capped at {args.cap / 1e6:.0f} MB/s per connection; "
            f"shared tier: one local SeaweedFS `weed server` ({weed_version}), bucket {BUCKET}")
        out(f"{args.hosts} hosts, each its own workdir, manifest, HF_HOME and KMM_NODE_NAME, started together "
            f"with `kmm apply --json`")
        out(f"SeaweedFS write reference (curl PUT of one LFS file, one stream): "
            f"{write_reference(sw, args.work / 'hub' / MODEL / 'model-00001-of-00002.safetensors', f'ref-{run_id}')}")

        tier_rows, plain_rows = [], []
        for i in range(args.fleet_rounds):
            log(f"fleet round {i + 1}/{args.fleet_rounds}: {args.hosts} hosts with the tier ...")
            row = fleet_round(args, hub, sw, expected, f"fleet-{run_id}-{i + 1}", f"tier-{i + 1}", runs)
            tier_rows.append(row)
            log(f"  hub {row['ratio']:.3f}x, {row['wall']:.2f} s, {row['converged']} converged")
            if i == 0:
                tier_lock, tier_prefix = row.get("lock"), row["prefix"]
            settle(row["base"], args.settle)
            log(f"fleet round {i + 1}/{args.fleet_rounds}: {args.hosts} hosts without the tier ...")
            row = fleet_round(args, hub, sw, expected, None, f"plain-{i + 1}", runs)
            plain_rows.append(row)
            log(f"  hub {row['ratio']:.3f}x, {row['wall']:.2f} s, {row['converged']} converged")
            settle(row["base"], args.settle)
        tier = print_fleet_rounds(f"{args.hosts} hosts started together, WITH the shared tier (fresh prefix each round)",
                                  tier_rows, model_bytes, True)
        out("target: hub bytes / model bytes <= 1.05")
        plain = print_fleet_rounds(f"{args.hosts} hosts started together, WITHOUT the tier (fresh workdirs)",
                                   plain_rows, model_bytes, False)
        out(f"expected: hub bytes / model bytes ~ {args.hosts} (every host takes every file from the hub)")

        if not tier_lock:
            raise SystemExit("no host converged with the tier: nothing to read the tier with")
        log(f"read case: {args.rounds} rounds ...")
        results, roles, can_drop, n_keys = read_case(args, hub, sw, expected, tier_prefix, tier_lock, runs)
        reads = print_read_case(results, roles, can_drop, n_keys, model_bytes, args.rounds)

        out("\n== summary")
        out(f"  {'measure':<58}{'value':>12}  {'target':<12}{'met':<6}")

        def line(measure, value, target="", met=""):
            out(f"  {measure:<58}{value:>12}  {target:<12}{met:<6}")

        def yes(ok):
            return "yes" if ok else "NO"

        line(f"hub bytes / model bytes, {args.hosts} hosts with the tier", f"{tier['ratio']:.3f}x", "<= 1.05",
             yes(tier["ratio"] <= 1.05))
        line(f"hub bytes / model bytes, {args.hosts} hosts without the tier", f"{plain['ratio']:.3f}x",
             f"~{args.hosts} (exp.)", yes(abs(plain["ratio"] - args.hosts) / args.hosts < 0.05))
        line(f"all {args.hosts} hosts converged, with / without the tier",
             f"{'yes' if tier['converged'] else 'NO'} / {'yes' if plain['converged'] else 'NO'}", "all",
             yes(tier["converged"] and plain["converged"]))
        line(f"wall time for all {args.hosts} hosts, with the tier", f"{tier['wall']:.2f} s")
        line(f"wall time for all {args.hosts} hosts, without the tier", f"{plain['wall']:.2f} s")
        line("wall time with / without the tier", f"{tier['wall'] / plain['wall']:.2f}x")
        line("peak RSS of a host, max (with / without the tier)",
             f"{tier['rss_max'] / MIB:.0f}/{plain['rss_max'] / MIB:.0f} MiB")
        for phase, (ratio, best, ceiling) in reads.items():
            line(f"one host from the filled tier, {phase}: kmm / curl filling files", f"{ratio:.2f}x",
                 ">= 0.80x", yes(ratio >= 0.8))
            line(f"  {phase}: kmm / ceiling (curl to /dev/null)", f"{ceiling:.2f}x")
        if not can_drop:
            line("(cold page cache not measured: drop_caches needs root)", "-")
    finally:
        if hub:
            hub.stop()
        sw.stop()


if __name__ == "__main__":
    main()
