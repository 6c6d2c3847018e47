// The page: talks to the model in worker.js, keeps a fine-tuned model and LoRA adapters in
// IndexedDB (ModelStorage), draws the loss curve. No framework, no build step.
import { features } from "./sllm.js";

const $ = (id) => document.getElementById(id);

/** Request/response over the worker: call(type, fields, onMessage) -> Promise of the result. */
class ModelWorker {
  constructor() {
    this.pending = new Map();
    this.next = 1;
    try {
      this.worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    } catch (e) {
      this.failure = new Error(location.protocol === "file:"
        ? "the page must be served over HTTP (python -m http.server -d SITE), not opened as a file"
        : `the model worker could not be started: ${e.message}`);
      return;
    }
    this.worker.onmessage = ({ data }) => {
      const p = this.pending.get(data.id);
      if (!p) return;
      if (data.type === "done") { this.pending.delete(data.id); p.resolve(data.result); }
      else if (data.type === "error") {
        this.pending.delete(data.id);
        const e = new Error(data.message);
        e.name = data.name;
        p.reject(e);
      } else if (p.onMessage) p.onMessage(data);
    };
    // A worker that cannot start (e.g. the page opened as a file:// URL) fails every call.
    this.worker.onerror = (event) => {
      const reason = location.protocol === "file:"
        ? "the page must be served over HTTP (python -m http.server -d SITE), not opened as a file"
        : `the model worker failed: ${event.message || "it could not be started"}`;
      for (const p of this.pending.values()) p.reject(new Error(reason));
      this.pending.clear();
    };
  }
  call(type, fields = {}, onMessage = null, transfer = []) {
    if (this.failure) return Promise.reject(this.failure);
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, onMessage });
      this.worker.postMessage({ id, type, ...fields }, transfer);
    });
  }
}

/** The roadmap's ModelStorage: model bytes by key, in IndexedDB. */
export const ModelStorage = {
  open() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open("sllm", 1);
      req.onupgradeneeded = () => req.result.createObjectStore("models");
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  },
  async run(mode, fn) {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction("models", mode);
      const req = fn(tx.objectStore("models"));
      tx.oncomplete = () => { db.close(); resolve(req.result); };
      tx.onerror = () => { db.close(); reject(tx.error); };
    });
  },
  get(key) { return this.run("readonly", (s) => s.get(key)); },
  put(key, bytes, extra = {}) { return this.run("readwrite", (s) => s.put({ bytes, saved: Date.now(), ...extra }, key)); },
  delete(key) { return this.run("readwrite", (s) => s.delete(key)); },
  keys() { return this.run("readonly", (s) => s.getAllKeys()); },
};

/**
 * A fine-tuned copy of the site's model is stored under the site model's path and checksum,
 * so a site that ships a different model (re-exported, quantized) is never hidden by a copy
 * fine-tuned from the old one.
 */
function siteKey(path, checksum) { return `site:${path}#${checksum}`; }

/** FNV-1a (32 bits) and the length: a checksum of the model's bytes (crypto.subtle needs HTTPS). */
function checksum(bytes) {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
  return `${bytes.length.toString(16)}-${(h >>> 0).toString(16).padStart(8, "0")}`;
}

/**
 * LoRA adapters are stored by the fingerprint of the base they were made for (what their
 * file names too), so each model lists only the adapters that fit it.
 */
const Adapters = {
  key(fp, name) { return `adapter:${fp}:${name}`; },
  async list(fp) {
    const keys = await ModelStorage.keys().catch(() => []);
    const prefix = `adapter:${fp}:`;
    return keys.filter((k) => String(k).startsWith(prefix)).map((k) => String(k).slice(prefix.length)).sort();
  },
  get(fp, name) { return ModelStorage.get(this.key(fp, name)); },
  put(fp, name, bytes, about) { return ModelStorage.put(this.key(fp, name), bytes, { name, ...about }); },
  delete(fp, name) { return ModelStorage.delete(this.key(fp, name)); },
  // which adapter was in use for a base, so a reload comes back to it
  active(fp) { try { return localStorage.getItem(`sllm-adapter:${fp}`) || ""; } catch { return ""; } },
  setActive(fp, name) { try { localStorage.setItem(`sllm-adapter:${fp}`, name || ""); } catch { /* private mode */ } },
};

