/**
 * Model references: the text a user passes as `--model` and what it names.
 *
 *  - `org/name` or `org/name@revision`: a Hugging Face Hub repo (revision defaults to "main"; a branch, a tag or a
 *    commit hash; branch names may contain "/", as in `refs/pr/3`).
 *  - a folder that exists (absolute, relative or `~/...`): a local model folder. An existing folder wins over a hub
 *    id with the same spelling, as in HF transformers' from_pretrained.
 *  - `synthetic:<shape>[@seed]`: seeded random weights of a named shape (see synthetic.ts), seed 0 by default.
 *
 * @module
 */

import { existsSync, statSync } from "node:fs";
import { homedir } from "node:os";
import { resolve } from "node:path";
import { MkError } from "./errors.ts";

/**
 * The shapes synthetic models can take: Llama-3.2-1B exactly; `tiny` for CPU tests; `small`, the smallest the CUDA
 * megakernel runs (GPU fidelity and compute-sanitizer). All use the Llama-3 tokenizer.
 */
export type SyntheticShape = "llama-3.2-1b" | "tiny" | "small" | "small-hd128";

/** Every synthetic shape, in the order help texts list them. */
export const SYNTHETIC_SHAPES: readonly SyntheticShape[] = ["llama-3.2-1b", "tiny", "small", "small-hd128"];

/** What a model reference names. */
export type ModelRef =
  | { kind: "hub"; repo: string; revision: string }
  | { kind: "local"; path: string }
  | { kind: "synthetic"; shape: SyntheticShape; seed: number };

/** The model used when none is given: an ungated copy of meta-llama/Llama-3.2-1B-Instruct. */
export const DEFAULT_MODEL = "unsloth/Llama-3.2-1B-Instruct";

// The Hub's own rule for a repo name part: letters, digits, "-", "_", "."; no leading/trailing "-" or ".", no "--"
// or ".." (those would collide with the cache's "models--org--name" folder naming).
const REPO_PART = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$/;

function expandHome(path: string): string {
  return path === "~" || path.startsWith("~/") ? homedir() + path.slice(1) : path;
}

function looksLikePath(text: string): boolean {
  return text.startsWith("/") || text.startsWith(".") || text.startsWith("~") || text.includes("\\");
}

function parseSynthetic(text: string, spec: string): ModelRef {
  const at = spec.indexOf("@");
  const shape = at < 0 ? spec : spec.slice(0, at);
  const seedText = at < 0 ? "0" : spec.slice(at + 1);
  if (!(SYNTHETIC_SHAPES as readonly string[]).includes(shape)) {
    throw new MkError(
      "model",
      `unknown synthetic shape "${shape}" in ${text} (shapes: ${SYNTHETIC_SHAPES.join(", ")})`,
    );
  }
  // The generator seeds a 32-bit PRNG, so the seed is a 32-bit unsigned integer written in decimal.
  if (!/^\d{1,10}$/.test(seedText) || Number(seedText) > 0xffffffff) {
    throw new MkError("model", `bad seed "${seedText}" in ${text}: expected an integer from 0 to 4294967295`);
  }
  return { kind: "synthetic", shape: shape as SyntheticShape, seed: Number(seedText) };
}

function parseHub(text: string): ModelRef {
  const at = text.indexOf("@");
  const repo = at < 0 ? text : text.slice(0, at);
  const revision = at < 0 ? "main" : text.slice(at + 1);
  const parts = repo.split("/");
  const valid = parts.length === 2 && parts.every((p) => REPO_PART.test(p) && !p.includes("--") && !p.includes(".."));
  if (!valid) {
    throw new MkError(
      "model",
      `"${text}" is neither an existing folder, a Hugging Face repo id (org/name[@revision]) nor synthetic:<shape>[@seed]`,
    );
  }
  if (revision === "" || /[\s?#]/.test(revision) || revision.split("/").some((p) => p === "" || p === "..")) {
    throw new MkError("model", `bad revision "${revision}" in ${text}`);
  }
  return { kind: "hub", repo, revision };
}

/**
 * Parses a model reference. Throws MkError("model") naming the text when it is none of the accepted forms, or when
 * it is spelled as a path (leading "/", ".", "~") that does not exist or is not a folder.
 */
export function parseModelRef(text: string): ModelRef {
  const trimmed = text.trim();
  if (trimmed === "") throw new MkError("model", "empty model name");
  if (trimmed.startsWith("synthetic:")) return parseSynthetic(trimmed, trimmed.slice("synthetic:".length));
  const path = resolve(expandHome(trimmed));
  if (existsSync(path)) {
    if (!statSync(path).isDirectory()) {
      throw new MkError("model", `${trimmed} is a file; a local model is a folder holding config.json and weights`);
    }
    return { kind: "local", path };
  }
  if (looksLikePath(trimmed)) throw new MkError("model", `model folder not found: ${trimmed}`);
  return parseHub(trimmed);
}

/** The text that names `ref` back (what parseModelRef accepts), for messages and `--json` output. */
export function formatModelRef(ref: ModelRef): string {
  switch (ref.kind) {
    case "hub":
      return ref.revision === "main" ? ref.repo : `${ref.repo}@${ref.revision}`;
    case "local":
      return ref.path;
    case "synthetic":
      return `synthetic:${ref.shape}@${ref.seed}`;
  }
}
