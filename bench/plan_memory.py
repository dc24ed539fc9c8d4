#!/usr/bin/env python3
"""Memory a dense plan holds in `baton serve` while its task lives, per dependency edge.

Starts the given `baton` binary (`serve` on a temporary data dir and a free loopback port),
submits TASKS planned-only tasks (`POST /orchestrate`, so they stay in the engine's memory)
whose plan has N steps, each depending on every earlier one (N*(N-1)/2 edges, the body just
under the 1 MiB limit), and reports the growth of the server's resident memory per task and
per edge. Standard library only.

    python3 bench/plan_memory.py target/release/baton [TASKS]
"""
import json
import os
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

LIMIT = 1024 * 1024
ALPHABET = string.ascii_letters + string.digits


def step_ids(n):
    ids = list(ALPHABET)
    ids += [a + b for a in ALPHABET for b in ALPHABET]
    return ids[:n]


def body(task_id, n):
    ids = step_ids(n)
    steps = [{"id": ids[i], "capability": "c", "depends_on": ids[:i]} for i in range(n)]
    return json.dumps(
        {"task_id": task_id, "title": "dense", "description": "d", "plan": {"subtasks": steps}},
        separators=(",", ":"),
    ).encode()


def largest_plan():
    n = 2
    while len(body("t-000", n + 1)) <= LIMIT:
        n += 1
    return n


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, data):
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status


def main():
    binary = sys.argv[1]
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    n = largest_plan()
    edges = n * (n - 1) // 2
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [binary, "serve", "--port", str(port), "--data-dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            # One task first, so that allocator and connection warm-up are not counted.
            post(url + "/orchestrate", body("warm-up", n))
            time.sleep(0.5)
            before = rss_kib(server.pid)
            for i in range(tasks):
                status = post(url + "/orchestrate", body(f"t-{i:03}", n))
                assert status == 201, status
            time.sleep(0.5)
            after = rss_kib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    per_task = (after - before) * 1024 / tasks
    print(f"plan: {n} steps, {edges} edges, body {len(body('t-000', n))} bytes")
    print(f"rss: {before} KiB -> {after} KiB after {tasks} tasks")
    print(f"per task: {per_task / 1024 / 1024:.1f} MiB; per edge: {per_task / edges:.1f} bytes")


if __name__ == "__main__":
    main()