const state = {
  worker: new ModelWorker(), info: null, busy: false, generating: false, siteModel: "model.sllm", storageKey: null,
  name: "model", finetuned: false, olderCopy: null, adapter: "", origin: "",
};

function showError(e) {
  const box = $("error");
  box.hidden = !e;
  box.textContent = e ? `${e.name && e.name !== "Error" ? e.name + ": " : ""}${e.message || e}` : "";
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function setBusy(busy, generating = false) {
  state.busy = busy;
  state.generating = generating;
  const ready = Boolean(state.info) && !busy;
  for (const id of ["send", "chat-input", "tune", "download", "reset-model", "mode", "adapter-select", "adapter-file",
    "tune-mode", "rank", "adapter-name"]) $(id).disabled = !ready;
  for (const id of ["adapter-download", "adapter-delete"]) $(id).disabled = !ready || !state.adapter;
  if (state.info && state.info.qtype && (loraMode() ? !state.info.quantizedTraining : true)) {
    $("tune").disabled = true; // quantized: a LoRA adapter trains on it, every weight does not
  }
  $("stop").hidden = !generating;
  $("send").hidden = generating;
}

function describe(info, origin) {
  const c = info.config;
  const params = info.parameters >= 1e6 ? `${(info.parameters / 1e6).toFixed(2)}M` : `${(info.parameters / 1e3).toFixed(0)}k`;
  const adapter = state.adapter ? ` + adapter ${state.adapter}` : "";
  return `${state.name}${origin}${adapter} · ${params} parameters · ${c.num_layers} layers × ${c.embedding_dim} · ${info.tokenizer || "no"} tokenizer (${info.vocab}) · ${info.dtype}`;
}

function showInfo() {
  if (state.info) $("model-info").textContent = describe(state.info, state.origin);
}

const WASM_NAMES = { relaxed: "SIMD128 + relaxed SIMD", simd128: "SIMD128", scalar: "scalar (no SIMD)" };

async function loadModel(source, origin = "", { keepPrevious = false } = {}) {
  const previous = { info: state.info, text: $("model-info").textContent };
  setBusy(true);
  showError(null);
  $("model-info").textContent = "loading…";
  try {
    const transfer = source instanceof Uint8Array ? [source.buffer] : [];
    // Feature detection happens here, in the page, and the worker is told the result.
    const wasm = new URLSearchParams(location.search).get("wasm") || "auto";
    const info = await state.worker.call("load", { source, wasm, features: features() }, null, transfer);
    state.info = info;
    state.origin = origin;
    state.adapter = "";
    $("model-info").textContent = describe(info, origin);
    $("wasm-kind").textContent = WASM_NAMES[info.wasm];
    notice(info.wasm === "scalar"
      ? "This browser has no WebAssembly SIMD: running the scalar module, which is several times slower." : "");
    document.body.dataset.wasm = info.wasm;
    $("tune-status").textContent = info.qtype
      ? `This model's weights are ${info.qtype} (quantized): a LoRA adapter trains on it; a full fine-tune needs a float model (sllm export-web --dtype f32).` : "";
    state.finetuned = origin.includes("fine-tuned");
    clearChat();
    await showAdapters(Adapters.active(info.fingerprint));
    return info;
  } catch (e) {
    // The worker keeps its model when a load fails, so the page can keep showing it.
    state.info = keepPrevious ? previous.info : null;
    $("model-info").textContent = state.info ? previous.text : "no model loaded";
    showError(e);
    throw e;
  } finally {
    setBusy(false);
    document.body.dataset.ready = "1";
  }
}

// ---- chat ------------------------------------------------------------------------------
function addMessage(who, text) {
  const div = document.createElement("div");
  div.className = `msg ${who === "A" ? "user" : "bot"}`;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  const body = document.createElement("span");
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return { div, body };
}

function clearChat() {
  for (const m of [...document.querySelectorAll(".msg")]) m.remove();
  if (state.info) state.worker.call("reset").catch(showError);
}

function sampling() {
  const num = (id) => Number($(id).value);
  return { temperature: num("temperature"), topK: num("top-k") || null, maxTokens: num("max-tokens") };
}

function addText(prompt) {
  const div = document.createElement("div");
  div.className = "msg text";
  const head = document.createElement("span");
  head.className = "prompt";
  head.textContent = prompt;
  const body = document.createElement("span");
  div.append(head, body);
  $("messages").append(div);
  return { div, body };
}

function showStats(result) {
  const s = result.stats;
  if (s && s.tokens) {
    $("speed").textContent = `${s.tokens} token${s.tokens === 1 ? "" : "s"} · ${s.tokensPerSecond.toFixed(0)} tokens/s · first token ${s.firstTokenMs.toFixed(0)} ms${result.stopped ? " · stopped" : ""}`;
  }
  $("unknown").textContent = result.unknown.length
    ? `not in the vocabulary, read as [UNK]: ${[...new Set(result.unknown)].join(", ")}` : "";
}

async function send(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text || state.busy) return;
  const chat = $("mode").value === "chat";
  $("chat-input").value = "";
  let div, body;
  if (chat) {
    addMessage("A", text);
    ({ div, body } = addMessage("B", ""));
  } else {
    ({ div, body } = addText(text));
  }
  div.classList.add("typing");
  setBusy(true, true);
  showError(null);
  let first = true;
  try {
    const { maxTokens, ...opts } = sampling();
    const onPiece = (m) => {
      body.textContent += first && chat ? m.text.trimStart() : m.text;
      first = false;
      $("messages").scrollTop = $("messages").scrollHeight;
    };
    const result = chat
      ? await state.worker.call("chat", { text, options: opts, maxTokens }, onPiece)
      : await state.worker.call("generate", { prompt: text, options: { ...opts, maxTokens } }, onPiece);
    showStats(result);
    if (chat && !body.textContent) body.textContent = "…";
  } catch (e) {
    showError(e);
  } finally {
    div.classList.remove("typing");
    setBusy(false);
    $("chat-input").focus();
  }
}

