// The layout scene the canvas draws: plain data (workers/layout/scene.ts's format) with undo and
// redo of every edit, and a copy in localStorage so a reload restores it. Works without React.
import { createStore } from 'zustand/vanilla';
import { SCENE_VERSION, type SceneBox, type SceneLora } from '../../workers/layout/scene.ts';
import { parseStudioSceneLenient, type StudioScene as Scene } from '../../workers/layout/scene-picture.ts';
import { fitToFrame, moveRect, resizeRect, type Rect } from '../canvas/geometry.ts';

export const SCENE_KEY = 'lorastudio.scene';
const HISTORY = 200;
const COLORS = ['#e4572e', '#17bebb', '#ffc914', '#76b041', '#7d5ba6', '#2e86ab', '#f18f01', '#c73e1d'];

export function emptyScene(): Scene {
  return {
    version: SCENE_VERSION,
    width: 512,
    height: 512,
    prompt: '',
    negative: '',
    loras: [],
    boxes: [],
    composition: { method: 'merge' },
    ablation: { injection: true, isolation: true, reinit: true, ce: true, fill: true, region: true },
    seed: 1,
    steps: 20,
    cfg: 7.5,
    scheduler: 'dpmpp-2m',
  };
}

export interface SceneState {
  scene: Scene;
  selected: string | null;
  past: Scene[];
  future: Scene[];
  /** Why the last edit was refused, for the page to show. */
  refusal?: string;
  select(id: string | null): void;
  addBox(r: Rect): string | null;
  moveBox(id: string, dx: number, dy: number): void;
  resizeBox(id: string, r: Rect): void;
  updateBox(id: string, patch: Partial<Pick<SceneBox, 'name' | 'prompt' | 'loras' | 'color'>>): void;
  deleteBox(id: string): void;
  duplicateBox(id: string): void;
  /** Move a box up (+1, drawn later, on top) or down (-1) in the drawing order. */
  reorder(id: string, by: 1 | -1): void;
  setFrame(width: number, height: number): void;
  setGlobal(patch: Partial<Pick<Scene, 'prompt' | 'negative' | 'ablation' | 'guidance'>> & { loras?: SceneLora[] }): void;
  /** Prompts, sampling settings, method and frame LoRAs: saved, but not undo steps (they are typed). */
  setSettings(patch: Partial<Pick<Scene, SettingKey>>): void;
  /** Why the last autosave failed (a full storage quota), for the page to show. */
  saveError?: string;
  replace(scene: Scene): void;
  undo(): void;
  redo(): void;
}

export type SettingKey = 'prompt' | 'negative' | 'loras' | 'composition' | 'seed' | 'steps' | 'cfg' | 'scheduler' | 'model' | 'picture';

const SETTING_KEYS: SettingKey[] = ['prompt', 'negative', 'loras', 'composition', 'seed', 'steps', 'cfg', 'scheduler', 'model', 'picture'];
/** Undo and redo step through layout edits; the settings typed since stay as they are. */
function withSettings(layout: Scene, current: Scene): Scene {
  const out: Record<string, unknown> = { ...layout };
  for (const k of SETTING_KEYS) {
    if (current[k] === undefined) delete out[k]; // optional settings (the model) stay absent, not undefined
    else out[k] = current[k];
  }
  return out as unknown as Scene;
}

export const MAX_BOXES_MESSAGE = (max: number) => `A scene holds at most ${max} boxes; delete one first.`;

