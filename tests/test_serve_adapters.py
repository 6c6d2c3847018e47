"""Several LoRA adapters served over one base (sllm/lora_bank.py, `sllm serve --adapter`):
requests for three adapters and the bare base decoded in the same batch steps give, for
each adapter, the merged model's greedy output (GPT-2 and llama, on every backend);
names are checked; a removed adapter's requests in flight finish with it; and through the
official `openai` client: /v1/models lists the adapters, `model` picks one, an unknown one
is a 404, POST/DELETE /v1/adapters behind the API key."""
import threading
import time

import numpy as np
import pytest

import sllm
from sllm.batching import Engine, Event, Request, Sampling
from sllm.corpus import generate_corpus
from sllm.errors import ConfigError, LoraError
from sllm.generate import encode_prompt, stream_text
from sllm.lora import Adapter, LoraConfig, merge
from sllm.lora_bank import AdapterBank, check_adapter_name
from sllm.tokenizer import WordTokenizer

CONTEXT = 48
PROMPTS = ["the cat", "she said that", "a small boat on the river", "in the morning the",
           "he", "they went to the market and", "one day", "the old man said"]


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.train(generate_corpus(20_000, seed=1), 300, byte_fallback=False)


def base_model(arch, tok, backend="numpy"):
    cfg = sllm.ModelConfig(vocab_size=tok.vocab_size, embedding_dim=32, num_layers=2,
                           num_heads=4, ffn_hidden_dim=64, dropout=0.0, max_seq_len=CONTEXT,
                           architecture=arch, **({"num_kv_heads": 2} if arch == "llama" else {}))
    model = sllm.SLLM(cfg, backend=backend, seed=1)
    model.tokenizer = tok.to_dict()
    return model.eval()


def random_adapter(model, seed, targets="all", rank=4, token_ids=()):
    """An adapter whose B is not zero (a fresh one changes nothing), big enough to change
    the greedy text (and its token rows, if it has any, the logits of their ids)."""
    adapter = Adapter.create(model, LoraConfig(rank=rank, targets=targets), seed,
                             token_ids=token_ids)
    rng = np.random.default_rng(seed)
    for t in adapter.tensors.values():
        t[...] = rng.standard_normal(t.shape) * 0.5
    return adapter


class Collect:
    """A request's events, gathered; `done` is set at its end (or error)."""

    def __init__(self) -> None:
        self.text, self.done = "", threading.Event()
        self.end: Event | None = None

    def __call__(self, event: Event) -> None:
        if event.kind == "text":
            self.text += event.text
        else:
            self.end = event
            self.done.set()


def greedy(model, tok, prompt, n):
    return "".join(stream_text(model, tok, encode_prompt(tok, prompt, warn=False), n,
                               temperature=0.0))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_mixed_batch_equals_each_merged_model(arch, tok, backend_name):
    model = base_model(arch, tok, backend_name)
    adapters = {"a": random_adapter(model, 1), "b": random_adapter(model, 2, "attn"),
                "c": random_adapter(model, 3, "mlp", rank=2)}
    references = {None: base_model(arch, tok, backend_name)}
    for name, adapter in adapters.items():
        references[name] = merge(base_model(arch, tok, backend_name), adapter)
    check_mixed_batch(model, tok, adapters, references)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # a tied head, an untied lm_head
def test_mixed_batch_with_token_rows_equals_each_merged_model(arch, tok, backend_name):
    """Adapters with trainable token rows in the batch: each row's embedding and logits
    use its own adapter's rows (the ids are the prompts' words and frequent answers)."""
    model = base_model(arch, tok, backend_name)
    ids = sorted({int(i) for p in PROMPTS for i in encode_prompt(tok, p, warn=False)})
    adapters = {"a": random_adapter(model, 1, token_ids=ids[::2]),
                "b": random_adapter(model, 2, "attn"),
                "c": random_adapter(model, 3, "mlp", rank=2, token_ids=ids[1::3] + [5, 7])}
    references = {None: base_model(arch, tok, backend_name)}
    for name, adapter in adapters.items():
        references[name] = merge(base_model(arch, tok, backend_name), adapter)
    check_mixed_batch(model, tok, adapters, references)