function stop() {
  if (state.generating) state.worker.call("stop").catch(showError);
}

function setMode() {
  $("chat-input").placeholder = $("mode").value === "chat" ? "Say something…" : "Text for the model to continue…";
}

// ---- fine-tuning -------------------------------------------------------------------------
function drawLoss(losses, steps) {
  const canvas = $("loss-curve");
  const scale = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * scale;
  canvas.height = h * scale;
  const g = canvas.getContext("2d");
  g.scale(scale, scale);
  g.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 12, t: 12, b: 26 };
  g.strokeStyle = "#e3e6eb";
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.strokeRect(pad.l, pad.t, w - pad.l - pad.r, h - pad.t - pad.b);
  if (!losses.length) {
    g.fillText("the loss per step appears here while fine-tuning", pad.l + 10, h / 2);
    return;
  }
  const lo = Math.min(...losses), hi = Math.max(...losses), span = hi - lo || 1;
  const x = (i) => pad.l + ((w - pad.l - pad.r) * i) / Math.max(steps - 1, 1);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - (v - lo) / span);
  for (const v of [lo, (lo + hi) / 2, hi]) g.fillText(v.toFixed(2), 6, y(v) + 4);
  g.fillText("step", (pad.l + w - pad.r) / 2 - 12, h - 8);
  g.fillText(String(steps), x(steps - 1) - 4 * String(steps).length, h - 8);
  g.fillText("1", pad.l - 2, h - 8);
  g.strokeStyle = "#2f6fec";
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.stroke();
}

