/**
 * The native build (`deno task build`): native/*.c + native/cpu/*.c with `cc` into native/build/libmkchat.so, and
 * when `nvcc` is on PATH (and MKCHAT_NO_CUDA is unset) every native/cuda/**\/*.cu too, linked by nvcc into the same
 * library (native/cpu/no_cuda.c is then left out). Incremental: a stamp holds the sha256 of the sources and flags.
 *
 *   deno run -A native/build.ts                      build native/build/libmkchat.so (skipped when up to date)
 *   deno run -A native/build.ts --prebuilt           portable (x86-64-v2) CUDA build into native/prebuilt/linux-x64/
 *                                                    with manifest.json {source_sha256, built_at, nvcc_version, targets}
 *   deno run -A native/build.ts --check-prebuilt     exit 1 when the prebuilt manifest's hash is not the sources' hash
 *   deno run -A native/build.ts --cuda-compile-only  compile the .cu files to objects only (CI where nvcc exists)
 *   --force                                          rebuild even when the stamp matches
 *
 * Env: MKCHAT_NO_CUDA=1 builds CPU-only even where nvcc exists; MKCHAT_BUILD_VERBOSE=1 prints every command and the
 * ptxas report (always written to native/build/ptxas.log).
 *
 * @module
 */
import { cpus } from "node:os";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, readdir, readFile, rename, writeFile } from "node:fs/promises";
import { join, relative } from "node:path";
import process from "node:process";
import { NATIVE_DIR, nativeSourceHash } from "./source_hash.ts";

const BUILD_DIR = join(NATIVE_DIR, "build");
const PREBUILT_DIR = join(NATIVE_DIR, "prebuilt", "linux-x64");
export const LIBRARY_PATH: string = join(BUILD_DIR, "libmkchat.so");
export const PREBUILT_LIBRARY_PATH: string = join(PREBUILT_DIR, "libmkchat.so");
export const PREBUILT_MANIFEST_PATH: string = join(PREBUILT_DIR, "manifest.json");

const CUDA_TARGETS = ["sm_90a"];
const NVCC_ARCH = ["-gencode=arch=compute_90a,code=sm_90a"];
const NVCC_FLAGS = [...NVCC_ARCH, "-O3", "-Xptxas", "-v", "-cudart", "static", "-Xcompiler", "-fPIC"];
const verbose = !!process.env.MKCHAT_BUILD_VERBOSE;

/** What a prebuilt library's manifest.json records. */
export interface PrebuiltManifest {
  source_sha256: string;
  built_at: string;
  nvcc_version: string;
  targets: string[];
}

// ---------------------------------------------------------------------------------------------------------------------
// small helpers

class BuildError extends Error {}