@pytest.mark.parametrize("arch,qtype", [("gpt2", "q4_0"), ("llama", "q8_0")])
def test_mixed_batch_on_a_quantized_base_equals_each_adapter_alone(arch, qtype, tok,
                                                                   backend_name):
    """No merged model on a quantized base: the reference is the adapter attached alone."""
    def quantized():
        return base_model(arch, tok, backend_name).quantize(qtype).eval()
    model = quantized()
    adapters = {"a": random_adapter(model, 1), "b": random_adapter(model, 2, "attn"),
                "c": random_adapter(model, 3, "mlp", rank=2)}
    references = {None: quantized()}
    for name, adapter in adapters.items():
        references[name] = quantized()
        references[name].attach_adapter(adapter)
        references[name].eval()
    check_mixed_batch(model, tok, adapters, references)


def check_mixed_batch(model, tok, adapters, references):
    """PROMPTS for the base and each adapter in turn, queued before the engine starts (one
    batch holds them all): each answer equals its reference model's greedy text."""
    bank = AdapterBank(model)
    for name, adapter in adapters.items():
        bank.add(name, adapter)
    groups = []
    route = bank.route
    bank.route = lambda rows: (route(rows), groups.append(len(bank.groups)))
    batched = []
    prefill_batch = model.prefill_batch
    model.prefill_batch = lambda prompts, *a: (batched.append(len(prompts)),
                                               prefill_batch(prompts, *a))[1]
    engine = Engine(model, tok, max_batch=8, adapters=bank)
    jobs = []
    for i, prompt in enumerate(PROMPTS):  # queued before the start: one batch from step 1
        name = [None, "a", "b", "c"][i % 4]
        got = Collect()
        engine.submit(Request(encode_prompt(tok, prompt, warn=False),
                              Sampling(max_tokens=12, temperature=0.0), got,
                              adapter=bank.get(name) if name else None))
        jobs.append((name, prompt, got))
    engine.start()
    try:
        for _, _, got in jobs:
            assert got.done.wait(60) and got.end.kind == "done", got.end
    finally:
        engine.stop()
    assert max(groups) == 3  # a decode step held rows of all three adapters (and the base)
    assert batched and max(batched) > 1  # an adapter's prompts were prefilled together
    for name, prompt, got in jobs:
        assert got.text == greedy(references[name], tok, prompt, 12), (name, prompt)
    # the adapters change the answers: a delta added to the wrong rows would show
    changed = [got.text != greedy(references[None], tok, prompt, 12)
               for name, prompt, got in jobs if name is not None]
    assert sum(changed) >= 5


def test_names_are_checked(tok):
    model = base_model("gpt2", tok)
    bank = AdapterBank(model)
    bank.add("pirate", random_adapter(model, 1), taken=("tiny",))
    for bad in ["", "a b", "../x", "-x", "x" * 65, "é"]:
        with pytest.raises(ConfigError, match="adapter name"):
            bank.add(bad, random_adapter(model, 1))
    with pytest.raises(ConfigError, match="'pirate' is taken"):
        bank.add("pirate", random_adapter(model, 2))
    with pytest.raises(ConfigError, match="'tiny' is taken"):
        bank.add("tiny", random_adapter(model, 2), taken=("tiny",))
    assert check_adapter_name("v1.2_x-y", set()) == "v1.2_x-y"
    other = base_model("gpt2", tok)
    other.parameters()["h.0.attn.c_attn.weight"][0, 0] += 1.0
    with pytest.raises(LoraError, match="another base"):
        bank.add("other", random_adapter(other, 1))
    assert bank.names() == ["pirate"]


def test_removed_adapter_finishes_its_requests_then_is_freed(tok):
    model = base_model("gpt2", tok)
    adapter = random_adapter(model, 1)
    reference = greedy(merge(base_model("gpt2", tok), adapter), tok, "the cat", 10)
    bank = AdapterBank(model)
    served = bank.add("a", adapter)
    freed = []
    free = model.backend.free
    model.backend.free = lambda a: (freed.append(a), free(a))
    engine = Engine(model, tok, max_batch=2, adapters=bank)
    got = Collect()
    engine.submit(Request(encode_prompt(tok, "the cat", warn=False),
                          Sampling(max_tokens=10, temperature=0.0), got, adapter=served))
    bank.retire("a")  # before the request even starts: it still decodes with "a"
    assert bank.get("a") is None and bank.names() == []
    engine.start()
    try:
        assert got.done.wait(60)
        engine.run_job(lambda: None).result(10)  # one more loop: the sweep
        engine.run_job(lambda: None).result(10)
    finally:
        engine.stop()
    assert got.text == reference
    assert bank.retiring == [] and any(a is served.tensors["h.0.attn.c_attn.weight"][0]
                                       for a in freed)
    assert all(not hasattr(L.attn_w, "bank") for L in model._p_layers)  # the base's own again


