// Files in the Origin Private File System: the library's models and LoRAs live under /library. Paths
// are lists of names; every name is checked so that nothing from a file or link can climb out.
import { isQuotaError, StorageFullError } from '../storage/idb.ts';

export function checkName(name: string): string {
  if (!name || name === '.' || name === '..' || /[/\\\0]/.test(name) || name.length > 200) throw new Error(`"${name.slice(0, 60)}" cannot be used as a file name.`);
  return name;
}

async function dir(path: string[], create: boolean): Promise<FileSystemDirectoryHandle> {
  let d = await navigator.storage.getDirectory();
  for (const name of path) d = await d.getDirectoryHandle(checkName(name), { create });
  return d;
}

export async function fileHandle(path: string[], create = false): Promise<FileSystemFileHandle> {
  const d = await dir(path.slice(0, -1), create);
  return d.getFileHandle(checkName(path[path.length - 1]), { create });
}

export async function readFile(path: string[]): Promise<File> {
  return (await fileHandle(path)).getFile();
}

/** Size of a file, 0 when it does not exist. */
export async function sizeOf(path: string[]): Promise<number> {
  try {
    return (await readFile(path)).size;
  } catch {
    return 0;
  }
}

/** Copy a stream into a file; on failure the partial file is removed (a full disk says so). */
export async function writeStream(path: string[], stream: ReadableStream<Uint8Array>, onBytes?: (n: number) => void): Promise<number> {
  const handle = await fileHandle(path, true);
  const out = await handle.createWritable();
  let written = 0;
  try {
    const reader = stream.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      await out.write(value as Uint8Array<ArrayBuffer>);
      written += value.length;
      onBytes?.(written);
    }
    await out.close();
    return written;
  } catch (e) {
    await out.abort().catch(() => {});
    await removeEntry(path);
    if (isQuotaError(e)) throw new StorageFullError(`"${path[path.length - 1]}"`);
    throw e;
  }
}

export async function removeEntry(path: string[]): Promise<void> {
  try {
    const d = await dir(path.slice(0, -1), false);
    await d.removeEntry(checkName(path[path.length - 1]), { recursive: true });
  } catch {
    // already gone
  }
}

/** Rename a file in place (a finished download); copies where the browser has no move(). */
export async function moveFile(from: string[], to: string[]): Promise<void> {
  const src = await fileHandle(from);
  const move = (src as FileSystemFileHandle & { move?: (d: FileSystemDirectoryHandle, name: string) => Promise<void> }).move;
  if (move) {
    await move.call(src, await dir(to.slice(0, -1), true), checkName(to[to.length - 1]));
    return;
  }
  await writeStream(to, (await src.getFile()).stream());
  await removeEntry(from);
}

export interface StorageUse {
  usage: number;
  quota: number;
  persisted: boolean;
}

export async function storageUse(): Promise<StorageUse> {
  const { usage = 0, quota = 0 } = await navigator.storage.estimate();
  const persisted = (await navigator.storage.persisted?.()) ?? false;
  return { usage, quota, persisted };
}
