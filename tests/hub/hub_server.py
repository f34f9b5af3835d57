"""A small Hub for tests: the part of the Hugging Face Hub HTTP API that huggingface_hub's client calls to create a
repo, push a folder (preupload, LFS batch / upload / verify, NDJSON commit) and pull it (repo info, tree, resolve).

Standard library only (http.server + threading). Every repo is a bare git repository under
`<root>/models/<namespace>/<name>` (the layout `olah`'s `mirrors-path` serves), every push one git commit; LFS uploads
land in `<root>/lfs/<sha256>` and are committed as the plain file, so git holds the real bytes. Not a security
boundary: no auth, one writer lock; bound to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
LFS_EXTENSIONS = (".safetensors", ".bin", ".pt", ".png", ".jpg", ".npy")  # stand-in for the Hub's .gitattributes
ZERO = "0" * 40
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test-hub",
    "GIT_AUTHOR_EMAIL": "hub@localhost",
    "GIT_COMMITTER_NAME": "test-hub",
    "GIT_COMMITTER_EMAIL": "hub@localhost",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
}


class HubError(Exception):
    """An error answer: status, X-Error-Code (what huggingface_hub maps to its exception types) and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class GitStore:
    """Bare git repos as Hub repos: refs are branches/tags, every commit call one git commit."""

    def __init__(self, root: str):
        self.root = root
        self.lfs_dir = os.path.join(root, "lfs")
        os.makedirs(os.path.join(root, "models"), exist_ok=True)
        os.makedirs(self.lfs_dir, exist_ok=True)
        self.lock = threading.Lock()

    def git_dir(self, repo_id: str) -> str:
        return os.path.join(self.root, "models", *repo_id.split("/"))

    def git(self, repo_id: str, *args: str, input: bytes | None = None, env: dict | None = None) -> str:
        result = subprocess.run(
            ["git", "--git-dir", self.git_dir(repo_id), *args],
            input=input,
            capture_output=True,
            env={**os.environ, **GIT_ENV, **(env or {})},
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout.decode()

    def exists(self, repo_id: str) -> bool:
        return os.path.isfile(os.path.join(self.git_dir(repo_id), "HEAD"))

    def create(self, repo_id: str) -> None:
        """A new repo with the Hub's first commit (a .gitattributes) on `main`."""
        os.makedirs(self.git_dir(repo_id))
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", self.git_dir(repo_id)], check=True, env=GIT_ENV)
        self.commit(repo_id, "main", "initial commit", [("add", ".gitattributes", b"*.safetensors filter=lfs\n")])

    def resolve(self, repo_id: str, revision: str) -> str:
        """Branch, tag or commit hash → commit hash; HubError 404 RepoNotFound / RevisionNotFound."""
        if not self.exists(repo_id):
            raise HubError(404, "RepoNotFound", f"Repository {repo_id} not found")
        revision = unquote(revision)
        if revision.startswith("-") or not re.fullmatch(r"[\w./-]+", revision):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        try:
            return self.git(repo_id, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").strip()
        except RuntimeError:
            raise HubError(404, "RevisionNotFound", f"Revision {revision} not found in {repo_id}") from None

    def files(self, repo_id: str, commit: str) -> dict[str, tuple[str, int]]:
        """`{path: (blob sha, size)}` of every file at `commit`."""
        out = self.git(repo_id, "ls-tree", "-r", "-l", "-z", commit)
        entries = {}
        for line in filter(None, out.split("\0")):
            meta, path = line.split("\t", 1)
            _, kind, sha, size = meta.split()
            if kind == "blob":
                entries[path] = (sha, int(size))
        return entries

    def read(self, repo_id: str, blob: str) -> bytes:
        result = subprocess.run(
            ["git", "--git-dir", self.git_dir(repo_id), "cat-file", "blob", blob], capture_output=True, check=True
        )
        return result.stdout

    def commit(self, repo_id: str, branch: str, message: str, operations: list[tuple], parent_commit=None) -> str:
        """Apply `[("add", path, bytes) | ("delete", path) | ("delete_folder", path)]` on `branch` as one commit."""
        with self.lock, tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index")}
            try:
                parent = self.git(repo_id, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}").strip()
            except RuntimeError:
                parent = None
            if parent_commit is not None and parent_commit != parent:
                raise HubError(412, None, f"parentCommit {parent_commit} is not the head of {branch} ({parent})")
            self.git(repo_id, "read-tree", *([parent] if parent else ["--empty"]), env=env)
            for op in operations:
                if op[0] == "add":
                    blob = self.git(repo_id, "hash-object", "-w", "--stdin", input=op[2]).strip()
                    self.git(repo_id, "update-index", "--add", "--cacheinfo", f"100644,{blob},{op[1]}", env=env)
                elif op[0] == "delete":
                    self.git(repo_id, "update-index", "--force-remove", "--", op[1], env=env)
                elif op[0] == "delete_folder":
                    listed = self.git(repo_id, "ls-files", "-z", "--", op[1].rstrip("/") + "/", env=env)
                    for path in filter(None, listed.split("\0")):
                        self.git(repo_id, "update-index", "--force-remove", "--", path, env=env)
                else:
                    raise ValueError(f"unknown operation {op[0]!r}")
            tree = self.git(repo_id, "write-tree", env=env).strip()
            commit = self.git(repo_id, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message).strip()
            self.git(repo_id, "update-ref", f"refs/heads/{branch}", commit, parent or ZERO)
            return commit


class HubHandler(BaseHTTPRequestHandler):
    server: TestHubServer
    protocol_version = "HTTP/1.1"

    # ----- plumbing ---------------------------------------------------------------------------------------------
    def log_message(self, format, *args):  # keep pytest's output clean
        self.server.requests.append(f"{self.command} {self.path}")

    def body(self) -> bytes:
        return self._body

    def _read_body(self) -> bytes:
        """Read the whole request body first: an error answered before reading it would desync the keep-alive."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (b"" if payload is None else json.dumps(payload).encode())
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if raw is None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def dispatch(self) -> None:
        self._body = self._read_body()
        path = urlsplit(self.path).path
        for method, pattern, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and self.command in method:
                try:
                    handler(self, **match.groupdict())
                except HubError as err:
                    headers = {"X-Error-Message": err.message, **({"X-Error-Code": err.code} if err.code else {})}
                    self.reply(err.status, {"error": err.message}, headers)
                return
        self.reply(404, {"error": f"no route for {self.command} {path}"})

    do_GET = do_HEAD = do_POST = do_PUT = dispatch

    @property
    def store(self) -> GitStore:
        return self.server.store

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def query(self) -> dict:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

    # ----- repos --------------------------------------------------------------------------------------------------
    def create_repo(self):
        payload = json.loads(self.body() or b"{}")
        if payload.get("type", "model") != "model":
            raise HubError(400, None, "only model repos")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if not re.fullmatch(REPO, repo_id):
            raise HubError(400, None, f"invalid repo name {repo_id}")
        if self.store.exists(repo_id):  # the Hub's 409 carries the url too: create_repo(exist_ok=True) reads it
            self.reply(409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"})
            return
        self.store.create(repo_id)
        self.reply(200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id})

    def repo_info(self, repo, revision="main"):
        commit = self.store.resolve(repo, revision)
        files = self.store.files(repo, commit)
        self.reply(
            200,
            {
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "id": repo,
                "modelId": repo,
                "author": repo.split("/")[0],
                "sha": commit,
                "private": False,
                "disabled": False,
                "gated": False,
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "library_name": "diffusers",
                "siblings": [{"rfilename": path} for path in sorted(files)],
            },
        )

    def tree(self, repo, revision, path=""):
        commit = self.store.resolve(repo, revision)
        prefix = unquote(path or "").strip("/")
        recursive = self.query().get("recursive", "false").lower() == "true"
        entries, folders = [], set()
        for file, (blob, size) in sorted(self.store.files(repo, commit).items()):
            if prefix and not file.startswith(prefix + "/"):
                continue
            rest = file[len(prefix) + 1 :] if prefix else file
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(([prefix] if prefix else []) + parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "oid": ZERO, "size": 0, "path": folder})
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "oid": blob, "size": size, "path": file})
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist at {revision}")
        self.reply(200, entries)

    def whoami(self):
        self.reply(200, {"type": "user", "name": "user", "fullname": "Test User", "orgs": [], "auth": {}})

    def validate_yaml(self):
        self.body()
        self.reply(200, {"errors": [], "warnings": []})

    # ----- push ---------------------------------------------------------------------------------------------------
    def preupload(self, repo, revision):
        self.store.resolve(repo, revision)
        files = json.loads(self.body())["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(LFS_EXTENSIONS) and f["size"] > 0 else "regular",
                "shouldIgnore": False,
                "oid": None,
            }
            for f in files
        ]
        self.reply(200, {"files": modes, "commitOid": self.store.resolve(repo, revision)})

    def lfs_batch(self, repo):
        if not self.store.exists(repo):
            raise HubError(404, "RepoNotFound", f"Repository {repo} not found")
        request = json.loads(self.body())
        objects = []
        for obj in request["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not os.path.isfile(os.path.join(self.store.lfs_dir, obj["oid"])):
                entry["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"},
                    "verify": {"href": f"{self.endpoint}/{repo}.git/info/lfs/objects/verify"},
                }
            objects.append(entry)
        self.reply(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, oid):
        data = self.body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, None, f"content does not hash to {oid}")
        with open(os.path.join(self.store.lfs_dir, oid), "wb") as f:
            f.write(data)
        self.reply(200, {})

    def lfs_verify(self, repo):
        obj = json.loads(self.body())
        path = os.path.join(self.store.lfs_dir, obj["oid"])
        if not os.path.isfile(path) or os.path.getsize(path) != obj["size"]:
            raise HubError(404, None, f"object {obj['oid']} not uploaded")
        self.reply(200, {"success": True})

    def commit(self, repo, revision):
        if self.query().get("create_pr"):
            raise HubError(400, None, "pull requests are not supported by the test hub")
        self.store.resolve(repo, revision)
        header, operations = {}, []
        for line in filter(None, self.body().split(b"\n")):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                operations.append(("add", value["path"], base64.b64decode(value["content"])))
            elif key == "lfsFile":
                blob = os.path.join(self.store.lfs_dir, value["oid"])
                if not os.path.isfile(blob):
                    raise HubError(422, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                with open(blob, "rb") as f:
                    operations.append(("add", value["path"], f.read()))
            elif key == "deletedFile":
                operations.append(("delete", value["path"]))
            elif key == "deletedFolder":
                operations.append(("delete_folder", value["path"]))
            else:
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        message = "\n\n".join(filter(None, [header.get("summary"), header.get("description")])) or "commit"
        commit = self.store.commit(repo, unquote(revision), message, operations, header.get("parentCommit"))
        self.reply(
            200,
            {
                "success": True,
                "commitOid": commit,
                "commitUrl": f"{self.endpoint}/{repo}/commit/{commit}",
                "commitMessage": header.get("summary"),
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )

    # ----- pull ---------------------------------------------------------------------------------------------------
    def resolve_file(self, repo, revision, path):
        commit = self.store.resolve(repo, revision)
        path = unquote(path)
        entry = self.store.files(repo, commit).get(path)
        headers = {"X-Repo-Commit": commit}
        if entry is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at revision {unquote(revision)} of {repo}")
        blob, size = entry
        data = b"" if self.command == "HEAD" else self.store.read(repo, blob)
        headers.update({"ETag": f'"{blob}"', "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET":
            start = int(re.fullmatch(r"bytes=(\d+)-\d*", range_header).group(1))
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            self.reply(206, headers=headers, raw=data[start:])
            return
        self.send_response(200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(data)


ROUTES = [
    ({"POST"}, r"/api/repos/create", HubHandler.create_repo),
    ({"GET"}, r"/api/whoami-v2", HubHandler.whoami),
    ({"POST"}, r"/api/validate-yaml", HubHandler.validate_yaml),
    ({"GET"}, rf"/api/models/{REPO}", HubHandler.repo_info),
    ({"GET"}, rf"/api/models/{REPO}/revision/(?P<revision>[^/]+)", HubHandler.repo_info),
    ({"GET"}, rf"/api/models/{REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", HubHandler.tree),
    ({"POST"}, rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", HubHandler.preupload),
    ({"POST"}, rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", HubHandler.commit),
    ({"POST"}, rf"/{REPO}\.git/info/lfs/objects/batch", HubHandler.lfs_batch),
    ({"POST"}, rf"/{REPO}\.git/info/lfs/objects/verify", HubHandler.lfs_verify),
    ({"PUT"}, r"/lfs-upload/(?P<oid>[0-9a-f]{64})", HubHandler.lfs_upload),
    ({"GET", "HEAD"}, rf"/{REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)", HubHandler.resolve_file),
]


class TestHubServer(ThreadingHTTPServer):
    """`with TestHubServer(root) as hub:` serves on 127.0.0.1 at a free port (`hub.endpoint`) from a thread."""

    __test__ = False  # not a pytest test class
    daemon_threads = True

    def __init__(self, root: str, port: int = 0):
        super().__init__(("127.0.0.1", port), HubHandler)
        self.store = GitStore(root)
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self.requests: list[str] = []
        self._thread: threading.Thread | None = None

    def start(self) -> TestHubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> TestHubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_args(argv: list[str] | None = None):
    import argparse

    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        description="A local Hub on 127.0.0.1 for trying pushes and pulls without an account (docs/hub.md). Point "
        "huggingface_hub at it with HF_ENDPOINT=http://127.0.0.1:PORT HF_HUB_DISABLE_XET=1.",
    )
    parser.add_argument("--root", required=True, help="folder for the repos (bare git repositories) and LFS files")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0: any free one)")
    return parser.parse_args(argv)


if __name__ == "__main__":  # python -m tests.hub.hub_server --root DIR --port N (from the repository root)
    args = parse_args()
    server = TestHubServer(os.path.abspath(args.root), args.port)
    print(f"local hub: {server.endpoint} (repos under {os.path.abspath(args.root)}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
