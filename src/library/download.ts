// Resumable downloads into the OPFS. Bytes go to "<name>.part"; a later call (after a pause, a
// reload or a lost connection) asks the server for the rest with an HTTP range request and appends.
// When the file is complete its size and sha256 are checked against what the source promised, and
// only then is it renamed into place: the library never sees a half or wrong file.
import { isQuotaError, StorageFullError } from '../storage/idb.ts';
import { fileHandle, moveFile, readFile, removeEntry, sizeOf } from './opfs.ts';
import type { PlannedFile } from './hub.ts';
import { Sha256 } from './sha256.ts';

export interface DownloadProgress {
  /** Bytes on disk for this file, the resumed part included. */
  done: number;
  total: number | null;
  bytesPerSecond: number;
  /** Seconds left at the current speed, null when unknown. */
  secondsLeft: number | null;
  /** Bytes that were already on disk when this call started (0 for a fresh download). */
  resumedFrom: number;
}

export class DownloadError extends Error {
  constructor(message: string, readonly resumable: boolean) {
    super(message);
    this.name = 'DownloadError';
  }
}

const partPath = (path: string[]) => [...path.slice(0, -1), `${path[path.length - 1]}.part`];

/** Bytes already downloaded for a file (its .part), for the library's "resume" line. */
export const partialSize = (path: string[]) => sizeOf(partPath(path));

/** The SHA-256 of a stored file, streamed (files of several gigabytes never sit in memory). */
export async function hashFile(file: Blob): Promise<string> {
  const h = new Sha256();
  const reader = file.stream().getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return h.digestHex();
    h.update(value);
  }
}

/** The total size a response promises: Content-Range's total for a 206, Content-Length for a 200. */
function promisedTotal(res: Response, offset: number): number | null {
  const range = res.headers.get('content-range');
  const m = range && /\/(\d+)\s*$/.exec(range);
  if (m) return Number(m[1]);
  const length = res.headers.get('content-length');
  return length === null ? null : offset + Number(length);
}

/**
 * Download one file to `path`, resuming a partial one. Throws DownloadError (resumable when the
 * bytes so far were kept) or StorageFullError; an AbortSignal pauses it, keeping what arrived.
 */
export async function downloadFile(file: PlannedFile, path: string[], onProgress: (p: DownloadProgress) => void, signal?: AbortSignal): Promise<void> {
  const part = partPath(path);
  let offset = await sizeOf(part);
  if (file.size !== undefined && offset > file.size) {
    await removeEntry(part);
    offset = 0;
  }
  let res: Response;
  try {
    res = await fetch(file.url, { headers: offset ? { Range: `bytes=${offset}-` } : {}, signal, cache: 'no-store' });
  } catch (e) {
    if (signal?.aborted) throw new DownloadError('Paused.', true);
    throw new DownloadError(`The download of ${file.path} could not start (${(e as Error).message}); check the connection and resume.`, true);
  }
  if (res.status === 416 && file.size !== undefined && offset === file.size) {
    // everything is already here
  } else if (!res.ok) {
    throw new DownloadError(`The server answered ${res.status} ${res.statusText} for ${file.path}${res.status === 401 || res.status === 403 ? ' (the repository may need you to accept its licence on the hub first, or be private)' : ''}.`, res.status >= 500);
  } else {
    // a server that ignores the range sends everything again: start over
    if (res.status !== 206) offset = 0;
    const total = promisedTotal(res, offset) ?? file.size ?? null;
    if (file.size !== undefined && total !== null && total !== file.size) {
      throw new DownloadError(`${file.path} is ${total} bytes on the server but the hub lists ${file.size}; the download was not started.`, false);
    }
    const out = await (await fileHandle(part, true)).createWritable({ keepExistingData: offset > 0 });
    const start = performance.now();
    const resumedFrom = offset;
    let done = offset;
    try {
      await out.truncate(offset);
      await out.seek(offset);
      const reader = res.body!.getReader();
      let last = 0;
      for (;;) {
        const { done: end, value } = await reader.read();
        if (end) break;
        await out.write(value as Uint8Array<ArrayBuffer>);
        done += value.length;
        const now = performance.now();
        if (now - last > 200) {
          last = now;
          const rate = ((done - resumedFrom) * 1000) / Math.max(now - start, 1);
          onProgress({ done, total, bytesPerSecond: rate, secondsLeft: total !== null && rate > 0 ? (total - done) / rate : null, resumedFrom });
        }
      }
      await out.close();
    } catch (e) {
      // keep what arrived: close() commits the bytes written so far
      await out.close().catch(() => out.abort().catch(() => {}));
      if (isQuotaError(e)) throw new StorageFullError(`the rest of ${file.path} (${done} bytes kept; resume after freeing space)`);
      if (signal?.aborted) throw new DownloadError('Paused.', true);
      throw new DownloadError(`The download of ${file.path} was interrupted after ${done} bytes (${(e as Error).message}); resume to fetch the rest.`, true);
    }
    onProgress({ done, total, bytesPerSecond: 0, secondsLeft: 0, resumedFrom });
  }
  // check, then move into place
  const got = await readFile(part);
  if (file.size !== undefined && got.size !== file.size) {
    throw new DownloadError(`${file.path} stopped at ${got.size} of ${file.size} bytes; resume to fetch the rest.`, true);
  }
  if (file.sha256) {
    const sha = await hashFile(got);
    if (sha !== file.sha256.toLowerCase()) {
      await removeEntry(part);
      throw new DownloadError(`${file.path} does not match the sha256 the hub lists (got ${sha.slice(0, 12)}…, expected ${file.sha256.slice(0, 12)}…); the damaged file was deleted. Download it again.`, false);
    }
  }
  await moveFile(part, path);
}
