// The page's model runs here, so the page never freezes. Messages in:
//   {id, type: "load", source, wasm, features}     -> {id, type: "done", result: info}
//   {id, type: "generate", prompt, options}              -> pieces, then done
//   {id, type: "chat", text, options} / {type: "reset"}  -> pieces, then done
//   {id, type: "finetune", text, options}                -> progress per step, then done
//        (options.lora: train a new LoRA adapter; options.full: detach any adapter and train
//        every weight)
//   {id, type: "loadAdapter", bytes, name}               -> done with the adapter's description
//   {id, type: "saveAdapter"}                            -> done with the attached adapter's bytes
//   {id, type: "detachAdapter"}                          -> done; the base model alone again
//   {id, type: "unknown", text}                          -> done with the unknown-token report or null
//   {id, type: "save"}                                   -> done with the SLLM bytes
//   {id, type: "stop"}                                   -> done; the running generation ends
//                                                           after its current token
// Every failure comes back as {id, type: "error", name, message}.
import { load, features } from "./sllm.js";

let model = null;
let session = null;
let stopRequested = false;

/** A macrotask break (no timer clamping): lets a "stop" message in between two tokens. */
function yieldToMessages() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => { channel.port1.close(); resolve(); };
    channel.port2.postMessage(null);
  });
}

function info(m) {
  const c = m.config;
  return {
    config: c, parameters: m.numParameters(), wasm: m.wasm, features: features(),
    tokenizer: m.tokenizer ? m.tokenizer.kind : null, vocab: c.vocab_size, dtype: m.file.dtype,
    metadata: m.metadata, fileSize: m.file.fileSize, qtype: m.net.qtype, fingerprint: m.fingerprint(),
    quantizedTraining: Boolean(m.kernels.exports.matmul_q_bwd), adapter: m.adapter,
  };
}

async function streamOut(id, pieces, extra) {
  stopRequested = false;
  for await (const piece of pieces) {
    postMessage({ id, type: "piece", text: piece });
    await yieldToMessages();
    if (stopRequested) break; // ends the generator: its KV cache is released
  }
  postMessage({ id, type: "done", result: { stats: model.stats, stopped: stopRequested, ...extra } });
}

const handlers = {
  async load(msg) {
    const m = await load(msg.source, { wasm: msg.wasm || "auto", features: msg.features });
    model = m;
    session = m.chat(msg.chat || {});
    return info(m);
  },
  async generate(msg) {
    const unknown = model.unknownPieces(msg.prompt);
    await streamOut(msg.id, model.stream(msg.prompt, msg.options || {}), { unknown });
  },
  async chat(msg) {
    const unknown = model.unknownPieces(msg.text);
    if (msg.maxTokens) session.maxTokens = msg.maxTokens;
    await streamOut(msg.id, session.reply(msg.text, msg.options || {}), { unknown });
  },
  async reset() {
    session = model.chat();
    return {};
  },
  async unknown(msg) {
    return model.unknownReport(msg.text);
  },
  async finetune(msg) {
    const onProgress = (p) => postMessage({ id: msg.id, type: "progress", ...p });
    const { full = false, ...options } = msg.options || {};
    if (full) model.detachAdapter();
    const result = await model.finetune(msg.text, { ...options, onProgress });
    return { ...result, info: info(model) };
  },
  async loadAdapter(msg) {
    await model.loadAdapter(msg.bytes, { name: msg.name });
    session = model.chat();
    return info(model);
  },
  async saveAdapter() {
    return model.saveAdapter();
  },
  async detachAdapter() {
    model.detachAdapter();
    session = model.chat();
    return info(model);
  },
  async save() {
    return model.save();
  },
  async stop() {
    stopRequested = true;
    return {};
  },
};

onmessage = async (event) => {
  const msg = event.data;
  try {
    if (msg.type !== "load" && msg.type !== "stop" && !model) throw new Error("no model is loaded");
    const result = await handlers[msg.type](msg);
    if (result !== undefined) {
      const transfer = result instanceof Uint8Array ? [result.buffer] : [];
      postMessage({ id: msg.id, type: "done", result }, transfer);
    }
  } catch (e) {
    postMessage({ id: msg.id, type: "error", name: e.name || "Error", message: e.message || String(e) });
  }
};
