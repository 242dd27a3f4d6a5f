#!/usr/bin/env python3
"""A fault-injecting proxy in front of the ring's moto, for tests: it answers chosen AWS calls
with the errors the real services send, in each protocol's own format, and forwards the rest.

    python3 ring/faultproxy.py --upstream http://127.0.0.1:4566 --rules RULES.json

It listens on a free loopback port and prints `port=N` on its first line. RULES.json is a list
of {"op": "GetCallerIdentity", "fault": "throttle" | "500" | "reset" | "delay", "times": N,
"seconds": S}: the first `times` calls of that operation get the fault (`op` is the X-Amz-Target
operation of JSON protocols, the Action of query protocols, or "METHOD /path" for S3; an `op`
ending in `*` matches every operation it starts, as "GET /bucket/*").
GET /__faults answers how many faults each rule served. Only loopback is ever dialled.
"""
import argparse
import http.client
import json
import socket
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
RULES = []


def operation(headers, body, method, path):
    """(protocol, operation, service hint) of one AWS call."""
    target = headers.get("X-Amz-Target")
    if target:
        return "json", target.split(".")[-1], target.split(".")[0]
    if body:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        if "Action" in form:
            auth = headers.get("Authorization", "")
            service = auth.split("/")[3] if auth.count("/") >= 4 else ""
            return "query", form["Action"][0], service
    return "rest", f"{method} {path.split('?')[0]}", "s3"


def error_body(protocol, service, fault):
    """Status, content type and body of the error each protocol's service sends."""
    throttle = fault == "throttle"
    if protocol == "json":
        kind, message = ("ThrottlingException", "Rate exceeded") if throttle else ("InternalFailure", "We encountered an internal error. Please try again.")
        return (400 if throttle else 500), "application/x-amz-json-1.1", json.dumps({"__type": kind, "message": message})
    if protocol == "query" and service == "ec2":
        code = "RequestLimitExceeded" if throttle else "InternalError"
        body = f"<Response><Errors><Error><Code>{code}</Code><Message>{code}</Message></Error></Errors><RequestID>fault</RequestID></Response>"
        return (503 if throttle else 500), "text/xml", body
    if protocol == "query":
        code, kind = ("Throttling", "Sender") if throttle else ("InternalFailure", "Receiver")
        body = (f'<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>Rate exceeded</Message>'
                f"</Error><RequestId>fault</RequestId></ErrorResponse>")
        return (400 if throttle else 500), "text/xml", body
    code = "SlowDown" if throttle else "InternalError"
    return (503 if throttle else 500), "application/xml", f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{code}</Message><RequestId>fault</RequestId></Error>'


def take(op):
    with LOCK:
        for rule in RULES:
            name = rule["op"]
            matches = op.startswith(name[:-1]) if name.endswith("*") else op == name
            if matches and rule["served"] < rule.get("times", 1):
                rule["served"] += 1
                return rule
    return None


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/__faults":
            with LOCK:
                data = json.dumps([{"op": r["op"], "fault": r["fault"], "served": r["served"]} for r in RULES]).encode()
            return self.answer(200, "application/json", data)
        protocol, op, service = operation(self.headers, body, self.command, self.path)
        rule = take(op)
        if rule and rule["fault"] == "reset":
            # An abortive close: the client sees "connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if rule and rule["fault"] in ("throttle", "500"):
            status, ctype, text = error_body(protocol, service, rule["fault"])
            return self.answer(status, ctype, text.encode())
        if rule and rule["fault"] == "delay":
            time.sleep(float(rule.get("seconds", 1)))
        upstream = http.client.HTTPConnection(ARGS.host, ARGS.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
        upstream.request(self.command, self.path, body=body, headers=headers)
        reply = upstream.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for k, v in reply.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    def answer(self, status, ctype, data):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", default="http://127.0.0.1:4566")
    parser.add_argument("--rules", required=True)
    args = parser.parse_args()
    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("faultproxy: the upstream must be on loopback")
    args.host, args.port = upstream.hostname, upstream.port or 80
    ARGS = args
    for rule in json.load(open(args.rules)):
        rule["served"] = 0
        RULES.append(rule)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    print(f"port={server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