function loraMode() { return $("tune-mode").value === "lora"; }

function setTuneMode() {
  const lora = loraMode();
  $("tune-card").dataset.mode = lora ? "lora" : "full";
  $("tune-help").textContent = lora
    ? "Trains a small adapter (kilobytes) on top of the model: the model itself stays as it is, and you can switch back to it at any time."
    : "Changes every weight of the model (no undo but Reset); adapters made for the model before no longer apply to it.";
  if (!$("lr").dataset.edited) $("lr").value = lora ? "0.003" : "0.001";
  setBusy(state.busy, state.generating);
}

/** The first free "adapter-N" among the stored adapters. */
function freeName(names) {
  let n = 1;
  while (names.includes(`adapter-${n}`)) n++;
  return `adapter-${n}`;
}

/** Fill the adapter selector with this model's stored adapters and attach `select` ("" = the base). */
async function showAdapters(select = state.adapter) {
  if (!state.info) return;
  const names = await Adapters.list(state.info.fingerprint);
  const box = $("adapter-select");
  box.replaceChildren(new Option("none", ""), ...names.map((n) => new Option(n, n)));
  const current = $("adapter-name").value.trim();
  if (!current || names.includes(current)) $("adapter-name").value = freeName(names);
  await useAdapter(names.includes(select) ? select : "");
}

/** Switch the worker's model to the base ("") or to the stored adapter `name`. */
async function useAdapter(name) {
  const fp = state.info.fingerprint;
  if (name) {
    const record = await Adapters.get(fp, name);
    if (!record) throw new Error(`no adapter named ${JSON.stringify(name)} is stored in this browser`);
    state.info = await state.worker.call("loadAdapter", { bytes: record.bytes, name });
  } else if (state.info.adapter) {
    state.info = await state.worker.call("detachAdapter");
  }
  state.adapter = name;
  Adapters.setActive(fp, name);
  $("adapter-select").value = name;
  for (const m of [...document.querySelectorAll(".msg")]) m.remove(); // the worker started a new chat
  showInfo();
  setBusy(state.busy, state.generating);
}

async function switchAdapter() {
  setBusy(true);
  showError(null);
  try {
    await useAdapter($("adapter-select").value);
  } catch (e) {
    showError(e);
    $("adapter-select").value = state.adapter;
  } finally {
    setBusy(false);
  }
}

/** Check the text for words the model does not know, before training starts. */
async function checkUnknown() {
  if (!state.info || state.busy) return null;
  const report = await state.worker.call("unknown", { text: $("tune-text").value }).catch(() => null);
  $("tune-warning").textContent = report ? `${report}.` : "";
  return report;
}

let unknownTimer = null;
function textChanged() {
  clearTimeout(unknownTimer);
  unknownTimer = setTimeout(checkUnknown, 400);
}

