#!/usr/bin/env python3
"""64 concurrent logins against a real shipshape, then its peak RSS (the kernel's VmHWM).

Usage: bench/login-burst.py [BINARY] [CONCURRENCY]  (PASSWORD_HASH_CONCURRENCY, default 2)
A burst of logins must not exhaust a 256 MB VM (docs/api.md, "Security notes"); the goal is a peak below 100 MB.
"""
import concurrent.futures, json, os, socket, subprocess, sys, tempfile, time, urllib.request

binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/shipshape"
hash_concurrency = sys.argv[2] if len(sys.argv) > 2 else "2"
BURST = 64

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port

def request(url, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])

with tempfile.TemporaryDirectory() as work:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "DATABASE_URL": f"sqlite://{work}/app.db",
           "PASSWORD_HASH_CONCURRENCY": hash_concurrency, "RATE_LIMIT_LOGIN": "off", "RATE_LIMIT_GLOBAL": "off",
           "LOG_LEVEL": "warn"}
    server = subprocess.Popen([os.path.abspath(binary), "serve"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if request(base + "/healthz") == 200:
                    break
            except OSError:
                time.sleep(0.05)
        creds = {"email": "burst@example.com", "password": "correct horse battery staple"}
        assert request(base + "/api/v1/auth/signup", creds) == 201
        idle = status_kb(server.pid, "VmRSS")
        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
            statuses = list(pool.map(lambda _: request(base + "/api/v1/auth/login", creds), range(BURST)))
        elapsed = time.time() - started
        peak = status_kb(server.pid, "VmHWM")
        print(f"{BURST} concurrent logins, PASSWORD_HASH_CONCURRENCY={hash_concurrency}: "
              f"statuses {sorted(set(statuses))}, {elapsed:.1f} s, RSS before {idle / 1024:.1f} MB, "
              f"peak {peak / 1024:.1f} MB")
        assert statuses == [200] * BURST, statuses
    finally:
        server.terminate()
        server.wait()
