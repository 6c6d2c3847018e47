"""sllm in the browser: `sllm export-web`, and sllm.js in a real headless Chromium checked
against Python (same tokens, same losses, same bytes). The browser tests skip, with the
reason, when Chromium, chromedriver or selenium is missing; `.ci/run` installs them."""
from __future__ import annotations

import base64
import sys
from pathlib import Path

import numpy as np
import pytest

import sllm
from sllm import tokenizer as tokenizers
from sllm.corpus import generate_corpus
from sllm.errors import SLLMError
from sllm.export_web import WEB_FILES, export_site
from sllm.generate import encode_prompt, stream_text
from sllm.serialize import read_model_file

sys.path.insert(0, str(Path(__file__).parent))
from browser import StaticServer, chromium, run_js, why_no_browser
from twins import JAPANESE, JS_TRAIN_STEPS, PAGE_ONLY, TWINS, corrupt_files, python_train_steps

WORD_CFG = {"vocabSize": 300, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
            "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 96}


def _trained(tmp_path_factory, name, cfg, tokenizer="word", steps=60, corpus=None,
             byte_fallback=True):
    """A small model trained for a few steps (on the demo corpus unless a corpus text is
    given), with its tokenizer."""
    from sllm.train import TrainConfig, prepare
    out = tmp_path_factory.mktemp(name)
    if corpus is not None:
        (out / "corpus.txt").write_text(corpus, encoding="utf-8")
    tc = TrainConfig(model=cfg, demo_chars=40_000, tokenizer=tokenizer, vocab_size=cfg["vocabSize"],
                     corpus=str(out / "corpus.txt") if corpus is not None else None,
                     byte_fallback=byte_fallback, backend="numpy", steps=steps, batch_size=8,
                     seq_len=32, lr=3e-3, warmup=5,
                     eval_every=10_000, checkpoint_every=10_000, out=str(out / "run"))
    prepare(tc, progress=False).run()
    return out / "run" / "model.sllm"


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A trained word-level model file, without byte fallback: the page's notice of words
    that became [UNK] (models made before byte fallback) is what its tests look at."""
    return _trained(tmp_path_factory, "word", WORD_CFG, byte_fallback=False)


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A byte-level BPE model trained on English and Japanese (tokens split characters)."""
    text = generate_corpus(20_000, seed=2) + "\n" + (JAPANESE + "\n") * 60
    return _trained(tmp_path_factory, "bpe", {**WORD_CFG, "vocabSize": 300}, "bpe", 40, text)


@pytest.fixture(scope="module")
def site(word_model, bpe_model, tmp_path_factory):
    """The exported site of word_model, plus extra model files tests drop beside it."""
    out = tmp_path_factory.mktemp("site")
    export_site(word_model, out)
    m = sllm.load(word_model, backend="numpy")
    m.save(out / "f16.sllm", dtype="f16")
    (out / "bpe.sllm").write_bytes(bpe_model.read_bytes())
    for qtype in ("q8_0", "q4_0", "q4_1"):
        export_site(word_model, out / qtype, dtype=qtype)
        (out / f"{qtype}.sllm").write_bytes((out / qtype / "model.sllm").read_bytes())
    return out


# ---- export-web without a browser -------------------------------------------------------
def test_export_web_writes_a_complete_site(word_model, tmp_path):
    result = export_site(word_model.parent, tmp_path / "s")  # a run directory works too
    names = set(result["files"])
    assert set(WEB_FILES) <= names and {"model.sllm", "site.json", "sllm_scalar.wasm"} <= names
    assert (tmp_path / "s" / "model.sllm").read_bytes() == word_model.read_bytes()
    assert result["total_bytes"] == sum(p.stat().st_size for p in (tmp_path / "s").iterdir())
    half = export_site(word_model, tmp_path / "h", dtype="f16")
    assert read_model_file(tmp_path / "h" / "model.sllm").dtype == "f16"
    assert half["files"]["model.sllm"] < result["files"]["model.sllm"] * 0.6
    q8 = export_site(word_model, tmp_path / "q", dtype="q8_0")
    mf = read_model_file(tmp_path / "q" / "model.sllm")
    assert "q8_0" in mf.dtype and q8["files"]["model.sllm"] < half["files"]["model.sllm"]
    with pytest.raises(SLLMError, match="already quantized"):
        export_site(tmp_path / "q" / "model.sllm", tmp_path / "q2", dtype="q4_0")


def test_export_web_refuses_bad_input(tmp_path, word_model):
    bad = tmp_path / "bad.sllm"
    bad.write_bytes(b"not a model at all, just text" * 3)
    with pytest.raises(sllm.FormatError, match="not an SLLM model file"):
        export_site(bad, tmp_path / "out")
    with pytest.raises(SLLMError, match="no such model"):
        export_site(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(SLLMError, match="dtype"):
        export_site(word_model, tmp_path / "out", dtype="f8")
    bare = sllm.SLLM(WORD_CFG, backend="numpy")
    bare.save(tmp_path / "bare.sllm")
    with pytest.raises(SLLMError, match="no tokenizer"):
        export_site(tmp_path / "bare.sllm", tmp_path / "out")


def test_export_web_cli(word_model, tmp_path):
    from typer.testing import CliRunner

    from sllm.cli import app
    result = CliRunner().invoke(app, ["export-web", str(word_model), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "sllm.js" in result.output and (tmp_path / "c" / "index.html").is_file()


def test_web_assets_are_package_data():
    """The site's files ship inside the package (and so the wheel)."""
    web = Path(sllm.__file__).parent / "web"
    for name in WEB_FILES:
        assert (web / name).is_file(), name
    text = (web / "sllm.js").read_text()
    assert "export async function load" in text and "import(" not in text


def test_javascript_twins_and_their_python_sources_name_each_other():
    """Each JS module says which Python modules it re-implements, and each of those says
    so in its docstring, so a change on one side leads to the other."""
    root = Path(__file__).resolve().parent.parent
    modules = {p.name for p in (root / "sllm" / "web").glob("*.js")}
    assert modules - set(PAGE_ONLY) == set(TWINS), "a JS module of sllm/web missing from tests/twins.py"
    for js, sources in TWINS.items():
        header = (root / "sllm" / "web" / js).read_text(encoding="utf-8").split("\n\n")[0]
        for source in sources:
            assert source in header, (js, source)
            module = source.removesuffix(".py").replace("/", ".")
            doc = __import__(module, fromlist=["_"]).__doc__ or ""
            assert f"sllm/web/{js}" in doc, (source, js)


# ---- the browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(site):
    """Headless Chromium on the exported site; skips (saying why) without a browser."""
    reason = why_no_browser()
    if reason:
        print(f"\nSKIP browser tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    server = StaticServer(site)
    driver = chromium()
    driver.get(server.url + "index.html")
    driver.server_url = server.url
    yield driver
    driver.quit()
    server.close()


def _python_greedy(path, backend, prompt, n):
    m = sllm.load(path, backend=backend)
    tok = tokenizers.from_dict(m.tokenizer)
    ids = encode_prompt(tok, prompt, warn=False)
    return m, tok, ids, m.generate(ids, n, temperature=0)[len(ids):]


@pytest.mark.parametrize("file,module,backend", [
    ("model.sllm", "auto", "wasm-simd"), ("f16.sllm", "auto", "wasm-simd"),
    ("model.sllm", "scalar", "wasm"), ("bpe.sllm", "auto", "wasm-simd"), ("q8_0.sllm", "auto", "wasm-simd"),
    ("q4_0.sllm", "auto", "wasm-simd"), ("q4_1.sllm", "auto", "wasm-simd"),
    ("q8_0.sllm", "scalar", "wasm")])
def test_greedy_generation_matches_python(browser, site, file, module, backend):
    prompt = "東京は大きい" if file == "bpe.sllm" else "Once upon a time, there was a"
    m, tok, ids, expected = _python_greedy(site / file, backend, prompt, 80)
    got = run_js(browser, """
const m = await sllm.load(args[0], {wasm: args[1]});
const ids = m.encodePrompt(args[2]);
const tokens = [...m.tokens(ids, {maxTokens: 80, temperature: 0})];
return {ids, tokens, text: await m.generate(args[2], {maxTokens: 80, temperature: 0}), wasm: m.wasm};
""", file, module, prompt)
    python_module = m.backend.capabilities["module"]
    assert f"sllm_{got['wasm']}.wasm" == python_module  # the same kernels on both sides
    assert got["ids"] == ids
    assert got["tokens"] == expected and len(expected) >= 64
    python_text = "".join(stream_text(m, tok, ids, 80, temperature=0))
    assert got["text"] == python_text


def test_sampling_options_and_stream(browser):
    got = run_js(browser, """
const m = await sllm.load("model.sllm");
const opts = {maxTokens: 30, temperature: 0.9, topK: 20, topP: 0.9, seed: 7};
const a = await m.generate("One day, Anna", opts), b = await m.generate("One day, Anna", opts);
const pieces = [];
for await (const p of m.stream("One day, Anna", opts)) pieces.push(p);
const stats = {...m.stats};
const greedy = await m.generate("One day, Anna", {maxTokens: 30, temperature: 0});
return {a, b, joined: pieces.join(""), greedy, stats};
""")
    assert got["a"] == got["b"] == got["joined"]  # seeded: reproducible, streaming == whole
    assert got["a"] != got["greedy"]
    stats = got["stats"]  # of the stream: its tokens, over the seconds they took
    assert 1 <= stats["tokens"] <= 30 and stats["seconds"] > 0
    assert stats["tokensPerSecond"] == pytest.approx(stats["tokens"] / stats["seconds"])
    assert 0 <= stats["firstTokenMs"] <= stats["seconds"] * 1000


def _batch(tok, text, B, T, seed):
    ids = np.array(tok.encode(text))
    rng = np.random.default_rng(seed)
    offs = rng.integers(0, len(ids) - T - 1, B)
    x = np.stack([ids[o:o + T] for o in offs])
    return x, np.stack([ids[o + 1:o + T + 1] for o in offs])


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_finetune_steps_match_python_and_save_loads(browser, site, tmp_path, dropout):
    py = sllm.load(site / "model.sllm", backend="wasm-simd")
    if dropout:  # the same model with dropout on: the counter-based masks must agree too
        cfg = py.config.replace(dropout=dropout)
        m2 = sllm.SLLM(cfg, backend="wasm-simd", init=None)
        for k, v in py.parameters().items():
            m2.parameters()[k][...] = v
        m2.tokenizer, py = py.tokenizer, m2
        py.save(tmp_path / "drop.sllm")
        (site / "drop.sllm").write_bytes((tmp_path / "drop.sllm").read_bytes())
    name = "drop.sllm" if dropout else "model.sllm"
    tok = tokenizers.from_dict(py.tokenizer)
    batches = [_batch(tok, generate_corpus(20_000, seed=5), 4, 24, s) for s in range(3)]
    expected = python_train_steps(py, batches)
    got = run_js(browser, """
const m = await sllm.load(args[0]);
const losses = """ + JS_TRAIN_STEPS + """;
const probe = m.encodePrompt("A: Do you have a pet?");
const logits = Array.from(m.forward(probe));
const bytes = await m.save();
let s = ""; for (const b of bytes) s += String.fromCharCode(b);
return {losses, logits, probe, saved: btoa(s)};
""", name, [[x.tolist(), y.tolist()] for x, y in batches])
    assert np.allclose(got["losses"], expected, rtol=1e-4, atol=0), (got["losses"], expected)
    path = tmp_path / "browser.sllm"
    path.write_bytes(base64.b64decode(got["saved"]))
    loaded = sllm.load(path, backend="wasm-simd")
    browser_logits = np.array(got["logits"], dtype=np.float32).reshape(1, len(got["probe"]), -1)
    assert np.array_equal(loaded.forward([got["probe"]]), browser_logits)
    assert np.allclose(py.forward([got["probe"]]), browser_logits, rtol=1e-4, atol=1e-4)
    assert loaded.tokenizer == py.tokenizer and "finetuned_in_browser" in loaded.metadata


def test_lora_steps_match_python_and_the_adapter_loads_there(browser, site, tmp_path):
    """Three LoRA fine-tuning steps in the browser (lora.js: the delta, the frozen base's
    backward, AdamW over the adapter) within 1e-4 of Python's losses from the same initial
    adapter file; the trained adapter loads in Python with the browser's logits."""
    from sllm.lora import Adapter
    py = sllm.load(site / "model.sllm", backend="wasm-simd")
    tok = tokenizers.from_dict(py.tokenizer)
    batches = [_batch(tok, generate_corpus(20_000, seed=5), 4, 24, s) for s in range(3)]
    got = run_js(browser, """
const b64 = (bytes) => { let s = ""; for (const b of bytes) s += String.fromCharCode(b); return btoa(s); };
const m = await sllm.load(args[0]);
m.createAdapter({rank: 4}, {seed: 1});
const initial = b64(m.saveAdapter({dtype: "f32"}));  // both sides start from the same values
const losses = """ + JS_TRAIN_STEPS + """;
const probe = m.encodePrompt("A: Do you have a pet?");
const trained = m.saveAdapter();  // f16, as the page stores and downloads adapters
await m.loadAdapter(trained);  // the adapter as the file holds it
return {initial, losses, probe, logits: Array.from(m.forward(probe)), trained: b64(trained)};
""", "model.sllm", [[x.tolist(), y.tolist()] for x, y in batches])
    (tmp_path / "initial.sllm").write_bytes(base64.b64decode(got["initial"]))
    py.attach_adapter(Adapter.load(tmp_path / "initial.sllm", py))
    expected = python_train_steps(py, batches)
    assert np.allclose(got["losses"], expected, rtol=0, atol=1e-4), (got["losses"], expected)
    assert expected[-1] < expected[0]
    (tmp_path / "trained.sllm").write_bytes(base64.b64decode(got["trained"]))
    py.detach_adapter()
    py.attach_adapter(Adapter.load(tmp_path / "trained.sllm", py))
    logits = np.array(got["logits"], dtype=np.float32).reshape(1, len(got["probe"]), -1)
    assert np.allclose(py.forward([got["probe"]]), logits, rtol=1e-5, atol=1e-5)


def test_finetune_api_and_short_text(browser):
    got = run_js(browser, """
const m = await sllm.load("model.sllm");
const text = args[0];
const seen = [];
const r = await m.finetune(text, {steps: 12, lr: 3e-3, seqLen: 32, onProgress: (p) => seen.push(p.step)});
let refused = null;
try { await m.finetune("too short", {steps: 2}); } catch (e) { refused = e.message; }
return {losses: r.losses, seen, refused};
""", generate_corpus(6000, seed=3))
    assert got["seen"] == list(range(1, 13))
    assert np.mean(got["losses"][-4:]) < np.mean(got["losses"][:4])
    assert "too short" in got["refused"] and "need at least 65" in got["refused"]


# Tokenizers, the format reader and writer, sampling and the model's forward are checked
# against Python under Node, without a browser: tests/test_node_parity.py.


# ---- the page ------------------------------------------------------------------------------
def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def _open(driver, query=""):
    driver.get(driver.server_url + "index.html" + query)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


@pytest.mark.parametrize("name,message", [
    ("not SLLM", "not an SLLM model file"), ("truncated", "truncated"),
    ("unknown version", "version 7 is not supported")])
def test_page_shows_a_clear_message_for_bad_files(browser, site, name, message):
    bad = f"bad-{name.replace(' ', '-')}.sllm"  # one name per case: no cached copy is reused
    (site / bad).write_bytes(corrupt_files((site / "model.sllm").read_bytes())[name])
    _open(browser, f"?model={bad}")
    error = browser.find_element("id", "error")
    assert error.is_displayed() and message in error.text and "FormatError" in error.text
    assert browser.find_element("id", "send").get_attribute("disabled")


def test_page_chat_finetune_store_and_reload(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    _open(browser)
    browser.execute_script("indexedDB.deleteDatabase('sllm')")
    _open(browser)
    assert "word tokenizer" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "chat-input").send_keys("Hello! How are you, Zzyzx?")
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: "tokens/s" in d.find_element(By.ID, "speed").text)
    bot = browser.find_elements(By.CSS_SELECTOR, ".msg.bot span:last-child")[-1].text
    assert bot.strip()
    assert "[UNK]" in browser.find_element(By.ID, "unknown").text
    assert "Zzyzx" in browser.find_element(By.ID, "unknown").text
    text = browser.find_element(By.ID, "tune-text")
    text.send_keys("too short")
    browser.find_element(By.ID, "tune").click()
    _wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "too short" in browser.find_element(By.ID, "error").text
    text.clear()
    browser.execute_script("arguments[0].value = arguments[1]", text, generate_corpus(4000, seed=2))
    Select(browser.find_element(By.ID, "tune-mode")).select_by_value("full")  # every weight
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("8")
    browser.find_element(By.ID, "tune").click()
    _wait(browser, lambda d: d.find_element(By.ID, "tune-status").text.startswith("done"))
    assert browser.find_element(By.ID, "progress-bar").get_attribute("style").endswith("100%;")
    shot = Path(__file__).parent / "artifacts"
    shot.mkdir(exist_ok=True)
    browser.save_screenshot(str(shot / "page.png"))
    _open(browser)  # a reload keeps the fine-tuned model (IndexedDB)
    assert "fine-tuned here" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "reset-model").click()
    _wait(browser, lambda d: "fine-tuned" not in d.find_element(By.ID, "model-info").text
          and "parameters" in d.find_element(By.ID, "model-info").text)


def test_page_without_simd_falls_back_to_scalar(browser):
    """A browser without WebAssembly SIMD (the probe modules fail to validate)."""
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": """
const validate = WebAssembly.validate;
WebAssembly.validate = (bytes) => bytes.byteLength < 64 ? false : validate(bytes);
"""})
    try:
        _open(browser)
        assert browser.execute_script("return document.body.dataset.wasm") == "scalar"
        assert "no WebAssembly SIMD" in browser.find_element("id", "notice").text
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument",
                                {"identifier": script["identifier"]})


def test_page_opened_as_a_file_says_to_serve_it(browser, site):
    browser.get((site / "index.html").as_uri())
    try:
        error = browser.find_element("id", "error")
        assert error.is_displayed() and "served over HTTP" in error.text
    finally:
        browser.get(browser.server_url + "index.html")  # later tests run on the served page


def _stored_adapter(driver, name):
    """The bytes of the adapter `name` the page stored in IndexedDB (for the model in use)."""
    got = driver.execute_async_script("""
const done = arguments[arguments.length - 1];
const req = indexedDB.open("sllm", 1);
req.onsuccess = () => {
  const store = req.result.transaction("models").objectStore("models");
  const keys = store.getAllKeys();
  keys.onsuccess = () => {
    const key = keys.result.find((k) => String(k).startsWith("adapter:") && String(k).endsWith(":" + arguments[0]));
    if (!key) { done(null); return; }
    const get = store.get(key);
    get.onsuccess = () => { let s = ""; for (const b of get.result.bytes) s += String.fromCharCode(b); done(btoa(s)); };
  };
};
""", name)
    return None if got is None else base64.b64decode(got)


def test_page_trains_switches_and_keeps_lora_adapters(browser, site, tmp_path):
    """The fine-tune panel trains a LoRA adapter by default, warns about unknown words
    before it starts, keeps the base, stores the adapter by name (kilobytes; Python loads
    it), switches between base and adapter, comes back to it after a reload, refuses a name
    in use, and deletes it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from sllm.lora import Adapter, LoraConfig
    _open(browser)
    browser.execute_script("indexedDB.deleteDatabase('sllm'); localStorage.clear()")
    _open(browser)
    info = lambda d: d.find_element(By.ID, "model-info").text  # noqa: E731
    assert Select(browser.find_element(By.ID, "tune-mode")).first_selected_option.get_attribute("value") == "lora"
    text = browser.find_element(By.ID, "tune-text")
    browser.execute_script("arguments[0].value = arguments[1]", text, generate_corpus(4000, seed=2) + " Zzyzx Qwoppity")
    text.send_keys(" ")  # an input event: the page checks the words before training
    _wait(browser, lambda d: "not in this model's vocabulary" in d.find_element(By.ID, "tune-warning").text)
    for field, value in (("steps", "6"), ("rank", "4")):
        browser.find_element(By.ID, field).clear()
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "tune").click()
    _wait(browser, lambda d: d.find_element(By.ID, "tune-status").text.startswith("done"), 180)
    assert "adapter “adapter-1”" in browser.find_element(By.ID, "tune-status").text
    assert "+ adapter adapter-1" in info(browser)
    assert browser.find_element(By.ID, "adapter-name").get_attribute("value") == "adapter-2"
    shot = Path(__file__).parent / "artifacts"
    shot.mkdir(exist_ok=True)
    browser.save_screenshot(str(shot / "page-lora.png"))
    data = _stored_adapter(browser, "adapter-1")
    assert data is not None and len(data) < 0.1 * (site / "model.sllm").stat().st_size
    (tmp_path / "a.sllm").write_bytes(data)
    base = sllm.load(site / "model.sllm", backend="numpy")
    adapter = Adapter.load(tmp_path / "a.sllm", base)  # made for this base: the fingerprint agrees
    assert adapter.config.rank == 4 and adapter.metadata["trained_in_browser"]["steps"] == 6
    select = Select(browser.find_element(By.ID, "adapter-select"))
    select.select_by_value("")  # back to the base
    _wait(browser, lambda d: "adapter" not in info(d) and not d.find_element(By.ID, "adapter-download").is_enabled())
    select.select_by_value("adapter-1")
    _wait(browser, lambda d: "+ adapter adapter-1" in info(d))
    assert browser.find_element(By.ID, "adapter-download").is_enabled()
    _open(browser)  # a reload comes back to the adapter in use
    _wait(browser, lambda d: "+ adapter adapter-1" in info(d))
    browser.find_element(By.ID, "adapter-name").clear()
    browser.find_element(By.ID, "adapter-name").send_keys("adapter-1")
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "tune-text"),
                           generate_corpus(4000, seed=3))
    browser.find_element(By.ID, "tune").click()
    _wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "an adapter named \"adapter-1\" exists already" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "adapter-delete").click()
    _wait(browser, lambda d: "adapter" not in info(d) and "parameters" in info(d))
    assert [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "adapter-select")).options] == [""]
    assert _stored_adapter(browser, "adapter-1") is None
    # an adapter file from Python (as `sllm finetune` writes it, f16) is added; one made for
    # another model is refused with the reader's LoraError
    made = Adapter.create(base, LoraConfig(rank=2, targets="attn"), seed=3)
    made.save(tmp_path / "from-python.sllm", dtype="f16")
    other = sllm.SLLM(base.config, backend="numpy", seed=9)
    Adapter.create(other, LoraConfig(rank=2), seed=3).save(tmp_path / "other.sllm")
    browser.find_element(By.ID, "adapter-file").send_keys(str(tmp_path / "other.sllm"))
    _wait(browser, lambda d: "LoraError" in d.find_element(By.ID, "error").text)
    assert "another base model" in browser.find_element(By.ID, "error").text and "adapter" not in info(browser)
    browser.find_element(By.ID, "adapter-file").send_keys(str(tmp_path / "from-python.sllm"))
    _wait(browser, lambda d: "+ adapter from-python" in info(d))
    assert _stored_adapter(browser, "from-python") is not None


def test_page_trains_a_lora_adapter_on_a_quantized_model(browser, site):
    """A q8_0 model trains a LoRA adapter on the page (QLoRA: matmul_q_bwd in the module);
    a full fine-tune of it is not offered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    _open(browser, "?model=q8_0.sllm")
    browser.execute_script("localStorage.clear()")
    assert "q8_0" in browser.find_element(By.ID, "tune-status").text
    mode = Select(browser.find_element(By.ID, "tune-mode"))
    mode.select_by_value("full")
    assert not browser.find_element(By.ID, "tune").is_enabled()
    mode.select_by_value("lora")
    browser.execute_script("arguments[0].value = arguments[1]", browser.find_element(By.ID, "tune-text"),
                           generate_corpus(4000, seed=4))
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("3")
    name = browser.find_element(By.ID, "adapter-name")
    name.clear()
    name.send_keys("on-q8")
    browser.find_element(By.ID, "tune").click()
    _wait(browser, lambda d: d.find_element(By.ID, "tune-status").text.startswith("done"), 180)
    assert "+ adapter on-q8" in browser.find_element(By.ID, "model-info").text
    assert _stored_adapter(browser, "on-q8") is not None