# ---- over HTTP, through the official openai client -------------------------------------
@pytest.fixture(scope="module")
def files(tok, tmp_path_factory):
    """A base model file and three adapter files for it."""
    where = tmp_path_factory.mktemp("adapters")
    model = base_model("gpt2", tok)
    model.save(where / "tiny.sllm")
    paths = {}
    for i, name in enumerate(["a", "b", "c"]):
        paths[name] = where / f"{name}.sllm"
        random_adapter(model, i + 1, ["all", "attn", "mlp"][i]).save(paths[name])
    return where / "tiny.sllm", paths


@pytest.fixture(scope="module")
def srv(files):
    pytest.importorskip("openai")
    from serving import ThreadServer
    server = ThreadServer(files[0], max_batch=8, api_key="k")
    yield server
    server.stop()


def test_http_adapters(srv, files, tok):
    import httpx
    import openai
    client = srv.client(api_key="k")
    for name in ["a", "b", "c"]:
        card = client.post("/adapters", cast_to=dict, body={"name": name,
                                                            "path": str(files[1][name])})
        assert card["id"] == name and card["parent"] == "tiny"
    assert [m.id for m in client.models.list().data] == ["tiny", "a", "b", "c"]
    assert client.models.retrieve("b").id == "b"
    with pytest.raises(openai.NotFoundError, match="'nope' does not exist"):
        client.completions.create(model="nope", prompt="the cat", max_tokens=2)
    # three adapters and the base at once: each its merged model's greedy text
    base = sllm.load(files[0], backend="numpy")
    results: dict = {}

    def ask(name, prompt):
        results[name, prompt] = client.completions.create(
            model=name, prompt=prompt, max_tokens=10, temperature=0).choices[0].text
    threads = [threading.Thread(target=ask, args=(name, p))
               for p in PROMPTS[:2] for name in ["tiny", "a", "b", "c"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for (name, prompt), text in results.items():
        model = base if name == "tiny" else merge(sllm.load(files[0], backend="numpy"),
                                                  Adapter.load(files[1][name]))
        assert text == greedy(model, tok, prompt, 10), (name, prompt)
    assert len(results) == 8
    chat = client.chat.completions.create(model="a", messages=[{"role": "user", "content":
                                                                "hello"}], max_tokens=3)
    assert chat.model == "a"
    # bad adds: the key, a clash, a bad name, a missing file, another base
    with pytest.raises(openai.AuthenticationError):
        srv.client(api_key="wrong").post("/adapters", cast_to=dict,
                                         body={"name": "x", "path": str(files[1]["a"])})
    with pytest.raises(openai.ConflictError, match="'a' is taken"):
        client.post("/adapters", cast_to=dict, body={"name": "a", "path": str(files[1]["a"])})
    with pytest.raises(openai.ConflictError, match="'tiny' is taken"):
        client.post("/adapters", cast_to=dict, body={"name": "tiny", "path": str(files[1]["a"])})
    with pytest.raises(openai.BadRequestError, match="adapter name"):
        client.post("/adapters", cast_to=dict, body={"name": "a/b", "path": str(files[1]["a"])})
    with pytest.raises(openai.BadRequestError, match="no such file"):
        client.post("/adapters", cast_to=dict, body={"name": "x", "path": "/nonexistent.sllm"})
    other = base_model("gpt2", tok)
    other.parameters()["wte"][0, 0] += 1
    random_adapter(other, 1).save(files[0].parent / "other.sllm")
    with pytest.raises(openai.BadRequestError, match="another base"):
        client.post("/adapters", cast_to=dict, body={"name": "x", "path":
                                                     str(files[0].parent / "other.sllm")})
    # removal: gone from the list, requests for it are 404; the base is not removable
    gone = httpx.delete(srv.url + "/v1/adapters/b", headers={"Authorization": "Bearer k"})
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    assert [m.id for m in client.models.list().data] == ["tiny", "a", "c"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="b", prompt="the cat", max_tokens=2)
    again = httpx.delete(srv.url + "/v1/adapters/b", headers={"Authorization": "Bearer k"})
    assert again.status_code == 404
    base_del = httpx.delete(srv.url + "/v1/adapters/tiny", headers={"Authorization": "Bearer k"})
    assert base_del.status_code == 400
    assert client.completions.create(model="c", prompt="the cat", max_tokens=3).model == "c"


def test_managing_adapters_needs_an_api_key(files):
    pytest.importorskip("openai")
    import openai
    from serving import ThreadServer
    server = ThreadServer(files[0])
    try:
        with pytest.raises(openai.PermissionDeniedError, match="--api-key"):
            server.client().post("/adapters", cast_to=dict,
                                 body={"name": "a", "path": str(files[1]["a"])})
    finally:
        server.stop()


def test_cli_adapter_specs(files):
    from sllm.cli import _adapter_bank
    model = sllm.load(files[0], backend="numpy")
    bank = _adapter_bank(model, "tiny", [f"a={files[1]['a']}", f"c={files[1]['c']}"])
    assert bank.names() == ["a", "c"]
    with pytest.raises(ConfigError, match="NAME=PATH"):
        _adapter_bank(sllm.load(files[0], backend="numpy"), "tiny", [str(files[1]["a"])])
    with pytest.raises(ConfigError, match="'tiny' is taken"):
        _adapter_bank(sllm.load(files[0], backend="numpy"), "tiny", [f"tiny={files[1]['a']}"])


@pytest.mark.parametrize("qtype", ["q4_0", "q8_0"])
def test_adapters_served_on_a_quantized_base(qtype, tok, tmp_path):
    """`sllm serve tiny_q4_0.sllm --adapter a=... --adapter b=...`: the adapters were
    trained on the quantized base (its fingerprint is the quantized one), and a batch that
    mixes them and the base gives, for each, the greedy text of that adapter attached
    alone to the same quantized base."""
    pytest.importorskip("openai")
    from serving import BACKEND, ThreadServer
    path = tmp_path / f"tiny_{qtype}.sllm"
    base_model("gpt2", tok).quantize(qtype).save(path)
    quantized = sllm.load(path, backend=BACKEND)
    specs = []
    for i, name in enumerate(["a", "b"]):
        random_adapter(quantized, i + 1, ["all", "attn"][i]).save(tmp_path / f"{name}.sllm")
        specs.append(f"{name}={tmp_path / f'{name}.sllm'}")
    server = ThreadServer(path, max_batch=8, adapters=specs)
    bank, groups, engine, held = server.engine.adapters, [], server.engine, []
    route = bank.route

    def routed(rows):
        # the first step waits until all 9 requests have come (queued or decoding), so the
        # steps after it mix them whatever the threads' timing (a loaded machine once let
        # one adapter's requests finish before the other's arrived)
        deadline = time.monotonic() + 30
        while not held and engine.queue_depth() + engine.busy_slots() < 9 and \
                time.monotonic() < deadline:
            time.sleep(0.005)
        held.append(True)
        route(rows)
        groups.append(len(bank.groups))
    bank.route = routed
    try:
        assert server.model.qtype == qtype
        client = server.client()
        assert [m.id for m in client.models.list().data] == ["tiny", "a", "b"]
        results: dict = {}

        def ask(name, prompt):
            results[name, prompt] = client.completions.create(
                model=name, prompt=prompt, max_tokens=10, temperature=0).choices[0].text
        threads = [threading.Thread(target=ask, args=(name, p))
                   for p in PROMPTS[:3] for name in ["tiny", "a", "b"]]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        server.stop()
    assert len(results) == 9 and max(groups) == 2  # a step held rows of both adapters
    alone = {"tiny": sllm.load(path, backend=BACKEND)}
    for name in ["a", "b"]:
        alone[name] = sllm.load(path, backend=BACKEND)
        alone[name].attach_adapter(Adapter.load(tmp_path / f"{name}.sllm"))
        alone[name].eval()
    for (name, prompt), text in results.items():
        assert text == greedy(alone[name], tok, prompt, 10), (name, prompt)
    changed = [text != results["tiny", prompt] for (name, prompt), text in results.items()
               if name != "tiny"]
    assert sum(changed) >= 4  # the adapters change the answers
