#!/usr/bin/env python3
"""Drives bench/run.sh's measurements and writes bench/RESULTS.md (see run.sh)."""
import argparse, base64, json, os, re, secrets, shutil, socket, sqlite3, statistics, subprocess, sys, tempfile, time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPSHAPE = os.path.join(ROOT, "target/release/shipshape")
BASELINE = os.path.join(ROOT, "target/release/shipshape-baseline")
WARMUP, MEASURE, CONNECTIONS = 3, 10, 64
STATS_CONNECTIONS = 16
ROUNDS = 3  # for the rows with a ratio target
DEFAULT_SIZES = "1000,100000,1000000"
POSTGRES = os.environ.get("TEST_DATABASE_URL")
# One signing key for both servers, so one token (from shipshape's signup) is valid on both.
SECRET_KEY = secrets.token_urlsafe(48)
work = tempfile.mkdtemp(prefix="shipshape-bench-")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close(); return port


def http(url, body=None, token=None, method=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])


class Server:
    def __init__(self, kind, database_url, binary=SHIPSHAPE, extra_env=None):
        self.kind, self.port = kind, free_port()
        self.dir = tempfile.mkdtemp(dir=work)
        if kind == "shipshape":
            env = {
                "PATH": os.environ["PATH"], "APP_ENV": "production", "PORT": str(self.port), "HOST": "127.0.0.1",
                "SECRET_KEY": SECRET_KEY, "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DATABASE_URL": database_url, "RUN_MIGRATIONS_ON_START": "true", "LOG_FORMAT": "json",
                "METRICS_PORT": str(free_port()), "STATIC_DIR": os.path.join(ROOT, "static"),
                # Every limit on, too high to trigger, so its cost is counted.
                "RATE_LIMIT_GLOBAL": "100000000/s", "RATE_LIMIT_LOGIN": "100000000/s",
                "RATE_LIMIT_SIGNUP": "100000000/s", "RATE_LIMIT_INVOICE_CREATE": "100000000/s",
                "RATE_LIMIT_PASSWORD_RESET": "100000000/s",
            }
            env.update(extra_env or {})
            cmd = [binary, "serve"]
        else:
            env = {"PATH": os.environ["PATH"], "SECRET_KEY": SECRET_KEY}
            cmd = [BASELINE, str(self.port), database_url, os.path.join(ROOT, "static")]
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + cmd, cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.cold_start = self.wait_ready()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self):
        deadline = time.perf_counter() + 20
        while time.perf_counter() < deadline:
            if http(self.url("/readyz"))[0] == 200:
                return (time.perf_counter() - self.started) * 1000
            time.sleep(0.001)
        raise RuntimeError(f"{self.kind} did not become ready; see {self.log.name}")

    def rss_mb(self, field="VmRSS"):
        return proc_kb(self.proc.pid, field) / 1024

    def reset_peak(self):
        # Linux: writing 5 to clear_refs resets VmHWM, so each load gets its own peak.
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def wrk(url, script=None, headers=(), connections=None):
    base = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections or CONNECTIONS}", "--latency"]
    for h in headers:
        base += ["-H", h]
    # A callable script makes a fresh one for each run (refresh tokens are good for one use).
    fresh = script if callable(script) else lambda: script
    def run(seconds):
        path = fresh()
        command = base + (["-s", path] if path else []) + [f"-d{seconds}s", url]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout
    run(WARMUP)
    out = run(MEASURE)

    def latency(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": latency(50), "p99": latency(99),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1).strip() if errors else "",
    }


