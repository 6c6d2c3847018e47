"""`sllm serve` under load, on loopback, with a bounded asyncio client (httpx).

    python bench/serve_load.py throughput [--clients 1,4,8,16] [--tokens 128]
    python bench/serve_load.py load [--requests 2000] [--concurrency 32]
    python bench/serve_load.py engine [--clients 1,16]   (the batching engine, no HTTP;
        then the first-token latency of a 64-token prompt, engine idle and with 15 decoding)

The server is `python -m sllm serve MODEL` in a subprocess (cpp backend, --max-batch 16).
MODEL defaults to configs/small-model.json with random weights and a 5,000-word vocabulary
built from /work/shared/corpora/tinyshakespeare.txt (speed does not depend on the weights'
values; pass --model to use a trained one).

throughput: for each number of concurrent streaming clients (all in one run, side by side),
aggregate generated tokens/s, time to first token and the gaps between tokens (p50/p99).

load: >= 2,000 requests mixing streaming, non-streaming and malformed ones, more at once
than the server has slots and queue (so some 503s are deliberate). Checks: no 5xx but 503;
each malformed request gets 400; each reply equals its own request's output computed
without the server (greedy, or seeded sampling) and ends properly; nothing left active;
the server's RSS after the first 500 requests vs after the last 500.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import sllm
from sllm.generate import encode_prompt, stream_text
from sllm.tokenizer import WordTokenizer, from_dict

ROOT = Path(__file__).resolve().parent.parent
SHAKESPEARE = Path("/work/shared/corpora/tinyshakespeare.txt")


def make_model(path: Path) -> Path:
    """configs/small-model.json, random weights, a word vocabulary of tinyshakespeare."""
    text = SHAKESPEARE.read_text()
    tok = WordTokenizer.train(text, 5000)
    cfg = sllm.ModelConfig.from_json(ROOT / "configs" / "small-model.json")
    model = sllm.SLLM(cfg, backend="numpy", seed=0)
    model.tokenizer = tok.to_dict()
    model.save(path)
    return path


def prompts(n: int, seed: int = 0) -> list[str]:
    """n lines of tinyshakespeare (or of the demo corpus when it is absent)."""
    if SHAKESPEARE.exists():
        lines = [ln.strip() for ln in SHAKESPEARE.read_text().splitlines() if len(ln) > 20]
    else:
        from sllm.corpus import generate_corpus
        lines = [ln for ln in generate_corpus(50_000).splitlines() if len(ln) > 20]
    return random.Random(seed).sample(lines, n)


class ServerProcess:
    """`python -m sllm serve` on a free loopback port."""

    def __init__(self, model: Path, backend: str, max_batch: int, max_queue: int,
                 threads: int | None):
        extra = ["--threads", str(threads)] if threads else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sllm", "serve", str(model), "--port", "0", "--backend",
             backend, "--max-batch", str(max_batch), "--max-queue", str(max_queue), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None  # stdout=PIPE
        line = self.proc.stdout.readline()
        m = re.search(r"http://([\d.]+):(\d+)/v1", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line}{self.proc.stdout.read()}")
        self.url = f"http://{m.group(1)}:{m.group(2)}"
        self.model_id = Path(model).stem
        # the server writes an access line per request: read them, or its pipe fills up
        self.log_lines = 0
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None  # stdout=PIPE
        for _ in self.proc.stdout:
            self.log_lines += 1

    def rss_mb(self) -> float:
        """The server's resident memory now."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(_field(r"VmRSS:\s+(\d+)", status)) / 1024

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Terminate it and wait."""
        self.proc.terminate()
        self.proc.wait(30)


async def stream_one(client: httpx.AsyncClient, url: str, body: dict[str, Any]
                     ) -> dict[str, Any]:
    """One streaming request: its text, finish_reason, usage and the arrival times."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {"text": "", "times": [], "finish": None, "usage": None,
                           "done": False, "status": None}
    async with client.stream("POST", url, json=body) as r:
        out["status"] = r.status_code
        if r.status_code != 200:
            out["error"] = json.loads(await r.aread())
            return out
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                out["done"] = True
                break
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                out["usage"] = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice["text"]:
                    out["text"] += choice["text"]
                    out["times"].append(time.perf_counter() - t0)
                out["finish"] = choice["finish_reason"] or out["finish"]
    return out


