#!/usr/bin/env python3
"""ring/standins/github.py: a stand-in for the few GitHub REST endpoints T3.2 uses.

One repository, 0xHoneyJar/loa-dixie, with branches `main` and `feature/dixie-mvp` and the
Dependabot PRs of the sprint plan (#52, #53, #55 to merge; #54, which must not be merged), all
open into `main` with green check runs on their heads. Commits are a small model of git: each
has parents and a flat tree ("path:key" -> value), its SHA is sha1 of its content, merges are
three-way on those keys (a key both sides changed differently is a conflict).

Served on 127.0.0.1:PORT (default 18700; `--port 0` picks one and prints `port=N` first):
  GET  /repos/{o}/{r}/pulls/{n}                      the PR (GitHub's fields that T3.2 reads)
  PUT  /repos/{o}/{r}/pulls/{n}/merge                200 merged / 409 head moved / 405 not mergeable
  GET  /repos/{o}/{r}/commits/{ref}/check-runs       {total_count, check_runs}
  GET  /repos/{o}/{r}/commits/{ref}/status           combined status (no statuses: "pending")
  POST /repos/{o}/{r}/merges                         201 merge commit / 204 nothing to merge / 409
  GET  /repos/{o}/{r}/branches/{b}                   {name, commit: {sha}}
  GET  /repos/{o}/{r}/compare/{base}...{head}        {status, ahead_by, behind_by, ...}
Every API call needs `Authorization: Bearer <token>` (or `token <token>`) matching the file
`--token-file` (re-read on each request) and a User-Agent, as GitHub does.

Test controls, no token, loopback only (POST bodies are JSON):
  POST /__ring/push        {pr, conclusion?, seconds?, before_merge?}  a new commit on the PR's head
                           branch (before_merge: when the next merge request of that PR arrives)
  POST /__ring/check       {pr | ref, name, conclusion?, status?}  set one check on that head
  POST /__ring/next-checks {branch, conclusions: {name: c}, seconds?}  for the branch's next commits
  POST /__ring/mergeable   {pr, mergeable: true|false|null, state?, null_reads?}
  POST /__ring/fault       {status, count?, method?, path?}  the next matching API calls fail
  POST /__ring/reset       back to the seed
  GET  /__ring/log         every mutating API request: {requests: [{method, path, status, sha?, base?, head?}]}
  GET  /__ring/healthz     200

State is kept in `--state` (JSON, written atomically after every change), so a restart keeps
merged PRs; the seed is written when the file is absent or with `--reset`. New check runs are
`in_progress` and complete after `--check-seconds` (default 2) with their planned conclusion.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("github")

OWNER, REPO = "0xHoneyJar", "loa-dixie"
CHECKS = ["build", "test", "lint"]
DOCS = "https://docs.github.com/rest"
# Body fields /__ring/log keeps of a mutating request (which SHA a merge was pinned to, ...).
LOGGED_FIELDS = ("sha", "merge_method", "base", "head")


def now() -> float:
    return time.time()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Conflict(Exception):
    pass


class Repo:
    """The repository's commits, branches, PRs and check runs; every method runs under `lock`."""

    def __init__(self, path: Path, check_seconds: float) -> None:
        self.path = path
        self.check_seconds = check_seconds
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.d: dict = {}

    # --- persistence -----------------------------------------------------------
    def load_or_seed(self, reset: bool) -> None:
        if not reset and self.path.exists():
            self.d = json.loads(self.path.read_text())
            log.info("state read from %s", self.path)
        else:
            self.seed()
            log.info("seeded %s", self.path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.d, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    # --- commits ----------------------------------------------------------------
    def commit(self, parents: list[str], message: str, tree: dict, checks: dict | None = None,
               seconds: float | None = None) -> str:
        body = json.dumps({"parents": parents, "message": message, "tree": tree}, sort_keys=True)
        sha = hashlib.sha1(body.encode()).hexdigest()
        if sha not in self.d["commits"]:
            self.d["commits"][sha] = {"parents": parents, "message": message, "tree": tree, "at": now()}
            self.start_checks(sha, checks or {}, seconds)
        return sha

    def start_checks(self, sha: str, conclusions: dict, seconds: float | None) -> None:
        """CI starts on a new commit: every check in_progress, completing after `seconds`."""
        due = now() + (self.check_seconds if seconds is None else seconds)
        self.d["checks"][sha] = [
            {"id": int(hashlib.sha1(f"{sha}/{name}".encode()).hexdigest()[:8], 16), "name": name, "status": "in_progress", "conclusion": None,
             "planned": conclusions.get(name, "success"), "due": due, "started_at": now()}
            for name in CHECKS
        ]

    def check_runs(self, sha: str) -> list[dict]:
        runs = []
        for c in self.d["checks"].get(sha, []):
            done = c["status"] == "completed" or (c["status"] == "in_progress" and c["due"] is not None
                                                  and now() >= c["due"])
            runs.append({
                "id": c["id"], "name": c["name"], "head_sha": sha,
                "status": "completed" if done else c["status"],
                "conclusion": (c["conclusion"] or c["planned"]) if done else None,
                "started_at": iso(c["started_at"]),
                "completed_at": iso(c["due"]) if done and c["due"] else None,
                "app": {"slug": "github-actions"},
            })
        return runs

    def ancestors(self, sha: str) -> set[str]:
        seen, todo = set(), [sha]
        while todo:
            s = todo.pop()
            if s in seen:
                continue
            seen.add(s)
            todo.extend(self.d["commits"][s]["parents"])
        return seen

    def merge_base(self, a: str, b: str) -> str | None:
        common = self.ancestors(a) & self.ancestors(b)
        # the common ancestor that is not an ancestor of another common one
        best = [c for c in common if not any(c != o and c in self.ancestors(o) for o in common)]
        return sorted(best)[0] if best else None

    def merged_tree(self, base: str, head: str) -> dict:
        """Three-way merge of the trees of `base` and `head`; raises Conflict."""
        mb = self.merge_base(base, head)
        old = self.d["commits"][mb]["tree"] if mb else {}
        ours, theirs = self.d["commits"][base]["tree"], self.d["commits"][head]["tree"]
        out = {}
        for key in sorted(set(old) | set(ours) | set(theirs)):
            o, a, b = old.get(key), ours.get(key), theirs.get(key)
            if a == b or b == o:
                v = a
            elif a == o:
                v = b
            else:
                raise Conflict(key)
            if v is not None:
                out[key] = v
        return out

    def resolve(self, ref: str) -> str | None:
        if ref in self.d["branches"]:
            return self.d["branches"][ref]
        if re.fullmatch(r"[0-9a-f]{40}", ref) and ref in self.d["commits"]:
            return ref
        matches = [s for s in self.d["commits"] if len(ref) >= 7 and s.startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def advance(self, branch: str, sha: str) -> None:
        self.d["branches"][branch] = sha
        for pr in self.d["pulls"].values():
            if pr["head"] == branch and pr["state"] == "open":
                pr["head_sha"] = sha

    def next_checks(self, branch: str) -> tuple[dict, float | None]:
        plan = self.d["next_checks"].get(branch) or {}
        return plan.get("conclusions", {}), plan.get("seconds")

    # --- the seed -----------------------------------------------------------------
    def seed(self) -> None:
        self.d = {"commits": {}, "checks": {}, "branches": {}, "pulls": {}, "log": [], "next_checks": {}}
        wf = ".github/workflows/ci.yml"
        tree = {f"{wf}:actions/checkout": "v4", f"{wf}:actions/upload-artifact": "v4",
                f"{wf}:actions/setup-node": "v4", "deploy/Dockerfile:FROM": "node:22-alpine",
                "app/src/server.ts:version": "0.1.0"}
        root = self.commit([], "Initial commit", tree)
        feature = self.commit([root], "Dixie MVP: BFF, health, migrations",
                              {**tree, "app/src/server.ts:version": "0.2.0", "app/src/health.ts:schema": "v1"})
        self.d["branches"] = {"main": root, "feature/dixie-mvp": feature}
        bumps = [
            (52, "Bump actions/setup-node from 4 to 6", "dependabot/github_actions/actions/setup-node-6",
             f"{wf}:actions/setup-node", "v6"),
            (53, "Bump actions/upload-artifact from 4 to 7", "dependabot/github_actions/actions/upload-artifact-7",
             f"{wf}:actions/upload-artifact", "v7"),
            (54, "Bump node from 22 to 25 in /deploy", "dependabot/docker/deploy/node-25",
             "deploy/Dockerfile:FROM", "node:25-alpine"),
            (55, "Bump actions/checkout from 4 to 6", "dependabot/github_actions/actions/checkout-6",
             f"{wf}:actions/checkout", "v6"),
        ]
        for number, title, branch, key, value in bumps:
            head = self.commit([root], title, {**tree, key: value}, seconds=0)
            self.d["branches"][branch] = head
            self.d["pulls"][str(number)] = {
                "number": number, "title": title, "head": branch, "head_sha": head, "base": "main",
                "state": "open", "merged": False, "merged_at": None, "closed_at": None,
                "merge_commit_sha": None, "mergeable_override": None, "state_override": None,
                "null_reads": 0, "created_at": now(),
            }
        # Checks of the seeded heads are complete already.
        for sha in list(self.d["checks"]):
            for c in self.d["checks"][sha]:
                c["status"], c["conclusion"], c["due"] = "completed", "success", now()
        self.save()

    # --- PRs ------------------------------------------------------------------------
    def mergeability(self, pr: dict) -> tuple[bool | None, str]:
        if pr["state"] != "open":
            return None, "unknown"
        if pr["null_reads"] > 0:
            pr["null_reads"] -= 1
            return None, "unknown"
        if pr["mergeable_override"] is False:
            return False, pr["state_override"] or "dirty"
        try:
            self.merged_tree(self.d["branches"][pr["base"]], pr["head_sha"])
        except Conflict:
            return False, "dirty"
        if pr["state_override"]:
            return True, pr["state_override"]
        runs = self.check_runs(pr["head_sha"])
        green = all(r["status"] == "completed" and r["conclusion"] in ("success", "neutral", "skipped") for r in runs)
        return True, "clean" if green else "unstable"

    def pull_json(self, pr: dict) -> dict:
        mergeable, mstate = self.mergeability(pr)
        base_sha = self.d["branches"][pr["base"]]
        return {
            "url": f"/repos/{OWNER}/{REPO}/pulls/{pr['number']}",
            "html_url": f"https://github.com/{OWNER}/{REPO}/pull/{pr['number']}",
            "number": pr["number"], "state": pr["state"], "title": pr["title"],
            "user": {"login": "dependabot[bot]"},
            "created_at": iso(pr["created_at"]), "closed_at": iso(pr["closed_at"]),
            "merged_at": iso(pr["merged_at"]), "merged": pr["merged"],
            "mergeable": mergeable, "mergeable_state": mstate,
            "merge_commit_sha": pr["merge_commit_sha"],
            "head": {"label": f"{OWNER}:{pr['head']}", "ref": pr["head"], "sha": pr["head_sha"]},
            "base": {"label": f"{OWNER}:{pr['base']}", "ref": pr["base"], "sha": base_sha},
        }

    def push(self, pr: dict, conclusions: dict, seconds: float | None) -> str:
        """A new commit on the PR's head branch; its checks start over."""
        old = pr["head_sha"]
        tree = dict(self.d["commits"][old]["tree"])
        tree[f"{pr['head']}:pushes"] = str(int(tree.get(f"{pr['head']}:pushes", "0")) + 1)
        sha = self.commit([old], f"Push to {pr['head']}", tree, conclusions, seconds)
        self.advance(pr["head"], sha)
        return sha

    def merge_pull(self, pr: dict, body: dict) -> tuple[int, dict]:
        if pr.get("push_before_merge"):
            planned = pr.pop("push_before_merge")
            self.push(pr, planned["conclusions"], planned["seconds"])
        method = body.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            return 422, {"message": "Validation Failed",
                         "errors": [{"resource": "PullRequest", "field": "merge_method", "code": "invalid"}]}
        if pr["state"] != "open":
            return 405, {"message": "Pull Request is not mergeable"}
        if body.get("sha") and body["sha"] != pr["head_sha"]:
            return 409, {"message": "Head branch was modified. Review and try the merge again."}
        mergeable, _ = self.mergeability(pr)
        if mergeable is not True:
            return 405, {"message": "Pull Request is not mergeable"}
        base_sha = self.d["branches"][pr["base"]]
        tree = self.merged_tree(base_sha, pr["head_sha"])
        title = body.get("commit_title") or (
            f"Merge pull request #{pr['number']} from {OWNER}/{pr['head']}" if method == "merge"
            else f"{pr['title']} (#{pr['number']})")
        parents = [base_sha, pr["head_sha"]] if method == "merge" else [base_sha]
        conclusions, seconds = self.next_checks(pr["base"])
        sha = self.commit(parents, title, tree, conclusions, seconds)
        self.advance(pr["base"], sha)
        pr.update(state="closed", merged=True, merged_at=now(), closed_at=now(), merge_commit_sha=sha)
        return 200, {"sha": sha, "merged": True, "message": "Pull Request successfully merged"}

    def merge_branches(self, body: dict) -> tuple[int, dict | None]:
        base, head = body.get("base"), body.get("head")
        if base not in self.d["branches"]:
            return 404, {"message": "Base does not exist"}
        head_sha = self.resolve(head or "")
        if head_sha is None:
            return 404, {"message": "Head does not exist"}
        base_sha = self.d["branches"][base]
        if head_sha in self.ancestors(base_sha):
            return 204, None
        try:
            tree = self.merged_tree(base_sha, head_sha)
        except Conflict:
            return 409, {"message": "Merge conflict"}
        message = body.get("commit_message") or f"Merge {head} into {base}"
        conclusions, seconds = self.next_checks(base)
        sha = self.commit([base_sha, head_sha], message, tree, conclusions, seconds)
        self.advance(base, sha)
        return 201, self.commit_json(sha)

    def commit_json(self, sha: str) -> dict:
        c = self.d["commits"][sha]
        return {"sha": sha, "commit": {"message": c["message"], "tree": {"sha": hashlib.sha1(
            json.dumps(c["tree"], sort_keys=True).encode()).hexdigest()}},
            "parents": [{"sha": p} for p in c["parents"]]}

    def compare(self, base: str, head: str) -> tuple[int, dict]:
        b, h = self.resolve(base), self.resolve(head)
        if b is None or h is None:
            return 404, {"message": "Not Found", "documentation_url": DOCS}
        ab, hb = self.ancestors(b), self.ancestors(h)
        ahead, behind = len(hb - ab), len(ab - hb)
        status = ("identical" if b == h else "ahead" if behind == 0 else "behind" if ahead == 0 else "diverged")
        mb = self.merge_base(b, h)
        return 200, {"status": status, "ahead_by": ahead, "behind_by": behind, "total_commits": ahead,
                     "base_commit": {"sha": b}, "merge_base_commit": {"sha": mb},
                     "commits": [self.commit_json(s) for s in sorted(hb - ab)]}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "github-ring-standin"
    repo: Repo
    token_file: Path

    def log_message(self, fmt: str, *args) -> None:
        pass

    def reply(self, code: int, obj: dict | None) -> None:
        body = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(code)
        for name, value in getattr(self, "extra_headers", {}).items():  # a fault's (retry-after)
            self.send_header(name, str(value))
        self.extra_headers = {}
        if obj is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {"__invalid__": True}

    def authorized(self) -> bool:
        try:
            token = self.token_file.read_text().strip()
        except OSError:
            return False
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return bool(token) and scheme.lower() in ("bearer", "token") and value.strip() == token

    def do_GET(self) -> None:  # noqa: N802
        self.route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self.route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.route("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self.route("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self.route("DELETE")

    def route(self, method: str) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        body = self.body() if method in ("POST", "PUT", "PATCH") else {}
        repo = self.repo
        if path.startswith("/__ring/"):
            with repo.lock:
                code, obj = self.control(method, path[len("/__ring/"):], body)
            self.reply(code, obj)
            return
        if not self.headers.get("User-Agent"):
            code, obj = 403, {"message": "Request forbidden by administrative rules. "
                                         "Please make sure your request has a User-Agent header"}
        elif not self.authorized():
            code, obj = 401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"}
        else:
            with repo.lock:
                fault = self.take_fault(method, path)
                if fault:
                    code, obj = fault["status"], {"message": fault.get("message", "Server Error")}
                    self.extra_headers = fault.get("headers", {})
                elif body.get("__invalid__"):
                    code, obj = 400, {"message": "Problems parsing JSON", "documentation_url": DOCS}
                else:
                    code, obj = self.api(method, path, body)
        if method != "GET":  # refused ones too: "nothing was merged" counts every attempt
            with repo.lock:
                repo.d["log"].append({"method": method, "path": path, "status": code, "at": now(),
                                      **{k: body[k] for k in LOGGED_FIELDS if k in body}})
                repo.save()
        log.info("%s %s -> %d", method, path, code)
        self.reply(code, obj)

    def take_fault(self, method: str, path: str) -> dict | None:
        for f in self.repo.faults:
            if f.get("method", method) == method and path.startswith(f.get("path", "/")):
                f["count"] -= 1
                if f["count"] <= 0:
                    self.repo.faults.remove(f)
                return f
        return None

    def api(self, method: str, path: str, body: dict) -> tuple[int, dict | None]:
        r = self.repo
        not_found = (404, {"message": "Not Found", "documentation_url": DOCS})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
        if not m or (m[1].lower(), m[2].lower()) != (OWNER.lower(), REPO.lower()):
            return not_found
        rest = m[3] or ""
        if rest == "" and method == "GET":  # the repository, with what the token may do in it
            return 200, {"full_name": f"{OWNER}/{REPO}", "default_branch": "main",
                         "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True}}
        if mm := re.fullmatch(r"/pulls/(\d+)", rest):
            pr = r.d["pulls"].get(mm[1])
            if method != "GET" or pr is None:
                return not_found
            return 200, r.pull_json(pr)
        if mm := re.fullmatch(r"/pulls/(\d+)/merge", rest):
            pr = r.d["pulls"].get(mm[1])
            if pr is None:
                return not_found
            if method == "GET":  # "is it merged": 204 yes, 404 no
                return (204, None) if pr["merged"] else not_found
            if method != "PUT":
                return not_found
            return r.merge_pull(pr, body)
        if mm := re.fullmatch(r"/commits/(.+)/check-runs", rest):
            sha = r.resolve(mm[1])
            if method != "GET" or sha is None:
                return (422, {"message": f"No commit found for SHA: {mm[1]}"}) if sha is None else not_found
            runs = r.check_runs(sha)
            return 200, {"total_count": len(runs), "check_runs": runs}
        if mm := re.fullmatch(r"/commits/(.+)/status", rest):
            sha = r.resolve(mm[1])
            if method != "GET" or sha is None:
                return not_found
            # Like GitHub: no commit statuses at all reads as "pending" (checks are check runs).
            return 200, {"state": "pending", "sha": sha, "total_count": 0, "statuses": []}
        if rest == "/merges" and method == "POST":
            return r.merge_branches(body)
        if mm := re.fullmatch(r"/branches/(.+)", rest):
            if method != "GET" or mm[1] not in r.d["branches"]:
                return (404, {"message": "Branch not found", "documentation_url": DOCS})
            sha = r.d["branches"][mm[1]]
            return 200, {"name": mm[1], "commit": r.commit_json(sha), "protected": False}
        if mm := re.fullmatch(r"/compare/(.+?)\.\.\.(.+)", rest):
            if method != "GET":
                return not_found
            return r.compare(mm[1], mm[2])
        return not_found

    def control(self, method: str, what: str, body: dict) -> tuple[int, dict]:
        r = self.repo
        if method == "GET" and what == "healthz":
            return 200, {"ok": True}
        if method == "GET" and what == "log":
            return 200, {"requests": r.d["log"]}
        if method == "GET" and what == "state":
            return 200, {"branches": r.d["branches"],
                         "pulls": {n: r.pull_json(p) for n, p in r.d["pulls"].items()}}
        if method != "POST":
            return 404, {"message": "Not Found"}
        pr = r.d["pulls"].get(str(body.get("pr")))
        if what == "reset":
            r.faults.clear()
            r.seed()
            return 200, {"ok": True}
        if what == "fault":
            r.faults.append({"status": int(body.get("status", 502)), "count": int(body.get("count", 1)),
                             **{k: body[k] for k in ("method", "path", "message", "headers") if k in body}})
            return 200, {"ok": True}
        if what == "next-checks":
            r.d["next_checks"][body["branch"]] = {"conclusions": body.get("conclusions", {}),
                                                  "seconds": body.get("seconds")}
            r.save()
            return 200, {"ok": True}
        if what == "check":
            sha = pr["head_sha"] if pr else r.resolve(body.get("ref", ""))
            runs = r.d["checks"].get(sha or "", [])
            hit = [c for c in runs if c["name"] == body.get("name")]
            if not hit:
                return 404, {"message": f"no check {body.get('name')!r} on {sha}"}
            status = body.get("status", "completed")
            for c in hit:
                c["status"] = status
                c["conclusion"] = body.get("conclusion", "failure") if status == "completed" else None
                c["due"] = now() if status == "completed" else None
            r.save()
            return 200, {"sha": sha, "check_runs": r.check_runs(sha)}
        if pr is None:
            return 404, {"message": f"no PR {body.get('pr')!r}"}
        if what == "push":
            conclusions = {n: body["conclusion"] for n in CHECKS} if "conclusion" in body else {}
            if body.get("before_merge"):  # lands after the caller read the head, before its merge
                pr["push_before_merge"] = {"conclusions": conclusions, "seconds": body.get("seconds")}
                r.save()
                return 200, {"old": pr["head_sha"], "sha": None}
            old = pr["head_sha"]
            sha = r.push(pr, conclusions, body.get("seconds"))
            r.save()
            return 200, {"old": old, "sha": sha}
        if what == "mergeable":
            mergeable = body.get("mergeable", False)
            pr["mergeable_override"] = False if mergeable is False else None
            pr["state_override"] = body.get("state")
            pr["null_reads"] = int(body.get("null_reads", 1 if mergeable is None else 0))
            r.save()
            return 200, r.pull_json(pr)
        return 404, {"message": "Not Found"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=18700)
    ap.add_argument("--state", type=Path, required=True, help="JSON file of the repository's state")
    ap.add_argument("--token-file", type=Path, required=True, help="the one token accepted")
    ap.add_argument("--reset", action="store_true", help="start from the seed, whatever the state file has")
    ap.add_argument("--check-seconds", type=float, default=2.0, help="how long new check runs stay in_progress")
    args = ap.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s github %(levelname)s %(message)s")
    repo = Repo(args.state, args.check_seconds)
    repo.load_or_seed(args.reset)
    Handler.repo = repo
    Handler.token_file = args.token_file
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    if args.port == 0:
        print(f"port={port}", flush=True)

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on http://127.0.0.1:%d (repository %s/%s, state %s)", port, OWNER, REPO, args.state)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log.info("stopped")


if __name__ == "__main__":
    main()
