/**
 * A loopback Hugging Face hub for tests: two Deno.serve servers (port 0), the hub on 127.0.0.1 and an LFS-like
 * storage host on 127.0.0.2, speaking the resolve protocol the way huggingface.co does:
 *
 *  - HEAD/GET /{org}/{name}/resolve/{revision}/{file}: X-Repo-Commit and a quoted ETag (the git blob sha1) for a
 *    regular file; for an LFS file a 302 to {storage}/blobs/{sha256} with X-Linked-Etag (the sha256) and
 *    X-Linked-Size. Unknown repo → 401 RepoNotFound (as the hub answers anonymous callers), unknown revision →
 *    404 RevisionNotFound, unknown file → 404 EntryNotFound, a repo with a token and a request without
 *    `Authorization: Bearer <token>` → 401. A repo listed in `renamed` answers with a relative 307 to its new name.
 *  - GET {storage}/blobs/{sha256} with `Range: bytes=N-` support (206 + Content-Range).
 *  - Modes: `cutAfter` (send that many bytes of the next LFS body, then close the connection although
 *    Content-Length promised more; once), `corrupt` (flip a byte of every LFS body).
 *
 * Every request is logged (method, origin, path, Range, Authorization). The servers are bounded: at most
 * `maxRequests` are answered (then 503), and they close themselves after `lifetimeMs` if a test forgets to.
 *
 * @module
 */

import { createHash } from "node:crypto";

/** A repo the server holds: its files (text or bytes), which are LFS, and an optional token that gates it. */
export interface RepoSpec {
  id: string;
  files: Record<string, Uint8Array | string>;
  lfs?: string[];
  token?: string;
  /** Branch/tag → commit; "main" → `commit` always exists. */
  commit?: string;
}

/** One request as the server saw it. */
export interface LoggedRequest {
  server: "hub" | "storage";
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

interface Repo {
  spec: RepoSpec;
  commit: string;
  files: Map<string, Uint8Array<ArrayBuffer>>;
  lfs: Set<string>;
}

/** The git blob id of `bytes` (what the hub uses as the ETag of a regular file). */
export function gitBlobSha1(bytes: Uint8Array): string {
  return createHash("sha1").update(`blob ${bytes.length}\0`).update(bytes).digest("hex");
}

/** The hex sha256 of `bytes` (the ETag of an LFS file). */
export function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

function commitOf(id: string): string {
  return createHash("sha1").update("commit of " + id).digest("hex");
}

/** The loopback hub; start() it, point HF settings at `url`, close() it (or `await using`). */
export class HubServer {
  /** Every request answered, in order. */
  readonly requests: LoggedRequest[] = [];
  /** Failure modes, changeable between pulls. */
  mode: { cutAfter?: number; corrupt?: boolean } = {};
  /** Old repo id → new repo id, answered with a relative redirect. */
  renamed: Record<string, string> = {};
  #repos = new Map<string, Repo>();
  #blobs = new Map<string, Uint8Array<ArrayBuffer>>();
  #hub: Deno.HttpServer<Deno.NetAddr>;
  #storage: Deno.HttpServer<Deno.NetAddr>;
  #timer: ReturnType<typeof setTimeout>;
  #maxRequests: number;
  #closed = false;

