/**
 * The models the engine tests run on: the seeded synthetic "tiny" Llama (2 layers, dim 64, the Llama-3 tokenizer)
 * and, for CUDA, "small"; materialised once in the mkchat cache by weights/synthetic.ts.
 * @module
 */

import { loadModelFolder, type ModelFiles } from "../../weights/model_files.ts";
import { materializeSynthetic } from "../../weights/synthetic.ts";

let files: Promise<ModelFiles> | null = null;
let small: Promise<ModelFiles> | null = null;

/** ModelFiles of synthetic:tiny@7 (made on first use). */
export function tinyModel(): Promise<ModelFiles> {
  files ??= materializeSynthetic("tiny", 7).then((dir) => loadModelFolder(dir, "synthetic:tiny@7"));
  return files;
}

/** ModelFiles of synthetic:small@7 (hidden 512, 4 layers): the smallest shape the CUDA megakernel runs. */
export function smallModel(): Promise<ModelFiles> {
  small ??= materializeSynthetic("small", 7).then((dir) => loadModelFolder(dir, "synthetic:small@7"));
  return small;
}