def lua(name, body, method="POST"):
    path = os.path.join(work, name + ".lua")
    with open(path, "w") as f:
        f.write(f'wrk.method = "{method}"\nwrk.body = {json.dumps(json.dumps(body))}\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    return path


def postgres_database():
    name = "shipshape_bench_" + secrets.token_hex(4)
    subprocess.run(["psql", POSTGRES, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    return name, re.sub(r"/[^/?]*(\?|$)", f"/{name}\\1", POSTGRES, count=1) if POSTGRES.count("/") > 2 else POSTGRES + "/" + name


def drop_postgres_database(name):
    subprocess.run(["psql", POSTGRES, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], capture_output=True)


CREDS = {"email": "bench@example.com", "password": "correct horse battery staple"}
INVOICE = {"customer_name": "Bench Ltd", "amount_cents": 1999, "currency": "USD"}


def signup(server, creds=CREDS):
    status, body = http(server.url("/api/v1/auth/signup"), creds)
    assert status == 201, (status, body)
    return json.loads(body)["token"]


SPREAD_USERS = 16


def spread_create(server, name):
    """A wrk script creating invoices for SPREAD_USERS users in turn: the create row of one user
    queues every request on that user's aggregates row; this one shows the cost without the queue."""
    tokens = [signup(server, {"email": f"spread{n}@example.com", "password": CREDS["password"]})
              for n in range(SPREAD_USERS)]
    path = os.path.join(work, name + ".lua")
    with open(path, "w") as f:
        f.write("tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}\ni = 0\n"
                f"body = {json.dumps(json.dumps(INVOICE))}\n"
                "request = function()\n  i = i % #tokens + 1\n"
                '  return wrk.format("POST", nil, {["Content-Type"] = "application/json", '
                '["Authorization"] = "Bearer " .. tokens[i]}, body)\nend\n')
    return path


def refresh_script(server, name):
    """A wrk script refreshing CONNECTIONS sessions of one user: each response's new refresh token
    is queued for a later request, as every token is good for one use (a reused one ends its
    session). Fresh sessions for each call."""
    tokens = []
    for _ in range(CONNECTIONS + 8):  # wrk may ask for a request or two before any answer
        status, body = http(server.url("/api/v1/auth/login"), CREDS)
        assert status == 200, (status, body)
        tokens.append(json.loads(body)["refresh_token"])
    path = os.path.join(work, name + ".lua")
    with open(path, "w") as f:
        f.write("tokens = {" + ",".join(f'"{t}"' for t in tokens) + "}\n"
                "request = function()\n"
                '  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, '
                "'{\"refresh_token\":\"' .. (table.remove(tokens, 1) or 'none') .. '\"}')\nend\n"
                "response = function(status, headers, body)\n"
                '  local token = body:match(\'"refresh_token":"([^"]+)"\')\n'
                "  if token then table.insert(tokens, token) end\nend\n")
    return path


def token_subject(token):
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]


def main_run(out):
    static_file = os.path.join(ROOT, "static", "bench-20k.txt")
    with open(static_file, "w") as f:
        f.write(("shipshape benchmark payload " * 800)[:20480])
    rows, notes = [], []
    pg_name = None
    try:
        sqlite_url = f"sqlite://{work}/bench.db"
        # Cold start: exec to first /readyz 200, median of 5, migrations applied (first run migrates).
        cold = {"shipshape": [], "baseline": []}
        for _ in range(5):
            for kind in ("shipshape", "baseline"):
                s = Server(kind, sqlite_url if kind == "shipshape" else f"sqlite://{work}/baseline.db?mode=rwc")
                cold[kind].append(s.cold_start)
                s.stop()

        # shipshape migrates the database and signs the user up; the baseline then serves the
        # same database (same schema, same indexes, same rows) with the same signing key.
        ship = Server("shipshape", sqlite_url)
        base = Server("baseline", sqlite_url)
        idle = {"shipshape": ship.rss_mb(), "baseline": base.rss_mb()}
        token = signup(ship)
        for _ in range(20):
            assert http(ship.url("/api/v1/invoices"), INVOICE, token)[0] == 201
        auth = f"Authorization: Bearer {token}"
        create = lua("create", INVOICE)
        check_same_list(ship, base, token)

        def pair(label, server, baseline, ship_path, base_path, rounds=1, same=None, **kw):
            # Alternate: baseline, shipshape, so drift on this shared machine hits both. Rows with
            # a ratio target run several rounds and keep the one with the median ratio.
            # `same` (the default for equal paths): the baseline gets the same headers and script.
            same = ship_path == base_path if same is None else same
            results = []
            server.reset_peak()
            for _ in range(rounds):
                b = wrk(baseline.url(base_path), **(kw if same else {}))
                s = wrk(server.url(ship_path), **kw)
                results.append((s["rps"] / b["rps"], s, b))
            _, s, b = sorted(results, key=lambda r: r[0])[len(results) // 2]
            s["peak"] = server.rss_mb("VmHWM")
            s["ratios"] = [r[0] for r in results]
            rows.append((label, s, b, "same path" if same else base_path))

        pair("/healthz", ship, base, "/healthz", "/healthz", rounds=ROUNDS)
        pair("GET /api/v1/nope (404, logged)", ship, base, "/api/v1/nope", "/healthz", rounds=ROUNDS)
        pair("/readyz (SQLite)", ship, base, "/readyz", "/readyz", rounds=ROUNDS)
        pair("20 KB static file", ship, base, "/static/bench-20k.txt", "/static/bench-20k.txt", rounds=ROUNDS)
        pair("GET /api/v1/invoices (auth, 20 items, SQLite)", ship, base, "/api/v1/invoices", "/api/v1/invoices",
             rounds=ROUNDS, headers=[auth])
        pair("POST /api/v1/invoices (SQLite)", ship, base, "/api/v1/invoices", "/api/v1/invoices",
             rounds=ROUNDS, headers=[auth], script=create)
        pair(f"POST /api/v1/invoices ({SPREAD_USERS} users in turn, SQLite)", ship, base, "/api/v1/invoices",
             "/api/v1/invoices", rounds=ROUNDS, script=spread_create(ship, "spread-sqlite"))
        pair("GET /api/v1/me (SQLite)", ship, base, "/api/v1/me", "/api/v1/me", rounds=ROUNDS, headers=[auth])
        pair("POST /api/v1/auth/refresh (SQLite)", ship, base, "/api/v1/auth/refresh", "/healthz",
             script=lambda: refresh_script(ship, "refresh"))
        pair("POST /api/v1/auth/login", ship, base, "/api/v1/auth/login", "/healthz", script=lua("login", CREDS))
        peak = {"baseline": base.rss_mb("VmHWM")}
        ship.stop()
        base.stop()
        if POSTGRES:
            pg_name, url = postgres_database()
            pg = Server("shipshape", url)
            pg_base = Server("baseline", url)
            token = signup(pg)
            for _ in range(20):
                assert http(pg.url("/api/v1/invoices"), INVOICE, token)[0] == 201
            auth = f"Authorization: Bearer {token}"
            check_same_list(pg, pg_base, token)
            pair("/readyz (PostgreSQL)", pg, pg_base, "/readyz", "/readyz", rounds=ROUNDS)
            pair("GET /api/v1/invoices (auth, 20 items, PostgreSQL)", pg, pg_base, "/api/v1/invoices",
                 "/api/v1/invoices", rounds=ROUNDS, headers=[auth])
            pair("POST /api/v1/invoices (PostgreSQL)", pg, pg_base, "/api/v1/invoices", "/api/v1/invoices",
                 rounds=ROUNDS, headers=[auth], script=create)
            pair(f"POST /api/v1/invoices ({SPREAD_USERS} users in turn, PostgreSQL)", pg, pg_base, "/api/v1/invoices",
                 "/api/v1/invoices", rounds=ROUNDS, script=spread_create(pg, "spread-postgres"))
            pair("GET /api/v1/me (PostgreSQL)", pg, pg_base, "/api/v1/me", "/api/v1/me", rounds=ROUNDS,
                 headers=[auth])
            peak["baseline"] = max(peak["baseline"], pg_base.rss_mb("VmHWM"))
            pg.stop()
            pg_base.stop()
        else:
            notes.append("TEST_DATABASE_URL was not set: no PostgreSQL rows.")
    finally:
        os.remove(static_file)
        if pg_name:
            drop_postgres_database(pg_name)

    binary_mb = os.path.getsize(SHIPSHAPE) / 1024 / 1024
    write_results(out, main=main_section(rows, cold, idle, peak, binary_mb, notes))


def check_same_list(ship, base, token):
    """The baseline must answer the list as shipshape does, byte for byte, or its row means nothing."""
    a = http(ship.url("/api/v1/invoices"), token=token)
    b = http(base.url("/api/v1/invoices"), token=token)
    assert a[0] == b[0] == 200 and json.loads(a[1]) == json.loads(b[1]), ("list differs", a, b)


ANALYSIS_MARKER = "<!-- Hand-written analysis below: bench.py keeps it when it rewrites this file. -->"
SIZES_BEGIN = "<!-- bench.py --sizes writes from here... -->"
SIZES_END = "<!-- ...to here. -->"
AB_BEGIN = "<!-- bench.py --ab writes from here... -->"
AB_END = "<!-- ...to here (A/B). -->"
JOBS_BEGIN = "<!-- bench/jobs.sh writes from here... -->"
JOBS_END = "<!-- ...to here (jobs). -->"


def write_results(path, main=None, sizes=None, ab=None, jobs=None):
    """Rewrites `path`: the main tables (default mode), the scaling tables (`--sizes`), the
    A/B of two binaries (`--ab`) and the jobs figures (`bench/jobs.sh`) are generated, each
    mode keeping the others' sections and the hand-written analysis."""
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    analysis = ""
    if ANALYSIS_MARKER in old:
        old, analysis = old.split(ANALYSIS_MARKER, 1)

    def cut_section(text, begin, end):
        if begin in text and end in text:
            inner = text[text.index(begin) + len(begin):text.index(end)].strip("\n")
            return text[:text.index(begin)] + text[text.index(end) + len(end):].lstrip("\n"), inner
        return text, ""

    old, old_jobs = cut_section(old, JOBS_BEGIN, JOBS_END)
    old, old_ab = cut_section(old, AB_BEGIN, AB_END)
    old, old_sizes = cut_section(old, SIZES_BEGIN, SIZES_END)
    main = (main if main is not None else old).rstrip("\n")
    text = main + "\n\n"
    sections = ((SIZES_BEGIN, SIZES_END, sizes, old_sizes), (AB_BEGIN, AB_END, ab, old_ab),
                (JOBS_BEGIN, JOBS_END, jobs, old_jobs))
    for begin, end, new, kept in sections:
        section = (new if new is not None else kept).strip("\n")
        if section:
            text += begin + "\n\n" + section + "\n\n" + end + "\n\n"
    text += ANALYSIS_MARKER + analysis
    with open(path, "w") as f:
        f.write(text)


def run_header(title, what):
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    lines = [title, ""]
    if (WARMUP, MEASURE) != (3, 10) or ROUNDS < 3:
        rounds = f", {ROUNDS} round(s)" if "--sizes" not in what else ""
        lines += [f"**Smoke run** ({WARMUP} s warm-up, {MEASURE} s measured{rounds}): it shows the script "
                  "works end to end; its figures are not results.", ""]
    lines.append(f"Measured by `{what}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores ({cpu}).")
    return lines


def main_section(rows, cold, idle, peak, binary_mb, notes):
    lines = run_header("# Benchmark results", "bench/run.sh") + [
        f"Server pinned to CPU 0, wrk to CPU 1, {CONNECTIONS} connections, {WARMUP} s warm-up, {MEASURE} s measured, "
        "baseline and shipshape alternating. shipshape runs with production settings: JSON logs to a file, metrics on, "
        "every rate limiter on (limit too high to trigger), SQLite unless noted.",
        "Ratios compare with the bare axum baseline (`bench/baseline`) **in this same run**; absolute numbers move "
        "10–60 % between runs on this shared machine.",
        "The invoice rows are a same-work comparison: the baseline serves the same database (migrated by shipshape: "
        "same schema and indexes), verifies the same HS256 token, runs shipshape's keyset query and answers the "
        "same JSON (bench.py checks the two lists are equal), with the same pool size; its pool keeps sqlx's default "
        "ping before every acquire, where shipshape's pings only a connection idle for a second or more. Its create "
        "runs shipshape's "
        "SQL word for word: the insert and the owner's aggregates row (`user_stats_shards`) in one call to the "
        "database (one statement on PostgreSQL, one transaction in one call on SQLite), without shipshape's input "
        "rules or its SQLite writer queue. The create "
        f"rows post as one user, as the list does; the \"{SPREAD_USERS} users in turn\" rows spread the same "
        "load over several users, so fewer requests share an aggregates row. The baseline's `/api/v1/me` verifies "
        "the token and reads the user as shipshape does; shipshape also checks the session (cached per instance). "
        "Refresh has no same-work peer: its ratio is against the baseline's `/healthz`.",
        "Peak RSS is shipshape's own peak during that row's load (VmHWM, reset before each row).",
        f"Rows with a ratio target ran {ROUNDS} alternating rounds; the ratio shown is the median round's, "
        "with every round's ratio in brackets.",
        "",
        "| endpoint | shipshape req/s | baseline req/s (path) | ratio | p50 ms | p99 ms | non-2xx | socket errors | peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    ratios = {}
    for label, s, b, base_path in rows:
        ratios[label] = s["rps"] / b["rps"]
        ratio = f"{ratios[label]:.2f}×"
        if len(s.get("ratios", [])) > 1:
            ratio += " (" + ", ".join(f"{r:.2f}" for r in s["ratios"]) + ")"
        lines.append(f"| {label} | {s['rps']:,.0f} | {b['rps']:,.0f} ({base_path}) | {ratio} | {s['p50']:.2f} | {s['p99']:.2f} "
                     f"| {s['non2xx']} | {s['errors'] or 'none'} | {s['peak']:.1f} MB |")
    by_label = {label: s for label, s, _, _ in rows}
    cold_ms = statistics.median(cold["shipshape"])
    # Login hashes with Argon2id at 19 MiB per hash by design, so it is judged apart; so is
    # refresh, whose sessions come from logins made during its row.
    loaded = {label: s["peak"] for label, s in by_label.items() if "login" not in label and "refresh" not in label}
    worst = max(loaded, key=loaded.get)
    non2xx = sum(s["non2xx"] for label, s in by_label.items() if "nope" not in label)

    def target(name, goal, measured, met):
        lines.append(f"| {name} | {goal} | {measured} | {'met' if met else '**gap**'} |")

    lines += [
        "",
        "| figure | shipshape | baseline |",
        "|---|---:|---:|",
        f"| cold start, exec to first `/readyz` 200 (median of 5) | {cold_ms:.1f} ms | {statistics.median(cold['baseline']):.1f} ms |",
        f"| idle RSS | {idle['shipshape']:.1f} MB | {idle['baseline']:.1f} MB |",
        f"| peak RSS over the whole run | {max(s['peak'] for s in by_label.values()):.1f} MB | {peak['baseline']:.1f} MB |",
        f"| stripped release binary | {binary_mb:.1f} MB | |",
        "",
        "## Targets (this run)",
        "",
        "| target | goal | measured | |",
        "|---|---|---|---|",
    ]
    goals = [("/healthz", 0.90, "baseline"), ("GET /api/v1/nope (404, logged)", 0.60, "baseline `/healthz`"),
             ("/readyz (SQLite)", 0.90, "baseline"), ("20 KB static file", 0.80, "baseline's plain `ServeDir`")]
    goals += [(label, 0.90, "the same-work baseline") for label in ratios if "/api/v1/invoices" in label]
    for label, goal, against in goals:
        target(label, f"≥ {goal:.2f}× {against}", f"{ratios[label]:.2f}×", ratios[label] >= goal)
    target("idle RSS", "≤ 15 MB", f"{idle['shipshape']:.1f} MB", idle["shipshape"] <= 15)
    target("peak RSS under the 64-connection load (every row but login and refresh)", "≤ 40 MB", f"{loaded[worst]:.1f} MB ({worst})", loaded[worst] <= 40)
    target("cold start on SQLite, migrations applied", "≤ 50 ms", f"{cold_ms:.1f} ms", cold_ms <= 50)
    target("non-2xx on every non-limited endpoint (the 404 row is 404 by design)", "0", str(non2xx), non2xx == 0)
    target("stripped release binary", "≤ 25 MB", f"{binary_mb:.1f} MB", binary_mb <= 25)
    lines.append("")
    lines += [f"Note: {n}" for n in notes]
    text = "\n".join(lines)
    print(text)
    return text


# ---------------------------------------------------------------------------------------------
# --sizes: how the database routes scale with the number of invoices of one user.

OTHER_USERS, OTHER_INVOICES = 4, 10_000
DEEP = 100_000  # rows into the list for the deep page
MINUTE_US = 60_000_000
# Newest invoice a month ago, then one a minute back in time: i = 1, 2, ... (i = 1 newest).
BASE_US = int(time.time() * 1_000_000) - 31 * 86_400 * 1_000_000


def invoice_select(db, user_index, user_id, first, last):
    """SELECT producing invoices i = first..last of one user, the same rows on both databases:
    ids are lowercase UUID v7 text (time-ordered, as `Uuid::now_v7` makes them), created_at unix
    microseconds, a status mix of 69.9 % draft, 30 % sent, 0.1 % paid (the rare status)."""
    created = f"({BASE_US} - i * {MINUTE_US})"
    ms = f"({created} / 1000)"
    if db == "sqlite":
        series = f"WITH RECURSIVE seq(i) AS (SELECT {first} UNION ALL SELECT i + 1 FROM seq WHERE i < {last}) "
        uuid = f"printf('%08x-%04x-7%03x-8000-%012x', {ms} / 65536, {ms} % 65536, {user_index}, i)"
        phone = "'+1415555' || printf('%04d', i % 10000)"
        source = "seq"
    else:
        series = ""
        uuid = (f"lpad(to_hex({ms} / 65536), 8, '0') || '-' || lpad(to_hex({ms} % 65536), 4, '0') || '-7' || "
                f"lpad(to_hex({user_index}), 3, '0') || '-8000-' || lpad(to_hex(i), 12, '0')")
        phone = "'+1415555' || lpad((i % 10000)::text, 4, '0')"
        source = f"generate_series({first}::bigint, {last}::bigint) AS i"
    paid, sent = "i % 1000 = 500", "i % 10 < 3"
    return (
        "INSERT INTO invoices (id, user_id, customer_name, customer_phone, amount_cents, currency, due_date, "
        "description, status, created_at, sent_at, paid_at) "
        f"{series}SELECT {uuid}, '{user_id}', 'Customer ' || (i % 997), "
        f"CASE WHEN i % 7 = 0 THEN {phone} END, 100 + (i * 7919) % 500000, "
        "CASE WHEN i % 7 = 3 THEN 'EUR' ELSE 'USD' END, NULL, "
        "CASE WHEN i % 3 = 0 THEN 'Consulting, ' || (i % 40) || ' hours' END, "
        f"CASE WHEN {paid} THEN 'paid' WHEN {sent} THEN 'sent' ELSE 'draft' END, {created}, "
        f"CASE WHEN {paid} OR {sent} THEN {created} + 3600000000 END, "
        f"CASE WHEN {paid} THEN {created} + 3600000000 + (1 + i % 30) * 86400000000 END "
        f"FROM {source}"
    )


def backfill(migration, tables):
    """The INSERT statements of a migration that backfill `tables`, in their order."""
    with open(os.path.join(ROOT, "migrations", migration)) as f:
        text = "\n".join(line for line in f if not line.lstrip().startswith("--"))
    statements = [st.strip() for st in text.split(";") if st.strip().startswith("INSERT INTO user_")]
    assert [st.split()[2] for st in statements] == tables, (migration, "no longer backfills", tables)
    return statements


def aggregates_sql():
    """The aggregates migrations' own backfill, after emptying the aggregates (the shards are
    copied from user_stats, the previous release's table, which is built from the invoices)."""
    return (["DELETE FROM user_paid_totals", "DELETE FROM user_stats", "DELETE FROM user_stats_shards"]
            + backfill("20261202000002_user_stats.up.sql", ["user_stats", "user_paid_totals"])
            + backfill("20261203000001_user_stats_shards.up.sql", ["user_stats_shards"]))


class Database:
    """The benchmark database of one backend, loaded directly with SQL (the server stopped)."""

    def __init__(self, kind):
        self.kind = kind
        if kind == "sqlite":
            self.path = os.path.join(work, "sizes.db")
            self.url = f"sqlite://{self.path}"
        else:
            self.name, self.url = postgres_database()

    def execute(self, statements):
        if self.kind == "sqlite":
            con = sqlite3.connect(self.path, isolation_level=None)
            con.execute("PRAGMA cache_size = -262144")
            con.execute("BEGIN")
            for st in statements:
                con.execute(st)
            con.execute("COMMIT")
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
        else:
            sql = "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n"
            subprocess.run(["psql", self.url, "-q", "-v", "ON_ERROR_STOP=1"], input=sql, text=True, check=True,
                           capture_output=True)

    def query_row(self, sql):
        if self.kind == "sqlite":
            con = sqlite3.connect(self.path)
            row = con.execute(sql).fetchone()
            con.close()
            return row
        out = subprocess.run(["psql", self.url, "-Atc", sql], text=True, check=True, capture_output=True).stdout
        return tuple(out.strip().split("|"))

    def analyze(self):
        # PostgreSQL's autovacuum would analyze a table grown this much within a minute; do it now
        # rather than measure plans made from an empty table's statistics. SQLite is left as
        # shipshape leaves it (no ANALYZE, so no sqlite_stat1).
        # The CHECKPOINT writes the load's dirty pages now, so the checkpointer's I/O does not
        # land in the measurements that follow (it needs a superuser or pg_checkpoint: skipped
        # without).
        if self.kind == "postgres":
            subprocess.run(["psql", self.url, "-qc", "VACUUM ANALYZE invoices"], check=True, capture_output=True)
            subprocess.run(["psql", self.url, "-qc", "CHECKPOINT"], check=False, capture_output=True)

    def drop(self):
        if self.kind == "postgres":
            drop_postgres_database(self.name)


def load(db, user_id, first, last):
    started = time.perf_counter()
    db.execute([invoice_select(db.kind, 0, user_id, first, last)] + aggregates_sql())
    db.analyze()
    return time.perf_counter() - started


def sizes_run(out, sizes, load_only=False):
    backends = ["sqlite"] + (["postgres"] if POSTGRES else [])
    results, loads, depths = {}, {}, {}
    for kind in backends:
        db = Database(kind)
        try:
            server = Server("shipshape", db.url)  # migrates
            token = signup(server)
            user_id = token_subject(token)
            auth = f"Authorization: Bearer {token}"
            server.stop()
            started = time.perf_counter()
            others = [f"00000000-0000-4000-8000-{u:012x}" for u in range(1, OTHER_USERS + 1)]
            db.execute([f"INSERT INTO users (id, email, password_hash, created_at) VALUES ('{u}', 'other{n}@example.com', "
                        f"'not a hash', {BASE_US})" for n, u in enumerate(others, 1)]
                       + [invoice_select(kind, n, u, 1, OTHER_INVOICES) for n, u in enumerate(others, 1)])
            loads[(kind, "others")] = time.perf_counter() - started
            print(f"==> {kind}: {OTHER_USERS} other users × {OTHER_INVOICES:,} invoices loaded in {loads[(kind, 'others')]:.1f} s", flush=True)
            loaded = 0
            for size in sizes:
                loads[(kind, size)] = load(db, user_id, loaded + 1, size)
                loaded = size
                print(f"==> {kind}: {size:,} invoices of the user (+{OTHER_USERS * OTHER_INVOICES:,} of others), "
                      f"loaded in {loads[(kind, size)]:.1f} s", flush=True)
                if load_only:
                    continue
                depth = min(DEEP, size // 2)
                created_at, deep_id = db.query_row(
                    f"SELECT created_at, id FROM invoices WHERE user_id = '{user_id}' "
                    f"ORDER BY created_at DESC, id DESC LIMIT 1 OFFSET {depth - 1}")
                server = Server("shipshape", db.url)
                paths = [
                    ("list, first page", "/api/v1/invoices", 20),
                    ("list, deep page", f"/api/v1/invoices?cursor={created_at}_{deep_id}", min(20, size - depth)),
                    ("list, status=paid (0.1 %)", "/api/v1/invoices?status=paid", None),
                    ("get one", f"/api/v1/invoices/{deep_id}", None),
                    ("stats summary", "/api/v1/stats/summary", None),
                    (f"stats summary, {STATS_CONNECTIONS} connections", "/api/v1/stats/summary", None),
                ]
                depths[(kind, size)] = depth
                for label, path, items in paths:
                    status, body = http(server.url(path), token=token)
                    assert status == 200, (label, status, body)
                    assert items is None or len(json.loads(body)["items"]) == items, (label, body[:200])
                    few = label.endswith(f"{STATS_CONNECTIONS} connections")
                    r = wrk(server.url(path), headers=[auth], connections=STATS_CONNECTIONS if few else None)
                    results[(kind, size, label)] = r
                    print(f"    {label}: {r['rps']:,.0f} req/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                          f"non-2xx {r['non2xx']}", flush=True)
                server.stop()
            summary = db.query_row(
                "SELECT CAST(SUM(draft) AS BIGINT), CAST(SUM(sent) AS BIGINT), CAST(SUM(paid) AS BIGINT) "
                f"FROM user_stats_shards WHERE user_id = '{user_id}'")
            assert [int(x) for x in summary] == expected_counts(loaded), ("aggregates", summary, expected_counts(loaded))
        finally:
            db.drop()
    if load_only:
        return
    write_results(out, sizes=sizes_section(backends, sizes, results, loads, depths))


def expected_counts(n):
    paid = sum(1 for i in range(1, n + 1) if i % 1000 == 500)
    sent = sum(1 for i in range(1, n + 1) if i % 10 < 3 and i % 1000 != 500)
    return [n - paid - sent, sent, paid]


def sizes_section(backends, sizes, results, loads, depths):
    def fmt_size(n):
        return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)

    lines = run_header("## Scaling with the data (`--sizes`)", "bench/run.sh --sizes " + ",".join(map(str, sizes)))
    lines += [
        f"shipshape alone, production settings, {CONNECTIONS} connections (the last row {STATS_CONNECTIONS}, as the "
        f"issue's stats target is stated), {WARMUP} s warm-up, {MEASURE} s measured, one round. "
        f"One user holds N invoices; {OTHER_USERS} other users hold {OTHER_INVOICES:,} each. Rows are made with SQL "
        "(SQLite: a recursive CTE; PostgreSQL: `generate_series`): ids are UUID v7 text, one invoice a minute, "
        "69.9 % draft, 30 % sent, 0.1 % paid; the aggregates are rebuilt with the migration's own backfill. "
        f"The deep page starts {DEEP:,} rows in (half the list when there are fewer), from a real cursor; "
        "\"get one\" is the invoice at that depth. PostgreSQL is `VACUUM ANALYZE`d and checkpointed after each load; SQLite is not "
        "analyzed (shipshape never runs `ANALYZE`). Each cell: req/s, then p50 / p99 in ms.",
        "",
    ]
    labels = list(dict.fromkeys(key[2] for key in results))
    for kind in backends:
        name = "SQLite" if kind == "sqlite" else "PostgreSQL"
        lines += [f"**{name}**", "", "| endpoint | " + " | ".join(f"{fmt_size(n)} invoices" for n in sizes) + " |",
                  "|---|" + "---:|" * len(sizes)]
        for label in labels:
            cells = []
            for n in sizes:
                r = results.get((kind, n, label))
                shallow = "deep" in label and depths[(kind, n)] < DEEP
                cells.append("–" if r is None else f"{r['rps']:,.0f} ({r['p50']:.2f} / {r['p99']:.2f})"
                             + (f" at {depths[(kind, n)]:,}" if shallow else "")
                             + (" **non-2xx {}**".format(r["non2xx"]) if r["non2xx"] else ""))
            shown = f"list, deep page ({DEEP:,} rows in)" if "deep" in label else label
            lines.append(f"| {shown} | " + " | ".join(cells) + " |")
        lines += ["", "Load time, SQL alone (server stopped): "
                  + f"other users {loads[(kind, 'others')]:.1f} s; "
                  + "; ".join(f"up to {fmt_size(n)} {loads[(kind, n)]:.1f} s" for n in sizes) + ".", ""]
    text = "\n".join(lines)
    print(text)
    return text


def ab_run(out, others):
    """This build against other shipshape binaries (label, path), same settings, same machine,
    all in one run: each serves its own SQLite database; rounds rotate which one goes first."""
    static_file = os.path.join(ROOT, "static", "bench-20k.txt")
    with open(static_file, "w") as f:
        f.write(("shipshape benchmark payload " * 800)[:20480])
    paths = [("/healthz", "/healthz"), ("GET /api/v1/nope (404, logged)", "/api/v1/nope"),
             ("/readyz (SQLite)", "/readyz"), ("20 KB static file", "/static/bench-20k.txt"),
             ("GET /api/v1/me (SQLite, signed in)", "/api/v1/me")]
    rows = []
    try:
        servers = [Server("shipshape", f"sqlite://{work}/ab-this.db")]
        servers += [Server("shipshape", f"sqlite://{work}/ab-{n}.db", binary=binary)
                    for n, (_, binary) in enumerate(others)]
        # /api/v1/me with each server's own token: the cost of authenticating a request.
        auth = [(f"Authorization: Bearer {signup(server)}",) for server in servers]
        for label, path in paths:
            rps = [[] for _ in servers]
            for round_ in range(ROUNDS):
                order = list(range(len(servers)))
                order = order[round_ % len(order):] + order[:round_ % len(order)]
                for n in order:
                    headers = auth[n] if path == "/api/v1/me" else ()
                    rps[n].append(wrk(servers[n].url(path), headers=headers)["rps"])
            rows.append((label, rps))
        for server in servers:
            server.stop()
    finally:
        os.remove(static_file)
    labels = [label for label, _ in others]
    lines = run_header("## A/B: this build against " + " and ".join(labels),
                       "bench/run.sh " + " ".join(f"--ab {binary} --label {label}" for label, binary in others))
    lines += ["", f"All with production settings on their own SQLite database, {CONNECTIONS} connections, "
              f"{ROUNDS} rounds in turn (each round starts with the next binary); a ratio is this build's "
              "requests/s over the other's in the same round, and the median of those is shown.", "",
              "| path | this build (median req/s) | "
              + " | ".join(f"{label} (median req/s) | ratio to {label} (per round)" for label in labels) + " |",
              "|---|---|" + "---|---|" * len(labels)]
    for label, rps in rows:
        cells = [f"{statistics.median(rps[0]):,.0f}"]
        for other in rps[1:]:
            ratios = [a / b for a, b in zip(rps[0], other)]
            cells.append(f"{statistics.median(other):,.0f}")
            cells.append(f"**{statistics.median(ratios):.2f}×** (" + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    write_results(out, ab="\n".join(lines))


NOTE = {"title": "Bench", "body": "A note of the benchmark", "pinned": False}


def generated_run(binary):
    """A resource written by scripts/new-resource (`notes`, see bench/generated-resource.sh)
    against the example's invoices on the same binary, list of 20 and create, rounds in turn.
    Prints a table for bench/RESULTS.md."""
    lines = ["| database | route | notes req/s | invoices req/s | notes / invoices (per round) | notes p99 ms |",
             "|---|---|---:|---:|---|---:|"]
    for kind in ["SQLite"] + (["PostgreSQL"] if POSTGRES else []):
        pg_name, url = postgres_database() if kind == "PostgreSQL" else (None, f"sqlite://{work}/generated.db")
        try:
            server = Server("shipshape", url, binary=binary, extra_env={"RATE_LIMIT_NOTES_CREATE": "100000000/s"})
            token = signup(server)
            for _ in range(20):
                assert http(server.url("/api/v1/notes"), NOTE, token)[0] == 201
                assert http(server.url("/api/v1/invoices"), INVOICE, token)[0] == 201
            auth = [f"Authorization: Bearer {token}"]
            for label, scripts in (("GET, 20 items", (None, None)),
                                   ("POST", (lua("note", NOTE), lua("create", INVOICE)))):
                notes, invoices = [], []
                for round_ in range(ROUNDS):
                    pair = [(notes, "/api/v1/notes", scripts[0]), (invoices, "/api/v1/invoices", scripts[1])]
                    for results, path, script in (pair if round_ % 2 else pair[::-1]):
                        results.append(wrk(server.url(path), script=script, headers=auth))
                ratios = [n["rps"] / i["rps"] for n, i in zip(notes, invoices)]
                lines.append(f"| {kind} | {label} | {statistics.median(n['rps'] for n in notes):,.0f} | "
                             f"{statistics.median(i['rps'] for i in invoices):,.0f} | "
                             f"{statistics.median(ratios):.2f}× ({', '.join(f'{r:.2f}' for r in ratios)}) | "
                             f"{statistics.median(n['p99'] for n in notes):.1f} |")
            server.stop()
        finally:
            if pg_name:
                drop_postgres_database(pg_name)
    print("\n".join(lines))


def main():
    global WARMUP, MEASURE, ROUNDS
    parser = argparse.ArgumentParser(description="shipshape load benchmark; writes bench/RESULTS.md")
    parser.add_argument("--sizes", nargs="?", const=DEFAULT_SIZES, metavar="N,N,...",
                        help=f"the scaling mode instead of the comparison (default sizes {DEFAULT_SIZES})")
    parser.add_argument("--load-only", action="store_true", help="with --sizes: load and time the data, measure nothing")
    parser.add_argument("--warmup", type=int, default=WARMUP, help=f"seconds per wrk warm-up (default {WARMUP})")
    parser.add_argument("--duration", type=int, default=MEASURE, help=f"seconds per wrk measurement (default {MEASURE})")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"alternating rounds of ratio rows (default {ROUNDS})")
    parser.add_argument("--ab", metavar="BINARY", action="append",
                        help="an A/B of the trivial paths against another shipshape binary (repeat for more)")
    parser.add_argument("--label", action="append", help="with --ab, once per binary: what to call it (a commit)")
    parser.add_argument("--generated", metavar="BINARY",
                        help="a build with a generated `notes` resource: its routes against the invoices' (prints a table)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"), help="the file to (re)write")
    args = parser.parse_args()
    WARMUP, MEASURE, ROUNDS = args.warmup, args.duration, args.rounds
    if args.generated:
        generated_run(args.generated)
    elif args.ab:
        labels = args.label or []
        if len(labels) != len(args.ab):
            parser.error("give one --label per --ab")
        ab_run(args.out, list(zip(labels, args.ab)))
    elif args.sizes:
        sizes = sorted({int(n) for n in args.sizes.split(",")})
        sizes_run(args.out, sizes, args.load_only)
    else:
        main_run(args.out)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(work, ignore_errors=True)