  private constructor(repos: RepoSpec[], maxRequests: number, lifetimeMs: number) {
    for (const spec of repos) this.addRepo(spec);
    this.#maxRequests = maxRequests;
    const opts = { hostname: "127.0.0.1", port: 0, onListen() {} };
    this.#hub = Deno.serve(opts, (req) => this.#answer("hub", req));
    // The storage host must have another host name, as a CDN has (clients compare host names, not ports): on Linux
    // all of 127/8 is loopback, so 127.0.0.2 is one without any setup; elsewhere fall back to another port.
    const storage = (req: Request) => this.#answer("storage", req);
    try {
      this.#storage = Deno.serve({ ...opts, hostname: "127.0.0.2" }, storage);
    } catch {
      this.#storage = Deno.serve(opts, storage);
    }
    this.#timer = setTimeout(() => this.close(), lifetimeMs);
    Deno.unrefTimer(Number(this.#timer)); // never keeps a test process alive
  }

  /** Starts both servers with `repos`. */
  static start(repos: RepoSpec[], opts: { maxRequests?: number; lifetimeMs?: number } = {}): HubServer {
    return new HubServer(repos, opts.maxRequests ?? 2000, opts.lifetimeMs ?? 60_000);
  }

  /** Adds (or replaces) a repo. */
  addRepo(spec: RepoSpec): void {
    const files = new Map<string, Uint8Array<ArrayBuffer>>();
    for (const [name, v] of Object.entries(spec.files)) {
      files.set(name, typeof v === "string" ? new TextEncoder().encode(v) : new Uint8Array(v));
    }
    const lfs = new Set(spec.lfs ?? []);
    for (const name of lfs) this.#blobs.set(sha256Hex(files.get(name)!), files.get(name)!);
    this.#repos.set(spec.id, { spec, commit: spec.commit ?? commitOf(spec.id), files, lfs });
  }

  /** The commit `main` of repo `id` resolves to. */
  commitOf(id: string): string {
    return this.#repos.get(id)!.commit;
  }

  /** The hub's base URL (use as HF_ENDPOINT). */
  get url(): string {
    return `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  /** The storage host's base URL (another host than the hub where the OS allows). */
  get storageUrl(): string {
    return `http://${this.#storage.addr.hostname}:${this.#storage.addr.port}`;
  }

  /** Stops both servers (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    await Promise.all([this.#hub.shutdown(), this.#storage.shutdown()]);
  }

  /** `await using hub = HubServer.start(...)` closes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  #answer(server: "hub" | "storage", req: Request): Response {
    const url = new URL(req.url);
    this.requests.push({
      server,
      method: req.method,
      path: url.pathname,
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
    });
    if (this.requests.length > this.#maxRequests) return new Response("request budget spent", { status: 503 });
    return server === "hub" ? this.#resolve(req, url) : this.#blob(req, url);
  }

  #resolve(req: Request, url: URL): Response {
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (!m) return new Response("not found", { status: 404 });
    const [, id, revEnc, fileEnc] = m;
    if (this.renamed[id]) {
      return new Response(null, { status: 307, headers: { location: url.pathname.replace(id, this.renamed[id]) } });
    }
    const repo = this.#repos.get(id);
    const err = (status: number, code: string) =>
      new Response(code, { status, headers: { "x-error-code": code, "x-error-message": code } });
    if (!repo) return err(401, "RepoNotFound");
    if (repo.spec.token && req.headers.get("authorization") !== `Bearer ${repo.spec.token}`) {
      return new Response("Access to this repo is restricted", { status: 401 });
    }
    const rev = decodeURIComponent(revEnc);
    if (rev !== "main" && rev !== repo.commit) return err(404, "RevisionNotFound");
    const file = fileEnc.split("/").map(decodeURIComponent).join("/");
    const bytes = repo.files.get(file);
    if (!bytes) return err(404, "EntryNotFound");
    const headers = new Headers({ "x-repo-commit": repo.commit });
    if (repo.lfs.has(file)) {
      const sha = sha256Hex(bytes);
      headers.set("etag", `"${gitBlobSha1(new TextEncoder().encode(`lfs pointer ${sha}`))}"`);
      headers.set("x-linked-etag", `"${sha}"`);
      headers.set("x-linked-size", String(bytes.length));
      headers.set("location", `${this.storageUrl}/blobs/${sha}?signed=1`);
      return new Response(null, { status: 302, headers });
    }
    headers.set("etag", `"${gitBlobSha1(bytes)}"`);
    headers.set("content-length", String(bytes.length));
    return new Response(req.method === "HEAD" ? null : bytes, { headers });
  }

  #blob(req: Request, url: URL): Response {
    const m = /^\/blobs\/([0-9a-f]{64})$/.exec(url.pathname);
    const whole = m ? this.#blobs.get(m[1]) : undefined;
    if (!whole) return new Response("no such blob", { status: 404 });
    let bytes = whole;
    if (this.mode.corrupt) {
      bytes = whole.slice();
      bytes[bytes.length >> 1] ^= 0xff;
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    const start = range ? Number(range[1]) : 0;
    if (start >= bytes.length && range) return new Response(null, { status: 416 });
    const body = bytes.subarray(start);
    const headers = new Headers({ "content-length": String(body.length) });
    if (range) headers.set("content-range", `bytes ${start}-${bytes.length - 1}/${bytes.length}`);
    const status = range ? 206 : 200;
    if (req.method === "HEAD") return new Response(null, { status, headers });
    const cut = this.mode.cutAfter;
    if (cut === undefined || cut >= body.length) return new Response(body, { status, headers });
    this.mode.cutAfter = undefined; // one interruption, then the next pull can finish
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(body.slice(0, cut));
        c.close(); // closes the connection short of Content-Length: the client sees a broken transfer
      },
    });
    return new Response(stream, { status, headers });
  }
}
