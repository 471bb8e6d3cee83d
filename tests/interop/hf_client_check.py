#!/usr/bin/env python3
"""Runs the REAL huggingface_hub client against a fake hub and reports what it saw.

Usage:
  hf_client_check.py --endpoint http://127.0.0.1:PORT --out DIR [--plan plan.json]
  hf_client_check.py --endpoint URL --out DIR --snapshot REPO --revision REV --local-dir DEST

The first form runs every check (snapshot to a cache and to a local dir, hf_hub_download,
list_models with pagination, model_info(files_metadata=True), gated/private repos with and
without token, error mapping, resume after a dropped connection) and writes DIR/report.json:
  {"client": {...}, "checks": [{"name", "passed", "detail"}], "files": [{"check", "repo",
   "path", "size", "sha256", "location"}], "passed": bool}
It exits 1 if any check failed. The plan (JSON) says which repos and files to use; the defaults
match the fixtures in examples/hub. Sections absent from the plan are not run.

The second form downloads one repo with snapshot_download(local_dir=DEST) and reports its files.

Only the standard library and huggingface_hub are used. Every connection to anything but the
loopback interface is refused inside this process, so the check can never reach the real Hub.
"""

import argparse
import hashlib
import json
import os
import socket
import sys
import tempfile
import traceback
from pathlib import Path
from urllib.parse import urlparse

LOOPBACK = {"127.0.0.1", "::1", "localhost"}

DEFAULT_PLAN = {
    "snapshot_cache": [
        "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
        "acme/tiny-bert",
        "distilbert-base-uncased",
        "gpt2",
    ],
    "snapshot_local_dir": ["acme/tiny-bert"],
    "single_file": {"repo": "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF", "filename": "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf"},
    "tag_file": {"repo": "acme/tiny-bert", "filename": "tokenizer/vocab.txt", "revision": "v1.0"},
    "list_models": {"limit": 4, "expect_ids": None, "author": "acme"},
    "model_info": {"repo": "acme/tiny-bert", "license": "apache-2.0"},
    "gated": {"repo": "acme/gated-model", "filename": "config.json", "token": "hf_fixture_token"},
    "errors": {"repo": "acme/tiny-bert", "missing_file": "does-not-exist.txt", "missing_revision": "no-such-branch"},
    "private": None,
    "resume": None,
}


