"""The app under load: cold start, per-endpoint latency with 1 and 16 concurrent gradio_client callers, 100
concurrent requests, and the server's resident memory. Prints one markdown table.

gradio_client polls for results (50 ms sleeps), so two more columns separate the server from the client: one
caller over plain HTTP (POST /gradio_api/call/<name>, then read the answer's event stream), and the server's CPU
time per call (from /proc, during the one-caller runs).

    python bench/app_latency.py --model /tmp/ml100k-model          # the figures in BENCHMARKS.md
    python bench/app_latency.py --model /tmp/ml100k-model --quick  # a smoke run

The server is `python app.py --model FOLDER` in a subprocess on 127.0.0.1; cold start runs from spawning it to its
first answer (the model is a local folder, so nothing is downloaded).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


def resident_mib(pid):
    """(current, peak) resident memory of `pid` in MiB."""
    try:
        import psutil
        info = psutil.Process(pid).memory_info()
        peak = getattr(info, "peak_wset", None)  # psutil has no peak RSS on Linux; /proc below does
        if peak is not None:
            return info.rss / 2**20, peak / 2**20
    except ImportError:
        pass
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid):
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_latencies(url, api_name, inputs, calls):
    """Milliseconds per call over Gradio's plain HTTP API, one caller."""
    import httpx

    times = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(calls):
            started = time.perf_counter()
            event = http.post(f"/gradio_api/call{api_name}", json={"data": inputs}).json()["event_id"]
            answer = http.get(f"/gradio_api/call{api_name}/{event}").text
            times.append((time.perf_counter() - started) * 1000)
            if "event: complete" not in answer:
                raise SystemExit(f"{api_name} failed over HTTP: {answer[:300]}")
    return times


def start_server(model, port, user, log):
    """Spawn the app; returns (process, seconds from spawn to its first rate_user answer, its url)."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py", "--model", str(model), "--host", "127.0.0.1",
                                "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with status {process.returncode}; see {log.name}")
        try:
            client(url).predict(user, "both", 10, api_name="/rate_user")
            return process, time.perf_counter() - started, url
        except Exception:  # not listening yet
            if time.perf_counter() - started > 300:
                process.kill()
                raise SystemExit(f"no answer within 300 s; see {log.name}")
            time.sleep(0.2)


def import_seconds(module):
    """Wall seconds of `python -c "import MODULE"`: the part of a cold start no app code can remove."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)
    return time.perf_counter() - started


def requests(url, user):
    """(name, api_name, inputs) for every endpoint, on a user and the most-rated title of the served model."""
    probe = client(url)
    info = probe.predict(api_name="/model_info")
    kind = info["models"][0]
    title = probe.predict("", 1, api_name="/suggest_titles")[0]
    ratings = {"headers": ["title", "rating"], "data": [[title, 5]], "metadata": None}
    both = "both" if len(info["models"]) > 1 else kind
    calls = [
        (f"rate_user ({kind})", "/rate_user", [user, kind, 10]),
        ("rate_user (both)", "/rate_user", [user, both, 10]),
        (f"similar ({kind})", "/similar", [title, kind, 10]),
        (f"newcomer ({kind})", "/newcomer", [ratings, kind, 10]),
        ("who_would_like", "/who_would_like", [title, kind, 10]),
        ("embedding_map", "/embedding_map", [kind, 50]),
        ("suggest_titles", "/suggest_titles", ["star", 10]),
        ("model_info", "/model_info", []),
    ]
    if "dot" in info["models"]:
        calls.insert(6, ("biases", "/biases", [10]))
    if "nn" in info["models"]:
        calls.insert(4, ("newcomer (nn)", "/newcomer", [ratings, "nn", 10]))
    return calls