async function run(cmd: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  if (verbose) console.error(`$ ${cmd} ${args.join(" ")}`);
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new BuildError(`cannot run ${cmd}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const stdout = new TextDecoder().decode(out.stdout), stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new BuildError(`${cmd} failed (exit ${out.code}):\n${cmd} ${args.join(" ")}\n${stderr}${stdout}`);
  }
  return { stdout, stderr };
}

function onPath(exe: string): string | null {
  for (const dir of (process.env.PATH ?? "").split(":")) {
    if (dir && existsSync(join(dir, exe))) return join(dir, exe);
  }
  return null;
}

/** x86-64-v3 when this CPU has AVX2 + FMA (and the rest of v3), else v2; nothing on other architectures. */
function marchFlag(portable: boolean): string[] {
  if (Deno.build.arch !== "x86_64") return [];
  if (portable) return ["-march=x86-64-v2"];
  let flags = "";
  try {
    flags = readFileSync("/proc/cpuinfo", "utf8").split("\n").find((l) => l.startsWith("flags")) ?? "";
  } catch { /* not Linux: stay portable */ }
  const have = new Set(flags.split(/\s+/));
  const v3 = ["avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"].every((f) => have.has(f));
  return [v3 ? "-march=x86-64-v3" : "-march=x86-64-v2"];
}

async function listFiles(dir: string, ext: string, recursive: boolean): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, e.name);
    if (e.isDirectory() && recursive) out.push(...await listFiles(full, ext, true));
    else if (e.isFile() && e.name.endsWith(ext)) out.push(full);
  }
  return out.sort();
}

async function cudaSources(): Promise<string[]> {
  return await listFiles(join(NATIVE_DIR, "cuda"), ".cu", true);
}

async function cSources(withCuda: boolean): Promise<string[]> {
  const files = [...await listFiles(NATIVE_DIR, ".c", false), ...await listFiles(join(NATIVE_DIR, "cpu"), ".c", false)];
  return withCuda ? files.filter((f) => !f.endsWith(join("cpu", "no_cuda.c"))) : files;
}

/** Run jobs with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, async () => {
    while (next < items.length) await fn(items[next++]);
  });
  await Promise.all(workers);
}

async function nvccVersion(nvcc: string): Promise<string> {
  const { stdout } = await run(nvcc, ["--version"]);
  const m = stdout.match(/release ([0-9.]+), V([0-9.]+)/);
  return m ? m[2] : stdout.trim().split("\n").pop() ?? "unknown";
}

// ---------------------------------------------------------------------------------------------------------------------
// compiling

function objName(src: string, objDir: string): string {
  return join(objDir, relative(NATIVE_DIR, src).replaceAll("/", "__").replace(/\.(c|cu)$/, ".o"));
}

async function compileCuda(nvcc: string, objDir: string): Promise<string[]> {
  const sources = await cudaSources();
  await mkdir(objDir, { recursive: true });
  const objects: string[] = [];
  const reports: string[] = [];
  await pool(sources, cpus().length, async (src) => {
    const obj = objName(src, objDir);
    const { stderr } = await run(nvcc, [...NVCC_FLAGS, `-I${NATIVE_DIR}`, "-c", src, "-o", obj]);
    reports.push(`# ${relative(NATIVE_DIR, src)}\n${stderr}`);
    objects.push(obj);
  });
  await mkdir(BUILD_DIR, { recursive: true });
  await writeFile(join(BUILD_DIR, "ptxas.log"), reports.sort().join("\n"));
  if (verbose) console.error(reports.join("\n"));
  return objects.sort();
}

interface BuildOptions {
  out: string;
  portable: boolean;     // x86-64-v2 instead of this CPU's level
  requireCuda: boolean;  // fail when nvcc or CUDA sources are missing
  force: boolean;
}

/** Build the library; returns what was done ("up to date" or a description). */
export async function buildLibrary(opts: BuildOptions): Promise<string> {
  const nvcc = process.env.MKCHAT_NO_CUDA ? null : onPath("nvcc");
  const cuSources = await cudaSources();
  const withCuda = nvcc !== null && cuSources.length > 0;
  if (opts.requireCuda && !withCuda) {
    throw new BuildError(
      nvcc === null
        ? "a CUDA build needs nvcc on PATH (and MKCHAT_NO_CUDA unset)"
        : "a CUDA build needs sources in native/cuda/ (none found)",
    );
  }
  const hash = await nativeSourceHash();
  const march = marchFlag(opts.portable);
  // -fvisibility=hidden: the library exports exactly what mkchat.h marks MK_API, nothing internal
  const cFlags = ["-O3", "-fPIC", "-pthread", "-Wall", "-fvisibility=hidden", ...march, `-DMK_SOURCE_HASH="${hash.slice(0, 16)}"`];
  if (withCuda) cFlags.push("-DMK_WITH_CUDA=1");
  const stampKey = JSON.stringify({ hash, cFlags, withCuda, nvccFlags: withCuda ? NVCC_FLAGS : [] });
  // the stamp lives in native/build/ (ignored by git), never beside a library that is committed
  const stampPath = join(BUILD_DIR, opts.portable ? "prebuilt.stamp" : "libmkchat.so.stamp");
  if (!opts.force && existsSync(opts.out) && existsSync(stampPath) && (await readFile(stampPath, "utf8")) === stampKey) {
    return `up to date: ${relative(process.cwd(), opts.out)}`;
  }
  await mkdir(join(opts.out, ".."), { recursive: true });
  await mkdir(BUILD_DIR, { recursive: true });
  const tmp = `${opts.out}.tmp-${process.pid}`;
  const cFiles = await cSources(withCuda);
  if (!withCuda) {
    await run("cc", [...cFlags, "-shared", "-o", tmp, ...cFiles, "-lm"]);
  } else {
    const objDir = join(BUILD_DIR, opts.portable ? "obj-portable" : "obj");
    const cuObjects = await compileCuda(nvcc!, objDir);
    const cObjects: string[] = [];
    await pool(cFiles, cpus().length, async (src) => {
      const obj = objName(src, objDir);
      await run("cc", [...cFlags, "-c", src, "-o", obj]);
      cObjects.push(obj);
    });
    await run(nvcc!, [
      ...NVCC_ARCH,
      "-shared",
      "-cudart",
      "static",
      "-o",
      tmp,
      ...cObjects.sort(),
      ...cuObjects,
      "-Xcompiler",
      "-pthread",
      "-lm",
    ]);
  }
  await rename(tmp, opts.out); // atomic: a process that has the old library mapped keeps it intact
  await writeFile(stampPath, stampKey);
  const what = withCuda ? "cpu+cuda(sm_90a)" : "cpu";
  return `built ${relative(process.cwd(), opts.out)} (${what}, ${march.join(" ") || "default arch"}, src ${hash.slice(0, 16)})`;
}