def confine_to_loopback() -> None:
    """Refuse any connection that would leave this machine's loopback interface."""
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            raise OSError(f"interop check: refusing to resolve non-loopback host {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded_connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise OSError(f"interop check: refusing to connect to {address!r}")
        return real_connect(self, address)

    socket.getaddrinfo = guarded_getaddrinfo
    socket.socket.connect = guarded_connect


def configure_environment(endpoint: str, hf_home: Path) -> None:
    """Must run before huggingface_hub is imported: it reads its settings at import time."""
    for name in list(os.environ):
        if name.lower() in {"http_proxy", "https_proxy", "all_proxy"} or name.startswith(("HF_", "HUGGING_FACE_")):
            del os.environ[name]
    os.environ.update(
        {
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_ETAG_TIMEOUT": "60",
            "HF_HUB_DOWNLOAD_TIMEOUT": "60",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Checker:
    def __init__(self, out: Path):
        self.out = out
        self.checks = []
        self.files = []

    def run(self, name: str, function) -> None:
        try:
            detail = function()
            self.checks.append({"name": name, "passed": True, "detail": detail or "ok"})
            print(f"PASS {name}", file=sys.stderr)
        except Exception as error:  # a failed check must not stop the others
            self.checks.append(
                {"name": name, "passed": False, "detail": f"{type(error).__name__}: {error}",
                 "traceback": traceback.format_exc()}
            )
            print(f"FAIL {name}: {type(error).__name__}: {error}", file=sys.stderr)

    def record_tree(self, check: str, repo: str, root: Path) -> dict:
        """Records every file under `root` (ignoring the client's `.cache` folder): path -> bytes hash."""
        found = {}
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(".cache/") or not path.is_file():
                continue
            data = path.read_bytes()
            found[relative] = data
            self.record_file(check, repo, relative, data, path)
        return found

    def record_file(self, check: str, repo: str, relative: str, data: bytes, location: Path) -> None:
        self.files.append(
            {"check": check, "repo": repo, "path": relative, "size": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "location": str(location)}
        )


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def expect_raises(exception_type, function, what: str):
    try:
        function()
    except exception_type as error:
        return error
    except Exception as error:
        raise AssertionError(f"{what}: expected {exception_type.__name__}, got {type(error).__name__}: {error}")
    raise AssertionError(f"{what}: expected {exception_type.__name__}, but it succeeded")


def verify_against_metadata(api, repo: str, revision: str, files: dict, token=None) -> str:
    """Every sibling downloaded, with the size and hash the hub's metadata announces."""
    info = api.model_info(repo, revision=revision, files_metadata=True, token=token)
    siblings = {s.rfilename: s for s in info.siblings}
    expect(set(files) == set(siblings), f"downloaded {sorted(files)} but the hub lists {sorted(siblings)}")
    for path, data in files.items():
        sibling = siblings[path]
        expect(sibling.size == len(data), f"{path}: size {len(data)} != metadata {sibling.size}")
        if sibling.lfs is not None:
            expect(sibling.lfs.sha256 == hashlib.sha256(data).hexdigest(), f"{path}: sha256 differs from lfs.sha256")
            expect(sibling.lfs.size == len(data), f"{path}: lfs.size differs")
        else:
            expect(sibling.blob_id == git_blob_sha1(data), f"{path}: git blob sha1 differs from blobId")
    return info.sha


def run_checks(endpoint: str, out: Path, plan: dict, checker: Checker) -> None:
    import huggingface_hub
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=endpoint)
    cache = out / "cache"

    def snapshot_to_cache(repo: str):
        def check():
            folder = Path(snapshot_download(repo, cache_dir=cache))
            commit = folder.name
            expect(folder.parent.name == "snapshots", f"unexpected snapshot folder {folder}")
            repo_folder = folder.parent.parent
            expect(repo_folder.name == "models--" + repo.replace("/", "--"), f"cache folder {repo_folder.name}")
            expect((repo_folder / "refs" / "main").read_text() == commit, "refs/main does not hold the snapshot commit")
            files = checker.record_tree("snapshot_cache", repo, folder)
            expect(verify_against_metadata(api, repo, "main", files) == commit, "model_info sha != snapshot commit")
            # Blobs are named by the etag the hub announced: sha256 for LFS, git sha1 otherwise.
            for path, data in files.items():
                blob = (folder / path).resolve()
                expect(blob.parent.name == "blobs", f"{path} is not a symlink into blobs/")
                expect(blob.name in {hashlib.sha256(data).hexdigest(), git_blob_sha1(data)}, f"{path}: blob name {blob.name}")
            return f"{len(files)} files at {commit}"
        return check

    for repo in plan.get("snapshot_cache") or []:
        checker.run(f"snapshot_cache:{repo}", snapshot_to_cache(repo))

    def snapshot_to_local_dir(repo: str):
        def check():
            local_dir = out / "local_dir" / repo.replace("/", "--")
            returned = Path(snapshot_download(repo, local_dir=local_dir, cache_dir=out / "local_dir_cache"))
            expect(returned.resolve() == local_dir.resolve(), f"returned {returned}, not the local dir")
            files = checker.record_tree("snapshot_local_dir", repo, local_dir)
            commit = verify_against_metadata(api, repo, "main", files)
            for path in files:
                expect(not (local_dir / path).is_symlink(), f"{path} is a symlink in a local_dir download")
                metadata = local_dir / ".cache" / "huggingface" / "download" / f"{path}.metadata"
                expect(metadata.read_text().splitlines()[0] == commit, f"{path}.metadata does not name commit {commit}")
            return f"{len(files)} files"
        return check

    for repo in plan.get("snapshot_local_dir") or []:
        checker.run(f"snapshot_local_dir:{repo}", snapshot_to_local_dir(repo))

    single = plan.get("single_file")
    if single:
        def single_file():
            path = Path(hf_hub_download(single["repo"], single["filename"], cache_dir=out / "single_cache"))
            data = path.read_bytes()
            checker.record_file("hf_hub_download", single["repo"], single["filename"], data, path)
            info = api.model_info(single["repo"], files_metadata=True)
            sibling = next(s for s in info.siblings if s.rfilename == single["filename"])
            expected = sibling.lfs.sha256 if sibling.lfs else None
            expect(expected is None or expected == hashlib.sha256(data).hexdigest(), "sha256 differs from lfs.sha256")
            expect(path.parent.name == info.sha, f"downloaded into snapshot {path.parent.name}, hub says {info.sha}")
            return f"{len(data)} bytes"
        checker.run("hf_hub_download", single_file)

    tagged = plan.get("tag_file")
    if tagged:
        def tag_file():
            path = Path(hf_hub_download(tagged["repo"], tagged["filename"], revision=tagged["revision"],
                                        cache_dir=out / "tag_cache"))
            data = path.read_bytes()
            checker.record_file("hf_hub_download_tag", tagged["repo"], tagged["filename"], data, path)
            info = api.model_info(tagged["repo"], revision=tagged["revision"])
            repo_folder = out / "tag_cache" / ("models--" + tagged["repo"].replace("/", "--"))
            ref = (repo_folder / "refs" / tagged["revision"]).read_text()
            expect(ref == info.sha, f"refs/{tagged['revision']} = {ref}, hub says {info.sha}")
            return f"{tagged['revision']} -> {ref}"
        checker.run("hf_hub_download_tag", tag_file)

    listing = plan.get("list_models")
    if listing:
        def list_models():
            everything = [m.id for m in api.list_models()]
            expect(len(everything) == len(set(everything)), f"duplicates across pages: {everything}")
            if listing.get("expect_ids") is not None:
                expect(sorted(everything) == sorted(listing["expect_ids"]), f"listed {sorted(everything)}")
            limit = listing["limit"]
            limited = [m.id for m in api.list_models(limit=limit)]
            expect(len(limited) == min(limit, len(everything)), f"limit={limit} gave {len(limited)} models")
            detail = f"{len(everything)} models; limit={limit} gave {len(limited)}"
            if listing.get("author"):
                author = listing["author"]
                by_author = [m.id for m in api.list_models(author=author)]
                expect(by_author and all(i.startswith(author + "/") for i in by_author), f"author filter: {by_author}")
                expect(sorted(by_author) == sorted(i for i in everything if i.startswith(author + "/")), "author subset")
                detail += f"; author={author} gave {len(by_author)}"
            full = list(api.list_models(full=True, limit=limit))
            expect(all(m.sha and len(m.sha) == 40 and m.siblings is not None for m in full), "full=True lacks sha/siblings")
            return detail
        checker.run("list_models", list_models)

    info_plan = plan.get("model_info")
    if info_plan:
        def model_info():
            info = api.model_info(info_plan["repo"], files_metadata=True)
            expect(len(info.sha or "") == 40, f"sha {info.sha!r}")
            expect(info.siblings and all(s.size is not None and s.blob_id for s in info.siblings), "siblings lack size/blobId")
            lfs = [s.rfilename for s in info.siblings if s.lfs is not None]
            expect(lfs, "no LFS sibling")
            expect(all(len(s.lfs.sha256) == 64 and s.lfs.pointer_size > 100 for s in info.siblings if s.lfs), "lfs info")
            if info_plan.get("license"):
                expect(info.card_data is not None and info.card_data.get("license") == info_plan["license"],
                       f"license {info.card_data}")
            expect(info.gated is False, f"gated {info.gated!r}")
            return f"{len(info.siblings)} siblings, LFS: {lfs}"
        checker.run("model_info_files_metadata", model_info)

    gated = plan.get("gated")
    if gated:
        def gated_without_token():
            info = api.model_info(gated["repo"], token=False)
            expect(info.gated in ("manual", "auto"), f"gated {info.gated!r}")
            expect_raises(GatedRepoError, lambda: hf_hub_download(gated["repo"], gated["filename"], token=False,
                                                                 cache_dir=out / "gated_anon"), "hf_hub_download")
            expect_raises(GatedRepoError, lambda: snapshot_download(gated["repo"], token=False,
                                                                   cache_dir=out / "gated_anon"), "snapshot_download")
            error = expect_raises(GatedRepoError, lambda: hf_hub_download(
                gated["repo"], gated["filename"], token="hf_not_approved", cache_dir=out / "gated_other"),
                "hf_hub_download with an unapproved token")
            expect(error.response is not None and error.response.status_code == 403, "unapproved token: not 403")
            return "GatedRepoError (401 anonymous, 403 unapproved)"
        checker.run("gated_without_token", gated_without_token)

        def gated_with_token():
            folder = Path(snapshot_download(gated["repo"], token=gated["token"], cache_dir=out / "gated_cache"))
            files = checker.record_tree("gated_with_token", gated["repo"], folder)
            verify_against_metadata(api, gated["repo"], "main", files, token=gated["token"])
            return f"{len(files)} files"
        checker.run("gated_with_token", gated_with_token)

    private = plan.get("private")
    if private:
        def private_repo():
            expect_raises(RepositoryNotFoundError, lambda: api.model_info(private["repo"], token=False), "anonymous info")
            expect_raises(RepositoryNotFoundError, lambda: api.model_info(private["repo"], token="hf_someone_else"),
                          "info with another token")
            path = Path(hf_hub_download(private["repo"], private["filename"], token=private["token"],
                                        cache_dir=out / "private_cache"))
            checker.record_file("private_repo", private["repo"], private["filename"], path.read_bytes(), path)
            return "RepositoryNotFoundError without access, download with the token"
        checker.run("private_repo", private_repo)

    errors = plan.get("errors")
    if errors:
        def error_mapping():
            repo = errors["repo"]
            error_cache = out / "errors_cache"
            expect_raises(RevisionNotFoundError, lambda: hf_hub_download(
                repo, "config.json", revision=errors["missing_revision"], cache_dir=error_cache), "unknown revision")
            expect_raises(RemoteEntryNotFoundError, lambda: hf_hub_download(
                repo, errors["missing_file"], cache_dir=error_cache), "unknown file")
            commit = api.model_info(repo).sha
            marker = error_cache / ("models--" + repo.replace("/", "--")) / ".no_exist" / commit / errors["missing_file"]
            expect(marker.exists(), f"no .no_exist marker at {marker} (X-Repo-Commit missing on 404?)")
            expect_raises(RepositoryNotFoundError, lambda: api.model_info("nobody/nothing"), "unknown repo")
            bad = expect_raises(HfHubHTTPError, lambda: api.model_info(repo, token="not-a-valid-token"), "invalid token")
            expect(not isinstance(bad, RepositoryNotFoundError), "invalid token mapped to RepositoryNotFoundError")
            expect(bad.response.status_code == 401, f"invalid token gave {bad.response.status_code}")
            return "RevisionNotFound, EntryNotFound + .no_exist, RepoNotFound, invalid credentials"
        checker.run("error_mapping", error_mapping)

    resume = plan.get("resume")
    if resume:
        def resume_after_drop():
            path = Path(hf_hub_download(resume["repo"], resume["filename"], cache_dir=out / "resume_cache"))
            data = path.read_bytes()
            checker.record_file("resume_after_drop", resume["repo"], resume["filename"], data, path)
            info = api.model_info(resume["repo"], files_metadata=True)
            sibling = next(s for s in info.siblings if s.rfilename == resume["filename"])
            expect(sibling.lfs is not None and sibling.lfs.sha256 == hashlib.sha256(data).hexdigest(),
                   "resumed file has the wrong bytes")
            return f"{len(data)} bytes, sha256 ok"
        checker.run("resume_after_drop", resume_after_drop)

    checker.client = {"huggingface_hub": huggingface_hub.__version__, "python": sys.version.split()[0]}


def run_snapshot(endpoint: str, repo: str, revision: str, local_dir: Path, out: Path, checker: Checker) -> None:
    import huggingface_hub
    from huggingface_hub import snapshot_download

    def snapshot():
        snapshot_download(repo, revision=revision, local_dir=local_dir, cache_dir=out / "cache")
        files = checker.record_tree("snapshot", repo, local_dir)
        return f"{len(files)} files"

    checker.run(f"snapshot:{repo}@{revision}", snapshot)
    checker.client = {"huggingface_hub": huggingface_hub.__version__, "python": sys.version.split()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", required=True, help="fake hub URL, must be on 127.0.0.1")
    parser.add_argument("--out", required=True, type=Path, help="work folder; the report is OUT/report.json")
    parser.add_argument("--plan", type=Path, help="JSON plan overriding the default sections")
    parser.add_argument("--snapshot", metavar="REPO", help="only snapshot REPO into --local-dir")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--local-dir", type=Path)
    args = parser.parse_args()

    host = urlparse(args.endpoint).hostname
    if host not in LOOPBACK:
        parser.error(f"--endpoint must be a loopback URL, not {args.endpoint}")
    if args.snapshot and not args.local_dir:
        parser.error("--snapshot needs --local-dir")

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out.resolve()
    hf_home = Path(tempfile.mkdtemp(prefix="hf_home_", dir=out))
    configure_environment(args.endpoint.rstrip("/"), hf_home)
    confine_to_loopback()

    checker = Checker(out)
    checker.client = {}
    plan = dict(DEFAULT_PLAN)
    if args.plan:
        plan.update(json.loads(args.plan.read_text()))
    try:
        if args.snapshot:
            run_snapshot(args.endpoint.rstrip("/"), args.snapshot, args.revision, args.local_dir.resolve(), out, checker)
        else:
            run_checks(args.endpoint.rstrip("/"), out, plan, checker)
    except Exception as error:  # e.g. the client cannot be imported: still write a report
        checker.checks.append({"name": "setup", "passed": False, "detail": f"{type(error).__name__}: {error}",
                               "traceback": traceback.format_exc()})

    passed = bool(checker.checks) and all(check["passed"] for check in checker.checks)
    report = {"endpoint": args.endpoint, "client": checker.client, "checks": checker.checks,
              "files": checker.files, "passed": passed}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"{sum(c['passed'] for c in checker.checks)}/{len(checker.checks)} checks passed; report: {out / 'report.json'}",
          file=sys.stderr)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
