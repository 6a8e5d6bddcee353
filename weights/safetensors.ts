/**
 * safetensors header parsing: bounded, validated, and without reading any tensor data.
 *
 * The format: an 8-byte little-endian header length N, N bytes of JSON mapping each tensor name to
 * `{dtype, shape, data_offsets: [begin, end]}` (offsets relative to the byte after the header) plus an optional
 * `__metadata__` string map, then the data. A header is trusted for nothing: its length is bounded before anything
 * is allocated, and every tensor's byte range is checked against its shape, the file size and the other tensors,
 * so that the engine can map offsets without further checks.
 *
 * @module
 */

import { MkError, reasonOf } from "./errors.ts";

/** The dtypes mkchat reads; each is named as in the safetensors header. */
export type Dtype = "BF16" | "F16" | "F32";

/** Bytes per element of each accepted dtype. */
export const DTYPE_BYTES: Readonly<Record<Dtype, number>> = { BF16: 2, F16: 2, F32: 4 };

/** One tensor of a safetensors file: where its bytes are (absolute offset in `path`) and what they hold. */
export interface TensorEntry {
  /** The tensor's name as stored, e.g. "model.layers.0.mlp.up_proj.weight". */
  name: string;
  /** The file holding the tensor. */
  path: string;
  /** Absolute byte offset of the first element in `path` (8 + header length + data_offsets[0]). */
  offset: number;
  /** Byte size of the data: product(shape) × element size. */
  nbytes: number;
  /** Element type. */
  dtype: Dtype;
  /** Dimensions, outermost first (PyTorch order: a Linear weight is [out, in]). */
  shape: number[];
}

/** The largest header accepted: real headers are a few hundred KB; a larger claim means a corrupt or hostile file. */
export const MAX_HEADER_BYTES = 100_000_000;

// Dtypes the format defines that mkchat does not read: named in the error so that the user knows the file is valid
// safetensors, just not a dtype we handle.
const OTHER_DTYPES = new Set([
  "F64",
  "F8_E4M3",
  "F8_E5M2",
  "I64",
  "I32",
  "I16",
  "I8",
  "U64",
  "U32",
  "U16",
  "U8",
  "BOOL",
]);

function fail(path: string, what: string): never {
  throw new MkError("weights", `${path}: ${what}`);
}

async function readExactly(file: Deno.FsFile, buf: Uint8Array, path: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await file.read(buf.subarray(done));
    if (n === null) fail(path, `truncated: file ended while reading its header`);
    done += n;
  }
}

async function readHeaderJson(path: string): Promise<{ header: unknown; headerLen: number; fileSize: number }> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new MkError("weights", `weights file not found: ${path}`);
    throw new MkError("weights", `cannot open weights file ${path}: ${reasonOf(err)}`);
  }
  try {
    const fileSize = (await file.stat()).size;
    if (fileSize < 8) fail(path, `not a safetensors file (only ${fileSize} bytes)`);
    const lenBytes = new Uint8Array(8);
    await readExactly(file, lenBytes, path);
    const claimed = new DataView(lenBytes.buffer).getBigUint64(0, true);
    if (claimed > BigInt(MAX_HEADER_BYTES)) {
      fail(
        path,
        `header claims ${claimed} bytes (more than the ${MAX_HEADER_BYTES} accepted): corrupt or not safetensors`,
      );
    }
    const headerLen = Number(claimed);
    if (headerLen < 2) fail(path, `header claims ${headerLen} bytes: too short to be JSON`);
    if (8 + headerLen > fileSize) {
      fail(path, `truncated: header claims ${headerLen} bytes but the file has only ${fileSize - 8} after the length`);
    }
    const headerBytes = new Uint8Array(headerLen);
    await readExactly(file, headerBytes, path);
    let header: unknown;
    try {
      header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(headerBytes));
    } catch (err) {
      fail(path, `header is not valid UTF-8 JSON (${reasonOf(err)})`);
    }
    return { header, headerLen, fileSize };
  } catch (err) {
    if (err instanceof MkError) throw err;
    throw new MkError("weights", `cannot read weights file ${path}: ${reasonOf(err)}`);
  } finally {
    file.close();
  }
}

