// Byte sources: a checkpoint is read by ranges, never whole. A 4 GB file stays on disk (or on the
// server) and only the header and the tensors asked for are brought into memory.
import { EngineError } from '../api/errors.ts';
import { concatBytes } from './safetensors.ts';

export interface ByteSource {
  /** A name for messages: the file name or URL. */
  readonly name: string;
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
}

export class MemorySource implements ByteSource {
  readonly size: number;
  constructor(readonly name: string, private readonly bytes: Uint8Array) {
    this.size = bytes.byteLength;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    return this.bytes.subarray(offset, Math.min(offset + length, this.size));
  }
}

/** A File or Blob, read with slice(): the browser never loads more than the asked range. */
export class BlobSource implements ByteSource {
  readonly size: number;
  constructor(readonly name: string, private readonly blob: Blob) {
    this.size = blob.size;
  }
  async read(offset: number, length: number): Promise<Uint8Array> {
    const buf = await this.blob.slice(offset, Math.min(offset + length, this.size)).arrayBuffer();
    return new Uint8Array(buf);
  }
}

/**
 * Past this size a file whose server ignores range requests is refused rather than held in memory.
 * Small files answered whole (a service worker's precache does that) are simply kept.
 */
export const WHOLE_BODY_LIMIT = 256 * 1024 * 1024;

/**
 * A ranged request that bypasses the HTTP cache: after a reload Chromium answered ranges of a file it
 * had cached with a stale size and empty bodies.
 */
const ranged = (range: string): RequestInit => ({ headers: { Range: range }, cache: 'no-store' });

/** An HTTP(S) URL read with Range requests. The size comes from a first ranged request. */
export class HttpSource implements ByteSource {
  private constructor(readonly name: string, readonly size: number, private readonly url: string, private readonly fetchFn: typeof fetch) {}

  /**
   * A source for `url`: read by ranges when the server answers them (206), or from memory when it
   * sends the whole file (200) and the file is at most WHOLE_BODY_LIMIT bytes.
   */
  static async open(url: string, fetchFn: typeof fetch = fetch): Promise<ByteSource> {
    let res: Response;
    try {
      res = await fetchFn(url, ranged('bytes=0-0'));
    } catch (e) {
      // a cache in between (a service worker's precache) may refuse ranged requests outright: ask for the whole file
      res = await fetchFn(url).catch(() => Promise.reject(e));
    }
    if (!res.ok) throw new EngineError('io', `Could not open ${url}: HTTP ${res.status}.`);
    const name = decodeURIComponent(new URL(url).pathname.split('/').pop() || url);
    if (res.status === 206) {
      await res.arrayBuffer();
      const total = Number(res.headers.get('Content-Range')?.split('/')[1]);
      if (!Number.isSafeInteger(total)) throw new EngineError('io', `${url} answered a range request without the file's size.`);
      return new HttpSource(name, total, url, fetchFn);
    }
    const declared = res.headers.get('Content-Encoding') ? NaN : Number(res.headers.get('Content-Length') ?? NaN);
    const tooLarge = () => new EngineError('io', `${url} does not support HTTP range requests, and it is larger than ${WHOLE_BODY_LIMIT / 2 ** 20} MB, too large to read whole; download it into the library instead.`);
    if (declared > WHOLE_BODY_LIMIT) {
      await res.body?.cancel();
      throw tooLarge();
    }
    const bytes = res.body ? await readCapped(res.body, WHOLE_BODY_LIMIT, tooLarge) : new Uint8Array(await res.arrayBuffer());
    if (Number.isFinite(declared) && bytes.byteLength !== declared) throw new EngineError('io', `${url} ended after ${bytes.byteLength} of ${declared} bytes.`);
    return new MemorySource(name, bytes);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(offset + length, this.size) - 1;
    if (end < offset) return new Uint8Array(0);
    if (this.whole) return (await this.whole).subarray(offset, end + 1);
    const fetchFn = this.fetchFn; // called unbound: fetch refuses another `this`
    let failure: string;
    try {
      const res = await fetchFn(this.url, ranged(`bytes=${offset}-${end}`));
      const bytes = res.status === 206 ? new Uint8Array(await res.arrayBuffer()) : undefined;
      if (bytes?.byteLength === end - offset + 1) return bytes;
      failure = bytes ? `returned ${bytes.byteLength} bytes instead of ${end - offset + 1}` : `failed: HTTP ${res.status}`;
    } catch (e) {
      failure = `failed: ${(e as Error).message}`;
    }
    // a cache between us and the server (a service worker's precache; Chromium's HTTP cache, before
    // these reads bypassed it) may answer a range with the whole file or nothing: a file small enough
    // is then read whole, once
    if (this.size > WHOLE_BODY_LIMIT) throw new EngineError('io', `Range request to ${this.url} ${failure}.`);
    this.whole ??= (async () => {
      const res = await fetchFn(this.url);
      const bytes = new Uint8Array(await res.arrayBuffer());
      if (!res.ok || bytes.byteLength !== this.size) throw new EngineError('io', `Range request to ${this.url} ${failure}, and the whole file came back with HTTP ${res.status} and ${bytes.byteLength} of ${this.size} bytes.`);
      return bytes;
    })();
    this.whole.catch(() => (this.whole = undefined));
    return (await this.whole).subarray(offset, end + 1);
  }

  /** The whole file, once ranged reads have failed (see `read`). */
  private whole?: Promise<Uint8Array>;
}

/** A stream read whole, refused (and cancelled) as soon as it passes `cap` bytes. */
export async function readCapped(stream: ReadableStream<Uint8Array>, cap: number, refusal: () => Error): Promise<Uint8Array> {
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > cap) {
      await reader.cancel().catch(() => {});
      throw refusal();
    }
    chunks.push(value);
  }
  return concatBytes(chunks);
}