def latencies(clients, api_name, inputs, per_caller):
    """Milliseconds of each call when len(clients) callers each make `per_caller` calls at once."""
    times, barrier = [], threading.Barrier(len(clients))

    def caller(each):
        barrier.wait()
        mine = []
        for _ in range(per_caller):
            started = time.perf_counter()
            each.predict(*inputs, api_name=api_name)
            mine.append((time.perf_counter() - started) * 1000)
        return mine

    with ThreadPoolExecutor(len(clients)) as pool:
        for mine in pool.map(caller, clients):
            times.extend(mine)
    return times


def p50_p95(times):
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def hundred_at_once(url, calls):
    """Submit 100 requests (the endpoints in turn) before any answer; returns (answered, failed, seconds)."""
    single = client(url)
    started = time.perf_counter()
    jobs = [single.submit(*inputs, api_name=api_name) for _, api_name, inputs in
            (calls[i % len(calls)] for i in range(100))]
    answered = failed = 0
    for job in jobs:
        try:
            job.result(timeout=300)
            answered += 1
        except Exception as err:  # counted, and the first few shown
            failed += 1
            if failed <= 3:
                print(f"failed: {err!r}", file=sys.stderr)
    return answered, failed, time.perf_counter() - started


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a local model folder (train.py --out)")
    p.add_argument("--calls", type=int, default=40, help="calls per endpoint with one caller (default 40)")
    p.add_argument("--per-caller", type=int, default=5, help="calls per caller with 16 callers (default 5)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 5 calls, 1 per concurrent caller")
    args = p.parse_args(argv)
    calls_1, per_caller = (5, 1) if args.quick else (args.calls, args.per_caller)

    users = json.loads((Path(args.model) / "vocab.json").read_text())["users"]
    user = str(users[min(42, len(users) - 1)])
    floor = import_seconds("gradio")
    with tempfile.NamedTemporaryFile("w", prefix="hfcf-app-", suffix=".log", delete=False) as log:
        process, cold, url = start_server(args.model, free_port(), user, log)
    try:
        idle, _ = resident_mib(process.pid)
        before = cpu_seconds(process.pid)
        time.sleep(5)
        resting = (cpu_seconds(process.pid) - before) / 5 * 100
        calls = requests(url, user)
        one, sixteen = [client(url)], [client(url) for _ in range(16)]
        rows = []
        for name, api_name, inputs in calls:
            latencies(one, api_name, inputs, 2)  # warm up
            cpu = cpu_seconds(process.pid)
            single = p50_p95(latencies(one, api_name, inputs, calls_1))
            http = p50_p95(http_latencies(url, api_name, inputs, calls_1))
            cpu = (cpu_seconds(process.pid) - cpu) / (2 * calls_1) * 1000
            crowd = p50_p95(latencies(sixteen, api_name, inputs, per_caller))
            rows.append((f"`{api_name[1:]}` {name.partition(' ')[2]}".strip(), f"{single[0]:.0f} / {single[1]:.0f}",
                         f"{crowd[0]:.0f} / {crowd[1]:.0f}", f"{http[0]:.0f} / {http[1]:.0f}", f"{cpu:.0f}"))
        answered, failed, seconds = hundred_at_once(url, calls)
        loaded, peak = resident_mib(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)

    print(f"| model {Path(args.model).name}; ms: median / p95 | gradio_client, 1 caller | gradio_client, "
          "16 concurrent callers | HTTP, 1 caller | server CPU per call (ms) |")
    print("|---|---|---|---|---|")
    print(f"| cold start: process start to first answer | {cold:.1f} s | | | |")
    print(f"| of which no app can save: `python -c 'import gradio'` | {floor:.1f} s | | | |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"| 100 requests submitted at once (mixed endpoints) | | {answered} answered, {failed} failed, "
          f"{seconds:.1f} s | | |")
    print(f"| server resident memory: idle; after load (peak) | {idle:.0f} MiB | {loaded:.0f} MiB ({peak:.0f}) | | |")
    print(f"| server CPU with no requests (% of one core) | {resting:.1f} % | | | |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