export function createSceneStore(storage?: Pick<Storage, 'getItem' | 'setItem'>, maxBoxes = 8) {
  let initial = emptyScene();
  try {
    const saved = storage?.getItem(SCENE_KEY);
    // picture settings that do not check (a damaged mask) are dropped; the scene itself still opens
    if (saved) initial = parseStudioSceneLenient(JSON.parse(saved)).scene;
  } catch {
    // an unreadable saved scene is replaced by a fresh one rather than breaking the page
  }
  let counter = initial.boxes.length;
  const store = createStore<SceneState>((set, get) => {
    /** The autosave; a full quota is reported, and the scene stays in memory (and undoable). */
    const save = (scene: Scene) => {
      try {
        storage?.setItem(SCENE_KEY, JSON.stringify(scene));
        if (get()?.saveError) set({ saveError: undefined });
      } catch (e) {
        set({ saveError: `The scene could not be autosaved (${(e as Error).name === 'QuotaExceededError' ? 'the browser storage is full' : (e as Error).message}); it is kept while this page is open. Free some space or share it as a link.` });
      }
    };
    /** Every edit goes through here: one undo step, the redo list cleared, the copy saved. */
    const edit = (next: Scene, selected = get().selected) => {
      const { scene, past } = get();
      set({ scene: next, past: [...past, scene].slice(-HISTORY), future: [], selected, refusal: undefined });
      save(next);
    };
    const boxes = (f: (b: SceneBox[]) => SceneBox[]) => ({ ...get().scene, boxes: f(get().scene.boxes) });
    const newId = () => {
      let id: string;
      do id = `box-${++counter}`;
      while (get().scene.boxes.some((b) => b.id === id));
      return id;
    };
    return {
      scene: initial,
      selected: null,
      past: [],
      future: [],
      select: (id) => set({ selected: id }),
      addBox: (r) => {
        const { scene } = get();
        if (scene.boxes.length >= maxBoxes) {
          set({ refusal: MAX_BOXES_MESSAGE(maxBoxes) });
          return null;
        }
        const id = newId();
        const box: SceneBox = { id, name: `concept ${counter}`, ...resizeRect(r, scene), prompt: '', loras: [], color: COLORS[(counter - 1) % COLORS.length] };
        edit(boxes((b) => [...b, box]), id);
        return id;
      },
      moveBox: (id, dx, dy) => edit(boxes((bs) => bs.map((b) => (b.id === id ? { ...b, ...moveRect(b, dx, dy, get().scene) } : b)))),
      resizeBox: (id, r) => edit(boxes((bs) => bs.map((b) => (b.id === id ? { ...b, ...resizeRect(r, get().scene) } : b)))),
      updateBox: (id, patch) => edit(boxes((bs) => bs.map((b) => (b.id === id ? { ...b, ...patch } : b)))),
      deleteBox: (id) => edit(boxes((bs) => bs.filter((b) => b.id !== id)), get().selected === id ? null : get().selected),
      duplicateBox: (id) => {
        const { scene } = get();
        const src = scene.boxes.find((b) => b.id === id);
        if (!src) return;
        if (scene.boxes.length >= maxBoxes) return set({ refusal: MAX_BOXES_MESSAGE(maxBoxes) });
        const copy = { ...src, ...moveRect(src, 16, 16, scene), id: newId(), name: `${src.name} copy`, loras: src.loras.map((l) => ({ ...l })) };
        edit(boxes((b) => [...b, copy]), copy.id);
      },
      reorder: (id, by) => {
        const list = get().scene.boxes.slice();
        const i = list.findIndex((b) => b.id === id);
        const j = i + by;
        if (i < 0 || j < 0 || j >= list.length) return;
        [list[i], list[j]] = [list[j], list[i]];
        edit({ ...get().scene, boxes: list });
      },
      setFrame: (width, height) => {
        const { scene } = get();
        if (scene.width === width && scene.height === height) return;
        const fitted = fitToFrame(scene.boxes, scene, { width, height });
        edit({ ...scene, width, height, boxes: scene.boxes.map((b, i) => ({ ...b, ...fitted[i] })) });
      },
      setGlobal: (patch) => edit({ ...get().scene, ...patch }),
      setSettings: (patch) => {
        const scene = { ...get().scene, ...patch };
        set({ scene });
        save(scene);
      },
      replace: (scene) => edit(parseStudioSceneLenient(scene).scene, null),
      undo: () => {
        const { past, scene, future } = get();
        if (!past.length) return;
        const prev = withSettings(past[past.length - 1], scene);
        set({ scene: prev, past: past.slice(0, -1), future: [scene, ...future], selected: prev.boxes.some((b) => b.id === get().selected) ? get().selected : null });
        save(prev);
      },
      redo: () => {
        const { past, scene, future } = get();
        if (!future.length) return;
        const next = withSettings(future[0], scene);
        set({ scene: next, past: [...past, scene], future: future.slice(1) });
        save(next);
      },
    };
  });
  return store;
}