# ---- throughput ------------------------------------------------------------------------
async def clients_run(url: str, model_id: str, clients: int, requests_each: int,
                      tokens: int, texts: list[str]) -> dict[str, float]:
    """`clients` concurrent streaming clients, each making requests_each requests one
    after the other. Per-token latency: each stream's time per token after its first."""
    per_token: list[float] = []
    ttft: list[float] = []
    total = 0

    async def client_loop(i: int, client: httpx.AsyncClient) -> None:
        nonlocal total
        for j in range(requests_each):
            body = {"model": model_id, "prompt": texts[(i * requests_each + j) % len(texts)],
                    "max_tokens": tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            r = await stream_one(client, url + "/v1/completions", body)
            assert r["status"] == 200 and r["done"], r
            total += r["usage"]["completion_tokens"]
            ttft.append(r["times"][0])
            if len(r["times"]) > 1:  # this stream's time per token after the first
                per_token.append((r["times"][-1] - r["times"][0]) / (len(r["times"]) - 1))

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(i, c) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"clients": clients, "tokens": total, "seconds": wall, "tok_s": total / wall,
            "ttft_p50": float(np.percentile(ttft, 50)) * 1e3,
            "tok_p50": float(np.percentile(per_token, 50)) * 1e3,
            "tok_p99": float(np.percentile(per_token, 99)) * 1e3}


