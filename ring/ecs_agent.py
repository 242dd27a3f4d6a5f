#!/usr/bin/env python3
"""ring/ecs_agent.py: the ring's "ECS": runs a stand-in process for each moto ECS service.

Every ~0.5 s it describes the services dixie-armitage and loa-finn-armitage of cluster
arrakis-staging-cluster in moto (read-only calls only; boto3's user agent carries
`ring-ecs-agent`, so a test can tell them apart in moto's recorder). For a service that
is ACTIVE with desiredCount >= 1, one stand-in (ring/standins/*.py) runs per PRIMARY
deployment: a new deployment id (update-service --force-new-deployment), a new task
definition on the service, or the process's death starts a new one with the current
params, as a real task would. The new task's environment is resolved BEFORE the old
one is stopped: if a secret's parameter is missing the new task does not start (logged,
retried every 5 s) and the old one keeps running, as in an ECS rolling deployment.

Environment of a stand-in: the task definition container's `environment` + its
`secrets` (SSM parameter names or ARNs, read with decryption; Secrets Manager ARNs too)
+ for loa-finn every parameter under /loa-finn/armitage/ (by path, with decryption) +
PORT, RING_ADDRESS_MAP, RING_REDIS_CA, DIXIE_MIGRATIONS_DIR, DIXIE_VERSION/FINN_VERSION
(the image tag), RING_SERVICE, RING_DEPLOYMENT_ID, RING_TASK_ENV_NAMES, and the task's network
facts (RING_TASK_SECURITY_GROUPS, RING_TASK_ADDRESS, RING_EC2_ENDPOINT, RING_AWS_ENDPOINT).

Logs, as the awslogs driver ships them: when the task definition's container has a
logConfiguration with logDriver awslogs, every line the stand-in prints goes to moto's CloudWatch
Logs, group `awslogs-group`, stream `<awslogs-stream-prefix>/<container>/<task id>`, in batches
about once a second (PutLogEvents; CreateLogStream first). A group that does not exist is not
created (the real driver fails the task unless `awslogs-create-group` is "true"): the lines wait
in the task's log file until it exists (sprint 2's terraform creates /ecs/dixie-armitage).

Writes $RING_DIR/agent/<service>.json while a stand-in runs (removed when it stops) and
$RING_DIR/agent/poll.json after every poll; serves GET /healthz and /state on
127.0.0.1:18900; logs every decision to stdout (up.sh sends it to logs/ecs-agent.log).
Stand-ins log to $RING_DIR/logs/<service>.log. On TERM it stops its stand-ins and exits.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

REPO = Path(__file__).resolve().parent.parent
RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or REPO / ".ring")
AGENT_DIR = RING_DIR / "agent"
LOGS = RING_DIR / "logs"
ENDPOINT = os.environ.get("RING_MOTO_ENDPOINT", "http://127.0.0.1:4566")
REGION = "us-east-1"
CLUSTER = "arrakis-staging-cluster"
STATUS_PORT = int(os.environ.get("RING_ECS_AGENT_PORT", "18900"))
POLL_S = 0.5
SECRET_RETRY_S = 5.0
SHIP_S = 1.0
SHIP_BATCH = 500
STOP_WAIT_S = 5.0
ADDRESS_MAP = os.environ.get("RING_ADDRESS_MAP") or str(REPO / "runbooks" / "environments" / "local.toml")

# Ports of the stand-ins (the overrides exist to run a second agent for testing the agent itself).
SERVICES = {
    "dixie-armitage": {"script": "dixie.py", "port": int(os.environ.get("RING_DIXIE_STANDIN_PORT", "13001")),
                       "version_env": "DIXIE_VERSION", "ssm_paths": []},
    "loa-finn-armitage": {"script": "finn.py", "port": int(os.environ.get("RING_FINN_STANDIN_PORT", "13000")),
                          "version_env": "FINN_VERSION", "ssm_paths": ["/loa-finn/armitage/"]},
}

log = logging.getLogger("ecs-agent")


def utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso(v) -> str | None:
    if isinstance(v, datetime.datetime):
        return v.astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return None if v is None else str(v)


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cmdline_has(pid: int, word: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return word.encode() in f.read()
    except OSError:
        return False


def image_tag(image: str) -> str:
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def ssm_name(value_from: str) -> str:
    """An SSM parameter name from a name or an ARN (arn:aws:ssm:r:a:parameter/x/y -> /x/y)."""
    if value_from.startswith("arn:") and ":parameter" in value_from:
        rest = value_from.split(":parameter", 1)[1]  # "/name" or "/path/name"
        return rest if rest.count("/") > 1 else rest[1:]
    return value_from


class MissingSecret(Exception):
    pass


class Task:
    """One running stand-in (our child, or adopted from a previous agent's state file)."""

    def __init__(self, service: str, key: tuple[str, str], pid: int, proc: subprocess.Popen | None,
                 record: dict) -> None:
        self.service, self.key, self.pid, self.proc, self.record = service, key, pid, proc, record
        self.started = time.monotonic()

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return alive(self.pid) and cmdline_has(self.pid, "standins/")

    def exit_code(self):
        return self.proc.returncode if self.proc is not None else "?"


class Agent:
    def __init__(self) -> None:
        cfg = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10,
                     user_agent_extra="ring-ecs-agent")
        session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                        region_name=REGION)
        self.ecs = session.client("ecs", endpoint_url=ENDPOINT, config=cfg)
        self.ssm = session.client("ssm", endpoint_url=ENDPOINT, config=cfg)
        self.sm = session.client("secretsmanager", endpoint_url=ENDPOINT, config=cfg)
        self.ec2 = session.client("ec2", endpoint_url=ENDPOINT, config=cfg)
        self.logs = session.client("logs", endpoint_url=ENDPOINT, config=cfg)
        self.tasks: dict[str, Task] = {}
        self.retry_at: dict[str, tuple] = {}     # service -> (deployment key, monotonic time of next attempt)
        self.crashes: dict[str, int] = {}        # consecutive quick deaths, for the back-off
        self.replacing: dict[str, str] = {}      # why the next start happens, after a task died
        self.last_note: dict[str, str] = {}      # de-duplicated log lines per subject
        self.stopping = threading.Event()
        self.polls = 0
        self.last_poll: dict = {}
        self.heartbeat = time.monotonic()
        self.lock = threading.Lock()
        self.shipper: Shipper | None = None

    # --- logging without repeating the same line every half second ---------------
    def note(self, subject: str, msg: str, level: int = logging.INFO) -> None:
        if self.last_note.get(subject) != msg:
            self.last_note[subject] = msg
            log.log(level, "%s", msg)

    # --- state files ----------------------------------------------------------------
    def adopt(self) -> None:
        """Take over the stand-ins a previous agent left running (agent restart: no task restart)."""
        AGENT_DIR.mkdir(parents=True, exist_ok=True)
        for name, spec in SERVICES.items():
            f = AGENT_DIR / f"{name}.json"
            if not f.exists():
                continue
            try:
                rec = json.loads(f.read_text())
                pid = int(rec["pid"])
            except (ValueError, KeyError, OSError):
                f.unlink(missing_ok=True)
                continue
            if alive(pid) and cmdline_has(pid, f"standins/{spec['script']}"):
                key = (rec.get("deployment_id"), rec.get("task_definition"))
                self.tasks[name] = Task(name, key, pid, None, rec)
                log.info("%s: adopted running stand-in pid %d (deployment %s)", name, pid, key[0])
            else:
                f.unlink(missing_ok=True)

    # --- the loop ---------------------------------------------------------------
    def poll_once(self) -> None:
        started = time.time()
        ok, found = True, None
        try:
            resp = self.ecs.describe_services(cluster=CLUSTER, services=list(SERVICES))
            found = {s["serviceName"]: s for s in resp.get("services", [])}
            self.note("moto", "moto answers: describing services of " + CLUSTER)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "ClusterNotFoundException":
                found = {}
                self.note("moto", f"cluster {CLUSTER} does not exist (moto reset?): no service runs")
            else:
                ok = False
                self.note("moto", f"describe-services failed ({code}: {e}); keeping stand-ins as they are",
                          logging.WARNING)
        except (BotoCoreError, OSError) as e:
            ok = False
            self.note("moto", f"moto is not answering ({type(e).__name__}); keeping stand-ins as they are",
                      logging.WARNING)
        if found is not None:
            for name in SERVICES:
                try:
                    self.reconcile(name, found.get(name))
                except (BotoCoreError, ClientError, OSError) as e:
                    ok = False
                    self.note(f"{name}:error", f"{name}: {type(e).__name__}: {e}; retrying", logging.WARNING)
        self.polls += 1
        self.last_poll = {"seq": self.polls, "started_at": started, "finished_at": time.time(), "ok": ok,
                          "running": sorted(n for n, t in self.tasks.items())}
        write_json(AGENT_DIR / "poll.json", self.last_poll)

    def reconcile(self, name: str, svc: dict | None) -> None:
        task = self.tasks.get(name)
        if svc is None or svc.get("status") != "ACTIVE" or svc.get("desiredCount", 0) < 1:
            why = ("does not exist" if svc is None else
                   f"is {svc.get('status')}" if svc.get("status") != "ACTIVE" else "has desiredCount 0")
            self.note(name, f"{name}: service {why}: no task")
            self.retry_at.pop(name, None)
            self.crashes.pop(name, None)
            self.replacing.pop(name, None)
            if task:
                self.stop(name, f"service {why}")
            return
        primary = [d for d in svc.get("deployments", []) if d.get("status") == "PRIMARY"]
        if not primary:
            self.note(name, f"{name}: no PRIMARY deployment yet", logging.WARNING)
            return
        dep = primary[0]
        # moto keeps the deployment's taskDefinition when update-service changes the service's:
        # the service's own field is what ECS would run (they are equal on AWS).
        td = svc.get("taskDefinition") or dep.get("taskDefinition")
        key = (dep["id"], td)
        if task and not task.running():
            lived = time.monotonic() - task.started
            quick = lived < 10
            self.crashes[name] = self.crashes.get(name, 0) + 1 if quick else 1
            delay = min(30.0, 2.0 ** self.crashes[name]) if quick else 0.0
            log.warning("%s: stand-in pid %d exited (code %s) after %.1f s: starting a new task%s", name, task.pid,
                        task.exit_code(), lived, f" in {delay:.0f} s" if delay else "")
            self.tasks.pop(name)
            (AGENT_DIR / f"{name}.json").unlink(missing_ok=True)
            self.retry_at[name] = (key, time.monotonic() + delay)
            self.replacing[name] = f"replacing task pid {task.pid}, which exited with code {task.exit_code()}"
            self.last_note.pop(name, None)
            task = None
        elif task and task.key == key:
            if time.monotonic() - task.started > 10:
                self.crashes.pop(name, None)
            return
        retry = self.retry_at.get(name)
        if retry and retry[0] == key and time.monotonic() < retry[1]:
            return  # a new deployment does not wait for the previous one's back-off
        reason = (self.replacing.get(name, "first task of deployment") if task is None else
                  f"new deployment (was {task.key[0]})" if task.key[0] != key[0] else
                  f"new task definition (was {task.key[1]})")
        try:
            env, image, logcfg = self.task_env(name, td, dep, svc)
        except MissingSecret as e:
            self.retry_at[name] = (key, time.monotonic() + SECRET_RETRY_S)
            self.note(name, f"{name}: cannot start a task of deployment {key[0]}: {e} (ECS would fail the task "
                            f"with ResourceInitializationError); "
                      + (f"the old task pid {task.pid} keeps running; " if task else "")
                      + f"retrying every {SECRET_RETRY_S:.0f} s", logging.ERROR)
            return
        self.retry_at.pop(name, None)
        self.replacing.pop(name, None)
        if task:
            self.stop(name, reason)
        self.start(name, key, dep, env, image, reason, logcfg)

    # --- the task's environment --------------------------------------------------
    def task_env(self, name: str, td_arn: str, dep: dict, svc: dict) -> tuple[dict, str, dict | None]:
        spec = SERVICES[name]
        td = self.ecs.describe_task_definition(taskDefinition=td_arn)["taskDefinition"]
        containers = td.get("containerDefinitions") or []
        if not containers:
            raise MissingSecret(f"task definition {td_arn} has no container")
        c = next((c for c in containers if c.get("essential", True)), containers[0])
        env: dict[str, str] = {}
        for e in c.get("environment") or []:
            env[e["name"]] = e.get("value", "")
        for path in spec["ssm_paths"]:
            for page in self.ssm.get_paginator("get_parameters_by_path").paginate(
                    Path=path, Recursive=True, WithDecryption=True):
                for p in page["Parameters"]:
                    env[p["Name"].rsplit("/", 1)[-1]] = p["Value"]
        secrets = c.get("secrets") or []
        by_name: dict[str, list[str]] = {}
        for s in secrets:
            vf = s["valueFrom"]
            if vf.startswith("arn:") and ":secretsmanager:" in vf:
                try:
                    env[s["name"]] = self.sm.get_secret_value(SecretId=vf)["SecretString"]
                except ClientError as e:
                    raise MissingSecret(f"secret {s['name']}: {vf}: {e.response['Error'].get('Code')}") from e
                continue
            by_name.setdefault(ssm_name(vf), []).append(s["name"])
        names = list(by_name)
        missing = []
        for i in range(0, len(names), 10):
            r = self.ssm.get_parameters(Names=names[i:i + 10], WithDecryption=True)
            for p in r["Parameters"]:
                for var in by_name.get(p["Name"], []):
                    env[var] = p["Value"]
            missing += r.get("InvalidParameters", [])
        if missing:
            raise MissingSecret(f"SSM parameter(s) not found: {', '.join(sorted(missing))}")
        image = c.get("image", "")
        task_names = sorted(env)
        env.update({
            "PORT": str(spec["port"]),
            "RING_ADDRESS_MAP": ADDRESS_MAP,
            "RUNBOOK_RING_DIR": str(RING_DIR),
            "RING_REDIS_CA": str(RING_DIR / "tls" / "ca.crt"),
            spec["version_env"]: image_tag(image),
            "RING_SERVICE": name,
            "RING_DEPLOYMENT_ID": dep["id"],
            "RING_TASK_ENV_NAMES": ",".join(task_names),
        })
        env.update(self.task_network(svc))
        if name == "dixie-armitage":
            # The migrations the image carries: the fixture's, or (a ring-only stand-in for an
            # older image, whose folder ends earlier) the container's DIXIE_MIGRATIONS_DIR.
            given = [e.get("value", "") for e in c.get("environment") or [] if e.get("name") == "DIXIE_MIGRATIONS_DIR"]
            env["DIXIE_MIGRATIONS_DIR"] = given[0] if given else str(REPO / "fixtures" / "dixie" / "migrations")
        return env, image, awslogs(c)

    def task_network(self, svc: dict) -> dict:
        """The task's security groups and a private address in its first subnet, for the
        stand-in's security-group checks (moto runs no task for a service, so it has no ENI)."""
        vpc = (svc.get("networkConfiguration") or {}).get("awsvpcConfiguration") or {}
        address = ""
        if vpc.get("subnets"):
            subnet = self.ec2.describe_subnets(SubnetIds=vpc["subnets"][:1])["Subnets"][0]
            address = str(ipaddress.ip_network(subnet["CidrBlock"]).network_address + 10)
        return {
            "RING_TASK_SECURITY_GROUPS": ",".join(vpc.get("securityGroups") or []),
            "RING_TASK_ADDRESS": address,
            "RING_EC2_ENDPOINT": ENDPOINT,
            # The AWS endpoint a task's own SDK calls go to (its task role's): the Dixie
            # stand-in reads its JWT keys from SSM at start (docs/ring.md, "Keys").
            "RING_AWS_ENDPOINT": ENDPOINT,
        }

    # --- processes -----------------------------------------------------------------
    def start(self, name: str, key: tuple[str, str], dep: dict, env: dict, image: str, reason: str,
              logcfg: dict | None) -> None:
        spec = SERVICES[name]
        base = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        base.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        base.update(env)
        logfile = LOGS / f"{name}.log"
        with open(logfile, "ab") as out:
            out.write(f"--- {utc()} ecs-agent: new task of {name}, deployment {key[0]}, {key[1]}\n".encode())
            out.flush()
            offset = out.tell()
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "ring" / "standins" / spec["script"])],
                env=base, cwd="/", stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = {
            "deployment_id": key[0],
            "deployment_created_at": iso(dep.get("createdAt")),
            "task_definition": key[1],
            "image": image,
            "pid": proc.pid,
            "started_at": utc(),
            "port": spec["port"],
            "log": str(logfile),
            # Shipped to CloudWatch Logs from this offset on (see Shipper).
            "log_offset": offset,
            "awslogs": logcfg and logcfg | {"stream": f"{logcfg['prefix']}/{logcfg['container']}/{uuid.uuid4().hex}"},
        }
        self.tasks[name] = Task(name, key, proc.pid, proc, record)
        write_json(AGENT_DIR / f"{name}.json", record)
        self.last_note.pop(name, None)
        log.info("%s: started stand-in pid %d on 127.0.0.1:%d (%s: deployment %s created %s, %s, image tag %s, "
                 "%d env vars)", name, proc.pid, spec["port"], reason, key[0], record["deployment_created_at"],
                 key[1].rsplit("/", 1)[-1], image_tag(image), len(env))

    def stop(self, name: str, reason: str) -> None:
        task = self.tasks.pop(name, None)
        (AGENT_DIR / f"{name}.json").unlink(missing_ok=True)
        if not task:
            return
        t0 = time.monotonic()
        if task.running():
            try:
                os.kill(task.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            while task.running() and time.monotonic() - t0 < STOP_WAIT_S:
                time.sleep(0.05)
            if task.running():
                log.warning("%s: pid %d ignored TERM for %.0f s: KILL", name, task.pid, STOP_WAIT_S)
                try:
                    os.kill(task.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if task.proc:
                    task.proc.wait(timeout=5)
        if self.shipper:  # its last lines, as the awslogs driver flushes them when a container stops
            try:
                self.shipper.ship(task, persist=False)
            except (BotoCoreError, ClientError, OSError) as e:
                log.warning("%s: shipping the last lines failed: %s", name, e)
        log.info("%s: stopped stand-in pid %d in %.2f s (%s)", name, task.pid, time.monotonic() - t0, reason)

    def stop_all(self, reason: str) -> None:
        for name in list(self.tasks):
            self.stop(name, reason)

    def run(self) -> None:
        self.adopt()
        log.info("ecs-agent up: polling %s every %.1f s for %s in %s; status on http://127.0.0.1:%d; "
                 "address map %s", ENDPOINT, POLL_S, ", ".join(SERVICES), CLUSTER, STATUS_PORT, ADDRESS_MAP)
        while not self.stopping.is_set():
            t0 = time.monotonic()
            with self.lock:
                try:
                    self.poll_once()
                except Exception:  # noqa: BLE001 - the agent must survive anything moto does
                    log.exception("poll failed; continuing")
            self.heartbeat = time.monotonic()
            self.stopping.wait(max(0.05, POLL_S - (time.monotonic() - t0)))
        with self.lock:
            self.stop_all("ecs-agent stopping")
        log.info("ecs-agent stopped")

    def state(self) -> dict:
        return {
            "polls": self.polls,
            "last_poll": self.last_poll,
            "heartbeat_age_s": round(time.monotonic() - self.heartbeat, 3),
            "tasks": {n: t.record | {"running": t.running()} for n, t in list(self.tasks.items())},
        }


def awslogs(container: dict) -> dict | None:
    """The container's awslogs options, or None when it logs elsewhere (or nowhere)."""
    cfg = container.get("logConfiguration") or {}
    opts = cfg.get("options") or {}
    if cfg.get("logDriver") != "awslogs" or not opts.get("awslogs-group"):
        return None
    return {"group": opts["awslogs-group"], "prefix": opts.get("awslogs-stream-prefix") or "ecs",
            "container": container.get("name") or "app", "region": opts.get("awslogs-region") or REGION,
            "create_group": str(opts.get("awslogs-create-group", "")).lower() == "true"}


class Shipper:
    """Sends each running stand-in's new output lines to its awslogs stream, about once a second.
    Reads the task's log file from the offset it had when the task started (kept in the task's
    record, so an agent restart neither loses nor repeats lines); only whole lines are sent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.streams: set[tuple[str, str]] = set()

    def ensure_stream(self, cfg: dict) -> bool:
        key = (cfg["group"], cfg["stream"])
        if key in self.streams:
            return True
        logs = self.agent.logs
        try:
            logs.create_log_stream(logGroupName=cfg["group"], logStreamName=cfg["stream"])
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException" and cfg["create_group"]:
                logs.create_log_group(logGroupName=cfg["group"])
                logs.create_log_stream(logGroupName=cfg["group"], logStreamName=cfg["stream"])
            elif code == "ResourceNotFoundException":
                self.agent.note(f"logs:{key}", f"log group {cfg['group']} does not exist: lines of stream "
                                f"{cfg['stream']} wait until it does", logging.WARNING)
                return False
            elif code != "ResourceAlreadyExistsException":
                raise
        self.streams.add(key)
        log.info("shipping stand-in output to CloudWatch Logs %s, stream %s", cfg["group"], cfg["stream"])
        return True

    def ship(self, task: Task, persist: bool = True) -> None:
        rec = task.record
        cfg = rec.get("awslogs")
        if not cfg or not self.ensure_stream(cfg):
            return
        offset = int(rec.get("log_offset") or 0)
        with open(rec["log"], "rb") as f:
            f.seek(offset)
            data = f.read(1 << 20)
        end = data.rfind(b"\n")
        if end < 0:
            return
        now = int(time.time() * 1000)
        lines = [ln.decode("utf-8", "replace") for ln in data[:end].split(b"\n") if ln.strip()]
        for i in range(0, len(lines), SHIP_BATCH):
            events = [{"timestamp": now, "message": ln} for ln in lines[i:i + SHIP_BATCH]]
            self.agent.logs.put_log_events(logGroupName=cfg["group"], logStreamName=cfg["stream"], logEvents=events)
        rec["log_offset"] = offset + end + 1
        if persist:
            write_json(AGENT_DIR / f"{task.service}.json", rec)

    def run(self) -> None:
        while not self.agent.stopping.wait(SHIP_S):
            with self.agent.lock:
                for task in list(self.agent.tasks.values()):
                    try:
                        self.ship(task)
                    except (BotoCoreError, ClientError, OSError) as e:
                        self.agent.note(f"logs:{task.service}", f"{task.service}: shipping logs failed "
                                        f"({type(e).__name__}: {e}); retrying", logging.WARNING)


def serve_status(agent: Agent) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/healthz"):
                age = time.monotonic() - agent.heartbeat
                code, body = (200, {"ok": True, "heartbeat_age_s": round(age, 3)}) if age < 5 else \
                    (503, {"ok": False, "heartbeat_age_s": round(age, 3)})
            elif self.path.startswith("/state"):
                code, body = 200, agent.state()
            else:
                code, body = 404, {"error": "not found"}
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", STATUS_PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server


def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO,
                        format="%(asctime)s ecs-agent[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.ERROR)
    AGENT_DIR.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    agent = Agent()
    try:
        server = serve_status(agent)
    except OSError as e:
        sys.exit(f"ecs-agent: ERROR: cannot listen on 127.0.0.1:{STATUS_PORT}: {e}")

    def on_signal(signum, _frame):
        log.info("signal %d: stopping the stand-ins and exiting", signum)
        agent.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.shipper = Shipper(agent)
    threading.Thread(target=agent.shipper.run, name="shipper", daemon=True).start()
    agent.run()
    server.shutdown()
    (AGENT_DIR / "poll.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