function parseEntry(
  path: string,
  name: string,
  raw: unknown,
): { dtype: Dtype; shape: number[]; begin: number; end: number } {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    fail(path, `tensor ${name}: entry is not an object`);
  }
  const { dtype, shape, data_offsets: offsets } = raw as Record<string, unknown>;
  if (typeof dtype !== "string" || !(dtype in DTYPE_BYTES)) {
    const known = typeof dtype === "string" && OTHER_DTYPES.has(dtype);
    fail(
      path,
      `tensor ${name} has ${known ? "" : "unknown "}dtype ${JSON.stringify(dtype)}; mkchat reads BF16, F16 and F32`,
    );
  }
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(path, `tensor ${name}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (
    !Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) ||
    offsets[0] > offsets[1]
  ) {
    fail(path, `tensor ${name}: data_offsets ${JSON.stringify(offsets)} is not [begin, end] with 0 <= begin <= end`);
  }
  const elemBytes = DTYPE_BYTES[dtype as Dtype];
  const need = (shape as number[]).reduce((a, d) => a * d, elemBytes);
  const [begin, end] = offsets as number[];
  if (need !== end - begin) {
    fail(
      path,
      `tensor ${name}: shape [${shape.join(", ")}] of ${dtype} needs ${need} bytes but data_offsets span ${
        end - begin
      }`,
    );
  }
  return { dtype: dtype as Dtype, shape: shape as number[], begin, end };
}

/**
 * Reads and validates the header of the safetensors file at `path` and returns its tensors in header order, with
 * absolute offsets. Throws MkError("weights") naming the file (and the tensor) for: a missing or unreadable file, a
 * header length over MAX_HEADER_BYTES or past the end of the file, invalid JSON, a dtype other than BF16/F16/F32,
 * a byte range that does not match shape × dtype, lies past the end of the file (truncated download) or overlaps
 * another tensor.
 */
export async function readSafetensors(path: string): Promise<TensorEntry[]> {
  const { header, headerLen, fileSize } = await readHeaderJson(path);
  if (typeof header !== "object" || header === null || Array.isArray(header)) fail(path, "header is not a JSON object");
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;
  const entries: TensorEntry[] = [];
  const ranges: { name: string; begin: number; end: number }[] = [];
  for (const [name, raw] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (typeof raw !== "object" || raw === null || Array.isArray(raw)) fail(path, "__metadata__ is not an object");
      continue;
    }
    const { dtype, shape, begin, end } = parseEntry(path, name, raw);
    if (end > dataSize) {
      fail(path, `truncated: tensor ${name} ends at byte ${dataStart + end} but the file has ${fileSize} bytes`);
    }
    entries.push({ name, path, offset: dataStart + begin, nbytes: end - begin, dtype, shape });
    if (end > begin) ranges.push({ name, begin, end });
  }
  ranges.sort((a, b) => a.begin - b.begin);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i].begin < ranges[i - 1].end) {
      fail(path, `tensors ${ranges[i - 1].name} and ${ranges[i].name} overlap (bytes ${ranges[i].begin}..)`);
    }
  }
  return entries;
}

/** A tensor to be written: name, dtype and shape; its data follows the previous tensor's. */
export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

/**
 * Lays out a safetensors file for `tensors`, in the given order with no gaps, and returns the bytes that precede
 * the data (length prefix + JSON header, padded with spaces to a multiple of 8 as the reference writer does so
 * that data starts aligned) and each tensor's byte size. The caller writes the data in the same order.
 */
export function encodeSafetensorsHeader(
  tensors: TensorSpec[],
  metadata?: Record<string, string>,
): { prefix: Uint8Array; sizes: number[] } {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const sizes: number[] = [];
  let at = 0;
  for (const t of tensors) {
    const nbytes = t.shape.reduce((a, d) => a * d, DTYPE_BYTES[t.dtype]);
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + nbytes] };
    sizes.push(nbytes);
    at += nbytes;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const body = new Uint8Array(json.length + ((8 - (json.length % 8)) % 8)).fill(0x20); // 0x20: space
  body.set(json);
  const prefix = new Uint8Array(8 + body.length);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(body.length), true);
  prefix.set(body, 8);
  return { prefix, sizes };
}
