"""An ordinary one-rating request to the newcomer tab while four hostile requests run: the app in its
own process, the attacker in another, as a remote caller would be. Prints one markdown table.

Each round the attacker sends four requests at once over Gradio's HTTP API (encoded beforehand): one with 10,000
unknown titles and one of 100 rows by 60,000 columns (13 MB; both refused before Gradio parses them), two with the
largest table accepted (100 titles) for the slowest model (the nn's 200-step fold-in); once they are sent, the
ordinary request is sent and timed.

    python bench/app_hostile.py --model /tmp/ml100k-model        # the figures in BENCHMARKS.md
    python bench/app_hostile.py --model /tmp/ml100k-model --quick
"""
import argparse
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACK = textwrap.dedent("""
    import json, sys, threading, urllib.error, urllib.request
    url = sys.argv[1]

    def join(name, payload):  # Gradio's HTTP API: join the queue; the answer is read from its event stream
        request = urllib.request.Request(f"{url}gradio_api/call/{name}", payload, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return json.load(answer)["event_id"]
        except urllib.error.HTTPError as err:  # 413: too large to read; nothing to wait for
            assert err.code == 413, err.code
            return None

    def answer(name, event):
        if event is None:
            return ""
        with urllib.request.urlopen(f"{url}gradio_api/call/{name}/{event}", timeout=60) as stream:
            return stream.read().decode()

    def titles(query):
        data = [line for line in answer("suggest_titles", join("suggest_titles", json.dumps(
            {"data": [query, 50]}).encode())).splitlines() if line.startswith("data:")][-1]
        return json.loads(data[5:])[0]

    known = list(dict.fromkeys(titles("") + titles("the")))[:100]
    # Encoded once: a remote attacker's bytes cost this machine nothing until they arrive.
    wide = {"headers": ["title", "rating", *(f"extra {i}" for i in range(60_000))],
            "data": [[title, 4, *[0] * 60_000] for title in known]}
    tables = [{"headers": ["title", "rating"], "data": [[f"Unknown film {i}", 4] for i in range(10_000)]}, wide,
              *[{"headers": ["title", "rating"], "data": [[title, 4] for title in known]}] * 2]
    bodies = [json.dumps({"data": [table, "nn", 50]}).encode() for table in tables]
    for line in sys.stdin:  # a round: four hostile requests at once, reported joined, then answered
        events = [join("newcomer", body) for body in bodies]
        print("joined", flush=True)
        readers = [threading.Thread(target=answer, args=("newcomer", event)) for event in events]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        print("answered", flush=True)
""")
ORDINARY = {"headers": ["title", "rating"], "data": [["Star Wars (1977)", 5]], "metadata": None}


def serve(model):
    """`python app.py --model MODEL` on a free port: (process, url) once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "app.py", "--model", str(model), "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url, deadline = f"http://127.0.0.1:{port}/", time.perf_counter() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return server, url
        except OSError:
            if server.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(f"app.py did not start: {server.stderr.read()[-2000:]}")
            time.sleep(0.3)


def attackers(url):
    """The attacking process, ready for rounds."""
    return subprocess.Popen([sys.executable, "-c", ATTACK, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def ordinary_waits(client, n, attacking=None):
    """Seconds each of `n` ordinary requests took (each sent while four hostile ones run, when `attacking`)."""
    waits = []
    for _ in range(n):
        if attacking:
            attacking.stdin.write("go\n")
            attacking.stdin.flush()
            assert attacking.stdout.readline().strip() == "joined"
        started = time.perf_counter()
        summary, picks = client.predict(ORDINARY, "topn", 10, api_name="/newcomer")
        waits.append(time.perf_counter() - started)
        assert "From your 1 rating" in summary and len(picks["data"]) == 10, summary
        if attacking:
            assert attacking.stdout.readline().strip() == "answered"
    return waits


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a MovieLens 100k model folder written by train.py")
    p.add_argument("--quick", action="store_true", help="5 requests each instead of 30")
    args = p.parse_args()
    from gradio_client import Client

    n = 5 if args.quick else 30
    server, url = serve(args.model)
    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        quiet = ordinary_waits(client, n)
        attacking = attackers(url)
        try:
            under_attack = ordinary_waits(client, n, attacking)
        finally:
            attacking.kill()
    finally:
        server.terminate()
    print("| one-rating request | median | p95 | max |\n|---|---|---|---|")
    for name, waits in (("alone", quiet), ("while four hostile requests run", under_attack)):
        p95 = sorted(waits)[int(0.95 * (len(waits) - 1))]
        print(f"| {name} | {statistics.median(waits):.3f} s | {p95:.3f} s | {max(waits):.3f} s |")
    print(f"\n{n} requests each through gradio_client (which polls every 50 ms); app.py --model {args.model}")


if __name__ == "__main__":
    main()
