/**
 * `mkchat pull [MODEL]`: put a model in the cache (the Hugging Face cache, shared with Python tools), with a progress
 * bar on a terminal. Prints the folder it ends up in. Ctrl-C stops the download; the next pull resumes it.
 * @module
 */
import { parseModelRef } from "../weights/model_ref.ts";
import { pullModel } from "../weights/hub.ts";
import { loadModelFolder } from "../weights/model_files.ts";
import { materializeSynthetic } from "../weights/synthetic.ts";
import { EXIT } from "./errors.ts";
import { ProgressDisplay } from "./progress.ts";
import { err, out } from "./term.ts";

/** Options of `pull`. */
export interface PullOptions {
  model: string;
}

/** Run the command; returns the exit code. */
export async function pullCommand(o: PullOptions): Promise<number> {
  const ref = parseModelRef(o.model);
  let dir: string;
  switch (ref.kind) {
    case "local":
      dir = ref.path;
      err(`mkchat: ${ref.path} is a local folder, nothing to download\n`);
      break;
    case "synthetic":
      dir = await materializeSynthetic(ref.shape, ref.seed);
      break;
    case "hub": {
      const abort = new AbortController();
      const onInterrupt = () => abort.abort();
      Deno.addSignalListener("SIGINT", onInterrupt);
      const progress = new ProgressDisplay();
      try {
        dir = await pullModel(ref.repo, {
          revision: ref.revision,
          onProgress: (p) => progress.report(p),
          signal: abort.signal,
        });
      } catch (e) {
        if (abort.signal.aborted) {
          progress.finish();
          err("mkchat: download interrupted; run pull again to resume\n");
          return EXIT.interrupted;
        }
        throw e;
      } finally {
        Deno.removeSignalListener("SIGINT", onInterrupt);
        progress.finish();
      }
      break;
    }
  }
  // Validate what we now have, so that a bad model is reported by pull and not at the first chat.
  const files = await loadModelFolder(dir, o.model);
  out(`${files.dir}\n`);
  return EXIT.ok;
}
