/**
 * Any model reference → a validated ModelFiles. A hub model whose snapshot for the revision is already complete in
 * the HF cache is used as it is, without asking the hub (so chat starts at once and works offline; `mkchat pull`
 * is the way to refresh a branch); otherwise it is pulled first.
 *
 * @module
 */

import { findCompleteSnapshot } from "./hf_cache.ts";
import { type HubSettings, hubSettingsFromEnv, pullModel, type PullProgress } from "./hub.ts";
import { loadModelFolder, type ModelFiles } from "./model_files.ts";
import { formatModelRef, type ModelRef } from "./model_ref.ts";
import { materializeSynthetic } from "./synthetic.ts";

/** Options of resolveModel. */
export interface ResolveOptions {
  /** Download progress, when the model has to be pulled from the hub. */
  onProgress?: (p: PullProgress) => void;
  /** Aborts a pull in progress. */
  signal?: AbortSignal;
  /** Hub settings replacing the environment's (see hub.ts HubSettings). */
  hub?: Partial<HubSettings>;
  /** mkchat's cache folder for synthetic models, replacing the environment's (see synthetic.ts mkchatCacheDir). */
  cacheDir?: string;
}

/** Finds, pulls or makes the model `ref` names and loads its folder (see loadModelFolder for what is checked). */
export async function resolveModel(ref: ModelRef, opts: ResolveOptions = {}): Promise<ModelFiles> {
  const id = formatModelRef(ref);
  switch (ref.kind) {
    case "local":
      return await loadModelFolder(ref.path, id);
    case "synthetic":
      return await loadModelFolder(await materializeSynthetic(ref.shape, ref.seed, opts.cacheDir), id);
    case "hub": {
      const settings = { ...hubSettingsFromEnv(), ...opts.hub };
      const dir = await findCompleteSnapshot(ref.repo, ref.revision, settings.cacheDir) ??
        await pullModel(ref.repo, {
          revision: ref.revision,
          onProgress: opts.onProgress,
          signal: opts.signal,
          settings,
        });
      return await loadModelFolder(dir, id);
    }
  }
}
