// The studio's IndexedDB: the library's records (models, LoRAs, downloads in progress) and the
// gallery's results. A few promise helpers over the raw API; a full disk becomes a StorageFullError
// with a sentence the page can show.

const DB_NAME = 'lorastudio';
const DB_VERSION = 1;
export type StoreName = 'library' | 'results' | 'downloads';

export class StorageFullError extends Error {
  constructor(what: string) {
    super(`The browser's storage for this site is full, so ${what} could not be saved. Delete models, LoRAs or gallery images you no longer need (the library shows what each takes), then try again.`);
    this.name = 'StorageFullError';
  }
}

/** A quota error from any storage API, by name (browsers throw DOMExceptions of several kinds). */
export function isQuotaError(e: unknown): boolean {
  const name = (e as { name?: string })?.name;
  return name === 'QuotaExceededError' || name === 'NS_ERROR_DOM_QUOTA_REACHED' || /quota/i.test((e as Error)?.message ?? '');
}

let opening: Promise<IDBDatabase> | undefined;

export function openDb(): Promise<IDBDatabase> {
  opening ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, DB_VERSION);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains('library')) db.createObjectStore('library', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('downloads')) db.createObjectStore('downloads', { keyPath: 'id' });
      if (!db.objectStoreNames.contains('results')) db.createObjectStore('results', { keyPath: 'id', autoIncrement: true });
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new Error(`The studio's database could not be opened: ${req.error?.message}`));
    req.onblocked = () => reject(new Error('The studio is open in another tab with an older version; close that tab and reload.'));
  });
  return opening;
}

function done<T>(req: IDBRequest<T>, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(isQuotaError(req.error) ? new StorageFullError(what) : new Error(`${what} failed: ${req.error?.message}`));
  });
}

async function store(name: StoreName, mode: IDBTransactionMode): Promise<IDBObjectStore> {
  return (await openDb()).transaction(name, mode).objectStore(name);
}

export async function put<T>(name: StoreName, value: T, what = 'the record'): Promise<IDBValidKey> {
  return done((await store(name, 'readwrite')).put(value), what);
}

export async function get<T>(name: StoreName, key: IDBValidKey): Promise<T | undefined> {
  return done((await store(name, 'readonly')).get(key), 'reading the record') as Promise<T | undefined>;
}

export async function getAll<T>(name: StoreName): Promise<T[]> {
  return done((await store(name, 'readonly')).getAll(), 'reading the records') as Promise<T[]>;
}

export async function remove(name: StoreName, key: IDBValidKey): Promise<void> {
  await done((await store(name, 'readwrite')).delete(key), 'deleting the record');
}
