"""sllm/web/worker.js under Node (the page's worker, without a browser): a Stop message
ends a running generation after its current token and frees it for the next; a model
file that fails to load leaves the previous model running; a grammar in the options
holds the worker's output to it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_js import run_node, skip_without_node

import sllm
from sllm.corpus import generate_corpus
from sllm.tokenizer import BPETokenizer


@pytest.fixture(scope="module", autouse=True)
def _node():
    skip_without_node()
    if "wasm" not in sllm.backends.available():
        pytest.skip("the WebAssembly modules were not built")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    tok = BPETokenizer.train(generate_corpus(20_000, seed=3), 300)
    cfg = {"vocabSize": tok.vocab_size, "embeddingDim": 32, "numLayers": 2, "numHeads": 2,
           "ffnHiddenDim": 64, "dropout": 0.0, "maxSeqLen": 512}
    model = sllm.SLLM(cfg, backend="numpy", seed=5)
    model.tokenizer = tok.to_dict()
    path = tmp_path_factory.mktemp("worker") / "model.sllm"
    model.save(path)
    return path


# The worker's globals (postMessage, onmessage), and fetch for the .wasm files it loads.
HARNESS = """
const { readFile } = await import("node:fs/promises");
const { join } = await import("node:path");
globalThis.fetch = async (url) => {
  const name = String(url).split("/").pop();
  const data = await readFile(join(process.env.SLLM_WASM_DIR, name));
  return { ok: true, arrayBuffer: async () => data.buffer.slice(data.byteOffset, data.byteOffset + data.length) };
};
const sent = [];
const waiting = new Map();
globalThis.postMessage = (m) => {
  sent.push(m);
  const w = waiting.get(m.id);
  if (w && (m.type === "done" || m.type === "error")) { waiting.delete(m.id); w(m); }
  if (w && m.type === "piece" && w.onPiece) w.onPiece(m);
};
globalThis.onmessage = null;  // a worker's global, assigned by worker.js
await import((await import("node:url")).pathToFileURL(args[0]).href);
const call = (msg, onPiece) => new Promise((resolve) => {
  const w = (m) => resolve(m);
  w.onPiece = onPiece;
  waiting.set(msg.id, w);
  globalThis.onmessage({ data: msg });
});
const bytes = await web.bytes(args[1]);
"""


WORKER = Path(__file__).resolve().parent.parent / "sllm" / "web" / "worker.js"


def _run(body, *args):
    return run_node(HARNESS + body, str(WORKER), *args)


def test_stop_ends_a_generation_after_its_current_token(model_file):
    got = _run("""
const load = await call({ id: 1, type: "load", source: bytes, wasm: "scalar",
                         features: { simd: false, relaxed: false } });
let stopped = false;
const gen = call({ id: 2, type: "generate", prompt: "the", options: { maxTokens: 400, temperature: 1, seed: 1 } },
  () => { if (!stopped) { stopped = true; globalThis.onmessage({ data: { id: 3, type: "stop" } }); } });
const done = await gen;
const again = await call({ id: 4, type: "generate", prompt: "the", options: { maxTokens: 5, temperature: 0 } });
return { load: load.type, done: done.result, again: again.result,
         pieces: sent.filter((m) => m.id === 2 && m.type === "piece").length };
""", str(model_file))
    assert got["load"] == "done"
    assert got["done"]["stopped"] is True and got["done"]["stats"]["tokens"] < 50
    assert got["pieces"] >= 1
    assert got["again"]["stopped"] is False and got["again"]["stats"]["tokens"] == 5


def test_a_failed_load_keeps_the_previous_model(model_file):
    got = _run("""
await call({ id: 1, type: "load", source: bytes, wasm: "scalar", features: { simd: false, relaxed: false } });
const bad = await call({ id: 2, type: "load", source: new Uint8Array([1, 2, 3, 4]), wasm: "scalar" });
const after = await call({ id: 3, type: "generate", prompt: "the", options: { maxTokens: 3, temperature: 0 } });
return { bad: [bad.type, bad.name], after: after.type, tokens: after.result.stats.tokens };
""", str(model_file))
    assert got == {"bad": ["error", "FormatError"], "after": "done", "tokens": 3}


def test_the_worker_generates_constrained_json(model_file):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                               "n": {"type": "integer"}},
              "required": ["name", "n"]}
    got = _run("""
await call({ id: 1, type: "load", source: bytes, wasm: "scalar", features: { simd: false, relaxed: false } });
const pieces = [];
await call({ id: 2, type: "generate", prompt: "a", options: { maxTokens: 60, seed: 2, jsonSchema: args[2] } },
  (m) => pieces.push(m.text));
return pieces.join("");
""", str(model_file), schema)
    value = json.loads(got)
    assert isinstance(value["name"], str) and isinstance(value["n"], int)