// ---------------------------------------------------------------------------------------------------------------------
// prebuilt

async function buildPrebuilt(force: boolean): Promise<string> {
  const nvcc = onPath("nvcc");
  const msg = await buildLibrary({ out: PREBUILT_LIBRARY_PATH, portable: true, requireCuda: true, force });
  const manifest: PrebuiltManifest = {
    source_sha256: await nativeSourceHash(),
    built_at: new Date().toISOString(),
    nvcc_version: nvcc ? await nvccVersion(nvcc) : "unknown",
    targets: CUDA_TARGETS,
  };
  await writeFile(PREBUILT_MANIFEST_PATH, JSON.stringify(manifest, null, 2) + "\n");
  return `${msg}; wrote ${relative(process.cwd(), PREBUILT_MANIFEST_PATH)}`;
}

/** null when the prebuilt library matches the sources (or none is committed), else the reason it is stale. */
export async function prebuiltStaleness(): Promise<string | null> {
  if (!existsSync(PREBUILT_MANIFEST_PATH)) return null;
  let manifest: PrebuiltManifest;
  try {
    manifest = JSON.parse(await readFile(PREBUILT_MANIFEST_PATH, "utf8"));
  } catch (err) {
    return `${relative(process.cwd(), PREBUILT_MANIFEST_PATH)} is not valid JSON (${(err as Error).message})`;
  }
  const hash = await nativeSourceHash();
  if (!existsSync(PREBUILT_LIBRARY_PATH)) return `${relative(process.cwd(), PREBUILT_LIBRARY_PATH)} is missing`;
  if (manifest.source_sha256 !== hash) {
    return `native/prebuilt/linux-x64/libmkchat.so is stale: built from sources ${
      String(manifest.source_sha256).slice(0, 16)
    }, the tree has ${hash.slice(0, 16)} (rebuild with: deno run -A native/build.ts --prebuilt, where nvcc exists)`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------------
// main

async function main(args: string[]): Promise<number> {
  const known = new Set(["--prebuilt", "--check-prebuilt", "--cuda-compile-only", "--force"]);
  for (const a of args) {
    if (!known.has(a)) {
      console.error(`build.ts: unknown option ${a} (known: ${[...known].join(", ")})`);
      return 2;
    }
  }
  const force = args.includes("--force");
  try {
    if (args.includes("--check-prebuilt")) {
      if (!existsSync(PREBUILT_MANIFEST_PATH)) {
        console.log("no prebuilt library committed in native/prebuilt/linux-x64 (nothing to check)");
        return 0;
      }
      const stale = await prebuiltStaleness();
      if (stale) {
        console.error(stale);
        return 1;
      }
      console.log("native/prebuilt/linux-x64/libmkchat.so matches the sources");
      return 0;
    }
    if (args.includes("--cuda-compile-only")) {
      const nvcc = onPath("nvcc");
      if (!nvcc) {
        console.error("build.ts --cuda-compile-only: nvcc is not on PATH");
        return 1;
      }
      const n = (await cudaSources()).length;
      if (n === 0) {
        console.log("no CUDA sources in native/cuda/ (nothing to compile)");
        return 0;
      }
      await compileCuda(nvcc, join(BUILD_DIR, "obj-check"));
      console.log(`compiled ${n} CUDA source(s) with nvcc ${await nvccVersion(nvcc)} (${CUDA_TARGETS.join(", ")})`);
      return 0;
    }
    if (args.includes("--prebuilt")) {
      console.log(await buildPrebuilt(force));
      return 0;
    }
    console.log(await buildLibrary({ out: LIBRARY_PATH, portable: false, requireCuda: false, force }));
    return 0;
  } catch (err) {
    if (err instanceof BuildError) {
      console.error(`build.ts: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
