// Where cmlora keeps each LoRA's frequency profile, so a LoRA is profiled once, not once per set and
// per process: in memory for a session, in a JSON file in the CLI (workers/node/profile-store.ts), in
// IndexedDB in the studio's worker (below). Keys name the LoRA (its fingerprint and strengths), the
// model and every setting that changes the profiling image.
export interface ProfileStore {
  get(key: string): Promise<number | undefined>;
  set(key: string, value: number): Promise<void>;
}

export class MemoryProfileStore implements ProfileStore {
  private readonly map = new Map<string, number>();
  async get(key: string) {
    return this.map.get(key);
  }
  async set(key: string, value: number) {
    this.map.set(key, value);
    if (this.map.size > 4096) this.map.delete(this.map.keys().next().value!);
  }
}

/** IndexedDB (available in workers): database `lora-studio-profiles`, one store of key -> number. */
export class IdbProfileStore implements ProfileStore {
  private db?: Promise<IDBDatabase>;

  private open(): Promise<IDBDatabase> {
    this.db ??= new Promise((resolve, reject) => {
      const req = indexedDB.open('lora-studio-profiles', 1);
      req.onupgradeneeded = () => req.result.createObjectStore('profiles');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    return this.db;
  }

  private async request<T>(mode: IDBTransactionMode, run: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.open();
    return new Promise((resolve, reject) => {
      const r = run(db.transaction('profiles', mode).objectStore('profiles'));
      r.onsuccess = () => resolve(r.result);
      r.onerror = () => reject(r.error);
    });
  }

  async get(key: string) {
    try {
      const v = await this.request('readonly', (s) => s.get(key));
      return typeof v === 'number' ? v : undefined;
    } catch {
      return undefined;
    }
  }

  async set(key: string, value: number) {
    // a full or closed database only costs a profiling run next time
    await this.request('readwrite', (s) => s.put(value, key)).catch(() => undefined);
  }
}
