// Byte sources: a checkpoint is read by ranges, never whole. A 4 GB file stays on disk (or on the
// server) and only the header and the tensors asked for are brought into memory.
import { EngineError } from '../api/errors.ts';

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

/** An HTTP(S) URL read with Range requests. The size comes from a first ranged request. */
export class HttpSource implements ByteSource {
  private constructor(readonly name: string, readonly size: number, private readonly url: string, private readonly fetchFn: typeof fetch) {}

  static async open(url: string, fetchFn: typeof fetch = fetch): Promise<HttpSource> {
    const res = await fetchFn(url, { headers: { Range: 'bytes=0-0' } });
    if (!res.ok) throw new EngineError('io', `Could not open ${url}: HTTP ${res.status}.`);
    const range = res.headers.get('Content-Range');
    await res.arrayBuffer();
    const total = range ? Number(range.split('/')[1]) : NaN;
    if (res.status !== 206 || !Number.isFinite(total)) {
      throw new EngineError('io', `${url} does not support HTTP range requests, so it cannot be read in parts.`);
    }
    return new HttpSource(url.split('/').pop() ?? url, total, url, fetchFn);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(offset + length, this.size) - 1;
    if (end < offset) return new Uint8Array(0);
    const fetchFn = this.fetchFn; // called unbound: fetch refuses another `this`
    const res = await fetchFn(this.url, { headers: { Range: `bytes=${offset}-${end}` } });
    if (res.status !== 206) throw new EngineError('io', `Range request to ${this.url} failed: HTTP ${res.status}.`);
    return new Uint8Array(await res.arrayBuffer());
  }
}