async function finetune() {
  const text = $("tune-text").value, lora = loraMode();
  const steps = Number($("steps").value), lr = Number($("lr").value), batchSize = Number($("batch").value);
  const name = $("adapter-name").value.trim(), rank = Number($("rank").value);
  const losses = [];
  showError(null);
  if (lora) {
    const problem = !name ? "give the adapter a name"
      : (await Adapters.list(state.info.fingerprint)).includes(name)
        ? `an adapter named ${JSON.stringify(name)} exists already: choose another name, or delete that one first` : null;
    if (problem) { showError(new Error(problem)); return; }
  }
  // A model without byte fallback reads words it does not know as [UNK]: say how many first.
  await checkUnknown();
  setBusy(true);
  $("progress-bar").style.width = "0";
  drawLoss(losses, steps);
  try {
    const options = lora ? { steps, lr, batchSize, lora: { rank } } : { steps, lr, batchSize, full: true };
    const result = await state.worker.call("finetune", { text, options }, (p) => {
      losses.push(p.loss);
      $("progress-bar").style.width = `${(100 * p.step) / p.steps}%`;
      $("tune-status").textContent = `step ${p.step}/${p.steps} · loss ${p.loss.toFixed(3)} · ${p.tokensPerSecond.toFixed(0)} tokens/s`;
      drawLoss(losses, steps);
    });
    const summary = `${steps} steps in ${result.seconds.toFixed(1)} s, loss ${result.losses[0].toFixed(3)} → ${result.losses[result.losses.length - 1].toFixed(3)}`;
    state.info = result.info;
    if (lora) {
      const bytes = await state.worker.call("saveAdapter");
      const kb = (bytes.length / 1024).toFixed(0);
      await Adapters.put(state.info.fingerprint, name, bytes, { steps, rank, saved: Date.now(), model: state.name });
      state.adapter = name;
      await showAdapters(name);
      $("tune-status").textContent = `done: ${summary} · adapter “${name}” (${kb} KB) saved in this browser`;
    } else {
      const bytes = await state.worker.call("save");
      await ModelStorage.put(state.storageKey, bytes, { model: state.name });
      state.finetuned = true;
      state.origin = " (fine-tuned here)";
      state.adapter = "";
      await showAdapters("");
      $("tune-status").textContent = `done: ${summary} · saved in this browser`;
    }
    showInfo();
  } catch (e) {
    showError(e);
    $("tune-status").textContent = "";
  } finally {
    setBusy(false);
  }
}

