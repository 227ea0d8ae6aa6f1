// Node only: cmlora's LoRA profiles in one JSON file (default ~/.cache/lora-studio/profiles.json),
// read once and rewritten atomically on every new entry.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import type { ProfileStore } from '../engine/profile-store.ts';

export const DEFAULT_PROFILE_FILE = join(homedir(), '.cache', 'lora-studio', 'profiles.json');

export class FileProfileStore implements ProfileStore {
  private map?: Record<string, number>;

  constructor(readonly path = process.env.LORA_STUDIO_PROFILES ?? DEFAULT_PROFILE_FILE) {}

  private load(): Record<string, number> {
    if (!this.map) {
      try {
        const v = JSON.parse(readFileSync(this.path, 'utf8')) as unknown;
        this.map = v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).filter(([, x]) => typeof x === 'number')) : {};
      } catch {
        this.map = {};
      }
    }
    return this.map;
  }

  async get(key: string) {
    return this.load()[key];
  }

  async set(key: string, value: number) {
    const map = this.load();
    map[key] = value;
    try {
      mkdirSync(dirname(this.path), { recursive: true });
      writeFileSync(`${this.path}.tmp`, JSON.stringify(map));
      renameSync(`${this.path}.tmp`, this.path);
    } catch {
      // an unwritable cache only costs a profiling run next time
    }
  }
}