def throughput(args: argparse.Namespace, model: Path) -> None:
    """Rounds of 1 and N clients, interleaved so each ratio compares neighbours in time."""
    server = ServerProcess(model, args.backend, args.max_batch, args.max_queue, args.threads)
    texts = prompts(64)
    counts = [int(x) for x in args.clients.split(",")]
    rows: dict[int, list[dict[str, float]]] = {n: [] for n in counts}
    load_before = os.getloadavg()
    try:
        asyncio.run(clients_run(server.url, server.model_id, 2, 1, 8, texts))  # warm up
        for _ in range(args.rounds):
            for n in counts:
                each = max(1, args.requests // n)  # the same work for every count
                cpu0, mine0 = server.cpu_s(), sum(os.times()[:2])
                row = asyncio.run(clients_run(server.url, server.model_id, n, each,
                                              args.tokens, texts))
                row["server_cpu"] = (server.cpu_s() - cpu0) / row["seconds"]
                row["client_cpu"] = (sum(os.times()[:2]) - mine0) / row["seconds"]
                rows[n].append(row)
    finally:
        server.stop()
    print(f"\n{model.name}, backend {args.backend} with {args.threads} kernel thread(s), "
          f"--max-batch {args.max_batch}, {args.requests} requests of {args.tokens} tokens "
          f"per configuration, {args.rounds} rounds; load average "
          f"before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)\n")
    print("| round | streaming clients | tokens | seconds | aggregate tokens/s | vs 1 client "
          "| first token p50 (ms) | per token p50 (ms) | per token p99 (ms) "
          "| server CPU (cores) | clients CPU (cores) | tokens per server CPU-second |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for i in range(args.rounds):
        base = rows[counts[0]][i]["tok_s"]
        for n in counts:
            r = rows[n][i]
            print(f"| {i + 1} | {n} | {r['tokens']} | {r['seconds']:.1f} | {r['tok_s']:.0f} | "
                  f"{r['tok_s'] / base:.1f}x | {r['ttft_p50']:.0f} | {r['tok_p50']:.1f} | "
                  f"{r['tok_p99']:.1f} | {r['server_cpu']:.2f} | {r['client_cpu']:.2f} | "
                  f"{r['tok_s'] / max(r['server_cpu'], 1e-9):.0f} |")
    med = {n: float(np.median([r["tok_s"] for r in rows[n]])) for n in counts}
    print("\nmedian aggregate tokens/s: " + ", ".join(
        f"{n} client(s) {med[n]:.0f} ({med[n] / med[counts[0]]:.1f}x)" for n in counts))
    eff = {n: float(np.median([r["tok_s"] / max(r["server_cpu"], 1e-9) for r in rows[n]]))
           for n in counts}
    print("median tokens per server CPU-second: " + ", ".join(
        f"{n} client(s) {eff[n]:.0f} ({eff[n] / eff[counts[0]]:.1f}x)" for n in counts))


# ---- the engine alone ------------------------------------------------------------------
def engine(args: argparse.Namespace, model_path: Path) -> None:
    """The batching engine without HTTP: the same requests one at a time vs all at once."""

    from sllm.batching import Engine, Request, Sampling
    model = sllm.load(model_path, backend=args.backend)
    if args.threads:
        model.backend.set_num_threads(args.threads)
    tok = from_dict(model.tokenizer)
    ids = [encode_prompt(tok, t, warn=False) for t in prompts(64)]
    eng = Engine(model, tok, max_batch=args.max_batch, max_queue=args.requests)
    eng.start()

    def wave(n: int, first: int) -> int:
        done, count = threading.Semaphore(0), [0]

        def emit(event: Any) -> None:
            if event.kind != "text":
                count[0] += event.completion_tokens
                done.release()
        for i in range(n):
            eng.submit(Request(ids[(first + i) % len(ids)],
                               Sampling(max_tokens=args.tokens, temperature=0), emit))
        for _ in range(n):
            done.acquire()
        return count[0]
    load_before = os.getloadavg()
    print("| round | requests at once | tokens | seconds | tokens/s | vs one at a time |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for r in range(args.rounds):
            base = 0.0
            for n in [int(x) for x in args.clients.split(",")]:
                t0 = time.perf_counter()
                tokens = sum(wave(n, i * n) for i in range(max(1, args.requests // n)))
                rate = tokens / (time.perf_counter() - t0)
                base = base or rate
                print(f"| {r + 1} | {n} | {tokens} | {time.perf_counter() - t0:.1f} | "
                      f"{rate:.0f} | {rate / base:.1f}x |")
        print("\n| first token of a 64-token prompt | median ms | p90 ms |")
        print("| --- | ---: | ---: |")
        long_ids = [t for i in ids for t in i][:64]
        for busy in (0, 15):
            times = first_token_ms(eng, long_ids, busy, args.tokens)
            print(f"| {busy} other requests decoding | {np.median(times):.2f} | "
                  f"{np.percentile(times, 90):.2f} |")
    finally:
        eng.stop()
    print(f"\n{model_path.name}, backend {args.backend} with {args.threads} kernel thread(s); "
          f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")


def first_token_ms(eng: Any, prompt: list[int], busy: int, tokens: int, repeats: int = 20
                   ) -> list[float]:
    """Milliseconds from submitting `prompt` (greedy, one token) to its first event, while
    `busy` other greedy requests of `tokens` tokens decode (started first, kept running)."""
    from sllm.batching import Request, Sampling
    stop, times = threading.Event(), []

    def background(event: Any) -> None:  # resubmit each finished one while measuring
        if event.kind != "text" and not stop.is_set():
            eng.submit(Request(prompt[:8], Sampling(max_tokens=tokens, temperature=0),
                               background))
    for _ in range(busy):
        eng.submit(Request(prompt[:8], Sampling(max_tokens=tokens, temperature=0), background))
    time.sleep(0.05 if busy else 0)
    for _ in range(repeats):
        first = threading.Event()
        t0 = time.perf_counter()
        eng.submit(Request(prompt, Sampling(max_tokens=1, temperature=0),
                           functools.partial(_set, first)))
        first.wait()
        times.append((time.perf_counter() - t0) * 1e3)
    stop.set()
    while eng.busy_slots() or eng.queue_depth():
        time.sleep(0.01)
    return times


def _set(flag: threading.Event, event: Any) -> None:
    flag.set()


# ---- load test -------------------------------------------------------------------------
MALFORMED: list[tuple[str, Any]] = [
    ("bad JSON", b'{"model": "m", "prompt": '),
    ("not an object", b"[1, 2, 3]"),
    ("wrong type", {"prompt": "hello", "max_tokens": "many"}),
    ("unknown field", {"prompt": "hello", "bogus": True}),
    ("temperature out of range", {"prompt": "hello", "temperature": -1}),
    ("n = 3", {"prompt": "hello", "n": 3}),
    ("prompt too long", {"prompt": "the " * 400}),
    ("max_tokens too large", {"prompt": "hello", "max_tokens": 10_000}),
    ("missing prompt", {"max_tokens": 3}),
    ("bad chat role", {"messages": [{"role": "robot", "content": "hi"}]}),
]


def expected_outputs(model_path: Path, backend: str, cases: set[tuple[str, int, int | None]]
                     ) -> dict[tuple[str, int, int | None], str]:
    """Each (prompt, max_tokens, seed) case's text, computed without the server."""
    model = sllm.load(model_path, backend=backend)
    tok = from_dict(model.tokenizer)
    out = {}
    for prompt, n, seed in sorted(cases, key=str):
        ids = encode_prompt(tok, prompt, warn=False)
        sampling = {"temperature": 0.8, "seed": seed} if seed is not None else {"temperature": 0}
        out[(prompt, n, seed)] = "".join(stream_text(model, tok, ids, n, **sampling))
    return out


def plan(n: int, texts: list[str], seed: int = 1) -> list[dict[str, Any]]:
    """The requests: 20% malformed, the rest streaming or not, greedy or seeded."""
    rnd = random.Random(seed)
    reqs = []
    for i in range(n):
        if rnd.random() < 0.2:
            what, body = MALFORMED[i % len(MALFORMED)]
            reqs.append({"kind": "malformed", "what": what, "body": body,
                         "path": "/v1/chat/completions" if "messages" in str(body)
                         else "/v1/completions"})
            continue
        seed_ = rnd.randrange(1000) if rnd.random() < 0.2 else None
        reqs.append({"kind": "stream" if rnd.random() < 0.55 else "plain",
                     "prompt": rnd.choice(texts), "max_tokens": rnd.choice([1, 4, 12, 32]),
                     "seed": seed_, "path": "/v1/completions"})
    return reqs


async def run_load(server: ServerProcess, reqs: list[dict[str, Any]],
                   expected: dict[Any, str], concurrency: int) -> dict[str, Any]:
    """Send every request with at most `concurrency` in flight; check each answer."""
    stats: dict[str, Any] = {"ok": 0, "400": 0, "503": 0, "5xx": 0, "wrong": 0,
                             "unexpected": 0, "rss": {}}
    sem = asyncio.Semaphore(concurrency)
    done = 0

    async def one(req: dict[str, Any], client: httpx.AsyncClient) -> None:
        nonlocal done
        async with sem:
            status, text, finish = await send(req, client, server)
        done += 1
        if done == 500:
            stats["rss"]["after first 500"] = server.rss_mb()
        if status == 503:
            stats["503"] += 1
        elif status >= 500:
            stats["5xx"] += 1
        elif req["kind"] == "malformed":
            stats["400" if status == 400 else "unexpected"] += 1
        elif status != 200:
            stats["unexpected"] += 1
        elif text != expected[(req["prompt"], req["max_tokens"], req["seed"])] or not finish:
            stats["wrong"] += 1
        else:
            stats["ok"] += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(one(r, client) for r in reqs))
    stats["rss"]["after the last 500"] = server.rss_mb()
    return stats


def _field(pattern: str, text: str) -> str:
    """The first group of `pattern`'s first match in text; an error naming it if none."""
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"no {pattern!r} in {text[:200]!r}")
    return m.group(1)


async def send(req: dict[str, Any], client: httpx.AsyncClient, server: ServerProcess
               ) -> tuple[int, str, str | None]:
    """One request of the plan: (status, text, finish_reason)."""
    url = server.url + req["path"]
    if req["kind"] == "malformed":
        body = req["body"]
        if isinstance(body, bytes):
            r = await client.post(url, content=body, headers={"content-type": "application/json"})
        else:
            r = await client.post(url, json={"model": server.model_id, **body})
        return r.status_code, "", None
    body = {"model": server.model_id, "prompt": req["prompt"], "max_tokens": req["max_tokens"]}
    body.update({"temperature": 0.8, "seed": req["seed"]} if req["seed"] is not None
                else {"temperature": 0})
    if req["kind"] == "stream":
        s = await stream_one(client, url, {**body, "stream": True})
        return s["status"], s["text"], s["finish"] if s["done"] else None
    resp = await client.post(url, json=body)
    if resp.status_code != 200:
        return resp.status_code, "", None
    choice = resp.json()["choices"][0]
    return 200, choice["text"], choice["finish_reason"]


def load(args: argparse.Namespace, model: Path) -> None:
    texts = prompts(40)
    reqs = plan(args.requests, texts)
    t0 = time.perf_counter()
    expected = expected_outputs(model, args.backend, {(r["prompt"], r["max_tokens"], r["seed"])
                                                      for r in reqs if "prompt" in r})
    print(f"{len(expected)} expected outputs computed without the server in "
          f"{time.perf_counter() - t0:.0f} s")
    server = ServerProcess(model, args.backend, args.max_batch, args.max_queue, args.threads)
    load_before = os.getloadavg()
    try:
        t0 = time.perf_counter()
        stats = asyncio.run(run_load(server, reqs, expected, args.concurrency))
        wall = time.perf_counter() - t0
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    kinds = {k: sum(r["kind"] == k for r in reqs) for k in ("stream", "plain", "malformed")}
    active = _field(r"(?m)^sllm_active_sequences (\S+)", metrics)
    queued = _field(r"(?m)^sllm_queue_depth (\S+)", metrics)
    rss = stats["rss"]
    print(f"\n{len(reqs)} requests ({kinds['stream']} streaming, {kinds['plain']} non-streaming, "
          f"{kinds['malformed']} malformed) in {wall:.0f} s, {args.concurrency} at once, "
          f"--max-batch {args.max_batch} --max-queue {args.max_queue}, backend {args.backend}; "
          f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}\n")
    print("| check | result |\n| --- | --- |")
    print(f"| answers equal to their own request's output | {stats['ok']} |")
    print(f"| wrong, lost or unfinished answers | {stats['wrong']} |")
    print(f"| malformed requests answered 400 | {stats['400']} of {kinds['malformed']} |")
    print(f"| deliberate 503 (queue full) | {stats['503']} |")
    print(f"| other 5xx | {stats['5xx']} |")
    print(f"| any other status | {stats['unexpected']} |")
    print(f"| slots active / queued at the end | {active} / {queued} |")
    print(f"| server RSS after the first 500 / the last 500 | "
          f"{rss.get('after first 500', 0):.1f} MB / {rss['after the last 500']:.1f} MB |")
    bad = stats["wrong"] + stats["5xx"] + stats["unexpected"]
    sys.exit(1 if bad or float(active) or float(queued) else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["throughput", "load", "engine"])
    p.add_argument("--model", type=Path, help="a .sllm model (default: small-model, random)")
    p.add_argument("--backend", default="cpp")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="the server's kernel threads")
    p.add_argument("--rounds", type=int, default=3, help="throughput: rounds of all counts")
    p.add_argument("--clients", default="1,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--requests", type=int, default=None,
                   help="load: requests in all (2000); throughput: per configuration (32)")
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args()
    if args.requests is None:
        args.requests = 2000 if args.mode == "load" else 32
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(Path(tmp) / "small-model.sllm")
        {"throughput": throughput, "load": load, "engine": engine}[args.mode](args, model)


if __name__ == "__main__":
    main()
