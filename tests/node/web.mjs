// What a Node parity script sees (tests/node_js.py puts `import * as web from` this file
// at the top of each script): the browser modules of sllm/web, imported as a page imports
// them, and a way to load a model from a file with the same WebAssembly modules Python runs.

import { readFile } from "node:fs/promises";
import { join } from "node:path";

export * as format from "../../sllm/web/format.js";
export * as tokenizers from "../../sllm/web/tokenizers.js";
export * as kernels from "../../sllm/web/kernels.js";
export * as model from "../../sllm/web/model.js";
export * as sllm from "../../sllm/web/sllm.js";
export * as constrain from "../../sllm/web/constrain.js";
export * as lora from "../../sllm/web/lora.js";
import { Kernels } from "../../sllm/web/kernels.js";
import { readModel } from "../../sllm/web/format.js";
import { Model } from "../../sllm/web/sllm.js";

/**
 * sllm.js's load() without fetch: the model file's bytes from `path`, the .wasm modules
 * from SLLM_WASM_DIR (the installed package's sllm/wasm). `wasm` is "auto", "relaxed",
 * "simd128" or "scalar", as load()'s option.
 */
export async function loadModel(path, wasm = "auto") {
  const dir = process.env.SLLM_WASM_DIR;
  const kernels = await Kernels.create((name) => readFile(join(dir, name)), wasm);
  return new Model(kernels, readModel(new Uint8Array(await readFile(path)), path), path.split("/").pop());
}

/** The bytes of a file (a Uint8Array). */
export async function bytes(path) { return new Uint8Array(await readFile(path)); }