/** Save `bytes` as a file called `name`. */
function saveFile(bytes, name) {
  const url = URL.createObjectURL(new Blob([bytes], { type: "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function downloadAdapter() {
  try {
    const record = await Adapters.get(state.info.fingerprint, state.adapter);
    saveFile(record.bytes, `${state.name.replace(/\.sllm$/, "")}-${state.adapter}.adapter.sllm`);
  } catch (e) {
    showError(e);
  }
}

async function deleteAdapter() {
  const name = state.adapter;
  if (!name) return;
  setBusy(true);
  try {
    await useAdapter("");
    await Adapters.delete(state.info.fingerprint, name);
    await showAdapters("");
    $("tune-status").textContent = `deleted the adapter “${name}”`;
  } catch (e) {
    showError(e);
  } finally {
    setBusy(false);
  }
}

/** An adapter file from disk (from this page or `sllm finetune`): stored, then used. */
async function openAdapterFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  event.target.value = "";
  const name = file.name.replace(/\.sllm$/, "").replace(/\.adapter$/, "").slice(0, 40);
  setBusy(true);
  showError(null);
  try {
    if ((await Adapters.list(state.info.fingerprint)).includes(name)) {
      throw new Error(`an adapter named ${JSON.stringify(name)} exists already: delete that one first, or rename the file`);
    }
    const bytes = new Uint8Array(await file.arrayBuffer());
    state.info = await state.worker.call("loadAdapter", { bytes: bytes.slice(), name: file.name }); // refused unless it fits
    await Adapters.put(state.info.fingerprint, name, bytes, { saved: Date.now(), model: state.name });
    state.adapter = "";
    await showAdapters(name);
  } catch (e) {
    showError(e);
    await useAdapter(state.adapter).catch(() => {}); // what was in use before
  } finally {
    setBusy(false);
  }
}

async function download() {
  setBusy(true);
  try {
    saveFile(await state.worker.call("save"), downloadName());
  } catch (e) {
    showError(e);
  } finally {
    setBusy(false);
  }
}

/** model-TYPE[-finetuned]-YYYY-MM-DD.sllm: what the file is, at a glance. */
function downloadName() {
  const base = state.name.replace(/\.sllm$/, "").replace(/-(f32|f16|q8_0|q4_0|q4_1)(-finetuned)?(-\d{4}-\d\d-\d\d)?$/, "");
  const type = state.info ? state.info.qtype || state.info.dtype : "f32";
  const date = new Date().toISOString().slice(0, 10);
  return `${base}-${type}${state.finetuned ? "-finetuned" : ""}-${date}.sllm`;
}

async function openFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  const before = { name: state.name, storageKey: state.storageKey, finetuned: state.finetuned };
  const bytes = new Uint8Array(await file.arrayBuffer());
  state.name = file.name;
  state.storageKey = `file:${file.name}#${checksum(bytes)}`;
  try {
    await loadModel(bytes, "", { keepPrevious: Boolean(state.info) });
  } catch {
    Object.assign(state, before); // a bad file leaves the model that was running
    setBusy(false);
  }
  event.target.value = "";
}

async function resetModel() {
  await ModelStorage.delete(state.storageKey).catch(() => {});
  await start(true);
}

/** A copy fine-tuned from another version of the site's model, if this browser has one. */
async function olderCopy(path, key) {
  const keys = await ModelStorage.keys().catch(() => []);
  const other = keys.find((k) => k !== key && (k === `site:${path}` || String(k).startsWith(`site:${path}#`)));
  return other ? { key: other, record: await ModelStorage.get(other).catch(() => null) } : null;
}

function offerOlderCopy(older) {
  state.olderCopy = older;
  $("stored-notice").hidden = !older;
  if (!older) return;
  const when = older.record && older.record.saved ? new Date(older.record.saved).toLocaleString() : "earlier";
  $("stored-text").textContent = `This site now ships a different ${state.name} than the one your fine-tuned copy ` +
    `(saved ${when}) was made from: showing the site's model.`;
}

async function useOlderCopy() {
  const older = state.olderCopy;
  if (!older || !older.record) return;
  state.storageKey = older.key;
  offerOlderCopy(null);
  await loadModel(older.record.bytes, " (fine-tuned here, from the site's previous model)").catch(() => {});
}

async function start(forceSite = false) {
  try {
    const site = await fetch("site.json").then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
    const params = new URLSearchParams(location.search);
    state.siteModel = params.get("model") || site.model || "model.sllm";
    state.name = state.siteModel.split("/").pop();
    const path = new URL(state.siteModel, location.href).pathname;
    $("model-info").textContent = "loading…";
    const response = await fetch(state.siteModel, { cache: "no-cache" }).catch(() => null);
    const bytes = response && response.ok ? new Uint8Array(await response.arrayBuffer()) : null;
    if (!bytes) {
      await loadModel(state.siteModel); // shows the error the load gives
      return;
    }
    state.storageKey = siteKey(path, checksum(bytes));
    const stored = forceSite ? null : await ModelStorage.get(state.storageKey).catch(() => null);
    offerOlderCopy(forceSite ? null : await olderCopy(path, state.storageKey));
    if (stored && stored.bytes) {
      await loadModel(stored.bytes, " (fine-tuned here)");
    } else {
      await loadModel(bytes);
    }
  } catch {
    // loadModel has shown the error on the page
  }
}

$("chat-form").addEventListener("submit", send);
$("clear-chat").addEventListener("click", clearChat);
$("tune").addEventListener("click", finetune);
$("download").addEventListener("click", download);
$("file-input").addEventListener("change", openFile);
$("reset-model").addEventListener("click", resetModel);
$("stop").addEventListener("click", stop);
$("mode").addEventListener("change", setMode);
$("use-stored").addEventListener("click", useOlderCopy);
$("tune-mode").addEventListener("change", setTuneMode);
$("lr").addEventListener("input", () => { $("lr").dataset.edited = "1"; });
$("tune-text").addEventListener("input", textChanged);
$("adapter-select").addEventListener("change", switchAdapter);
$("adapter-download").addEventListener("click", downloadAdapter);
$("adapter-delete").addEventListener("click", deleteAdapter);
$("adapter-file").addEventListener("change", openAdapterFile);
setTuneMode();
if (!features().simd) notice("This browser has no WebAssembly SIMD: the scalar module will be used.");
drawLoss([], 1);
start();
