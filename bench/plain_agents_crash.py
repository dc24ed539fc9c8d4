#!/usr/bin/env python3
"""The stall of the engine issue, tried as a new user would: two agents written from the README
alone (plain HTTP, standard library, no SDK, never `held`; lease up to 4, then complete each),
60 DAG tasks, and `baton serve` killed with SIGKILL three times while they run. Reports how
many acknowledged tasks are still unfinished a while after the last restart.

    python3 bench/plain_agents_crash.py target/release/baton [LEASE_MS] [WAIT_S]
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, method="GET", body=None, token=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read() or b"null")


class Server:
    def __init__(self, binary, data, port, lease_ms):
        self.args = [binary, "serve", "--port", str(port), "--data-dir", data, "--lease-ms", str(lease_ms)]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                call(self.url + "/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.025)
        raise RuntimeError("server did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def agent(url, stop):
    """A README agent: register, then lease up to 4 and complete each; retry on errors."""
    while not stop.is_set():
        try:
            _, reg = call(url + "/agents", "POST", {"name": "py", "capabilities": ["step"], "max_concurrency": 4})
            break
        except OSError:
            time.sleep(0.1)
    agent_id, token = reg["agent_id"], reg["token"]
    while not stop.is_set():
        try:
            _, got = call(f"{url}/agents/{agent_id}/lease", "POST", {"max": 4, "wait_ms": 500}, token)
            for a in got["assignments"]:
                try:
                    call(f"{url}/assignments/{a['assignment_id']}/complete", "POST", {"outputs": {"ok": True}}, token)
                except urllib.error.HTTPError:
                    pass  # 409: superseded; nothing to do
        except (OSError, urllib.error.HTTPError):
            time.sleep(0.1)


def dag(i):
    steps = [{"id": "a", "capability": "step"}]
    steps += [{"id": f"b{k}", "capability": "step", "depends_on": ["a"]} for k in range(4)]
    steps += [{"id": "c", "capability": "step", "depends_on": [f"b{k}" for k in range(4)]}]
    return {"task_id": f"dag-{i}", "title": "t", "description": "d", "plan": {"subtasks": steps}}


def main():
    binary = sys.argv[1]
    lease_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    wait_s = float(sys.argv[3]) if len(sys.argv) > 3 else 30
    with tempfile.TemporaryDirectory() as data:
        server = Server(binary, data, free_port(), lease_ms)
        server.start()
        stop = threading.Event()
        threads = [threading.Thread(target=agent, args=(server.url, stop), daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        acknowledged = set()
        i = 0
        for kill in range(3):
            deadline = time.time() + 0.4
            while time.time() < deadline and i < 60:
                try:
                    call(server.url + "/tasks", "POST", dag(i))
                    acknowledged.add(f"dag-{i}")
                except (OSError, urllib.error.HTTPError):
                    pass
                i += 1
            server.kill()
            time.sleep(0.2)
            server.start()
        while i < 60:
            call(server.url + "/tasks", "POST", dag(i))
            acknowledged.add(f"dag-{i}")
            i += 1
        time.sleep(wait_s)
        unfinished = []
        for t in sorted(acknowledged):
            _, d = call(f"{server.url}/tasks/{t}")
            if d["status"] != "completed":
                unfinished.append(t)
        _, agents = call(server.url + "/agents")
        stop.set()
        server.kill()
    slots = [(a["in_flight"], a["max_concurrency"]) for a in agents["agents"]]
    print(f"acknowledged {len(acknowledged)} tasks; {len(unfinished)} not completed {wait_s:.0f} s "
          f"after the last restart (lease {lease_ms} ms); agents in_flight/max: {slots}")


if __name__ == "__main__":
    main()
