// Working from a picture: choosing the start picture (a file, the last result, a gallery picture),
// fitting it and the mask to the frame, keeping the mask in the scene (compressed), the VAE choice,
// and the `init` and `hires` parts of a job. State lives in the picture store and the scene store.
import type { FileRef, GenerateJob, ImageData8, ModelInfo } from '../../workers/api/contract.ts';
import type { GalleryItem } from '../gallery/gallery.ts';
import { fitPicture, picturePixels } from '../picture/fit.ts';
import { invertMask, resizeMask } from '../picture/mask.ts';
import { decodeMask, encodeMask } from '../../workers/layout/mask-codec.ts';
import { PICTURE_DEFAULTS, type ScenePicture } from '../../workers/layout/scene-picture.ts';
import { createPictureStore } from '../store/picture.ts';
import { useStudio } from '../store/studio.ts';
import { currentScene, engine, sceneStore } from './actions.ts';

export const pictureStore = createPictureStore();

const studio = () => useStudio.getState();

/** The scene's picture settings, defaults filled in. */
export const pictureSettings = (): ScenePicture => ({ ...PICTURE_DEFAULTS, ...currentScene().picture });

export function setPictureSettings(patch: Partial<Omit<ScenePicture, 'mask'>>) {
  sceneStore.getState().setSettings({ picture: { ...pictureSettings(), ...patch } });
}

/** Why the loaded model cannot start from a picture, in plain words; undefined when it can. */
export function startPictureProblem(model: ModelInfo | undefined): string | undefined {
  if (!model) return 'Load a model first.';
  if (!model.vaeEncoder) return "This model's VAE has only its decoder, so it cannot read a picture. Choose a VAE file that has its encoder (Models, VAE) to start from a picture or use the Picture upscaler.";
  return undefined;
}

// ---------------------------------------------------------------- the start picture

/** Use these pixels as the start picture, fitted to the frame. */
export function chooseStartPicture(source: ImageData8, name: string) {
  const { width, height } = currentScene();
  const fitted = fitPicture(source, width, height);
  pictureStore.getState().set({ start: { ...fitted, name, source } });
  studio().set({ notice: `${name} is the start picture${fitted.cut !== 'none' ? `, cropped to fill ${width}×${height} (the ${fitted.cut} were cut)` : fitted.scaled ? `, scaled to ${width}×${height}` : ''}.` });
}

export async function startFromFile(file: File) {
  try {
    chooseStartPicture(await picturePixels(file), file.name);
  } catch (e) {
    studio().set({ alert: (e as Error).message });
  }
}

export function startFromResult() {
  const r = studio().result;
  if (r) chooseStartPicture(r.image, 'The last picture');
}

export async function startFromGallery(item: GalleryItem, index: number) {
  try {
    chooseStartPicture(await picturePixels(item.png), `Gallery picture ${index + 1} (seed ${item.report.seed})`);
  } catch (e) {
    studio().set({ alert: (e as Error).message });
  }
}

export function clearStartPicture() {
  pictureStore.getState().set({ start: undefined, mode: 'boxes' });
}

// ---------------------------------------------------------------- the mask

/** The mask text the scene holds that the store's bytes stand for (so a scene change can tell its own). */
let keptText: string | undefined;
let commits = 0;

/** A finished edit of the mask: into the store (an undo step) and, compressed, into the scene. */
export async function commitMask(mask: Uint8Array | undefined, history = true) {
  const { width, height } = currentScene();
  const empty = !mask || !mask.some((v) => v);
  pictureStore.getState().setMask(empty ? undefined : mask, width, height, history);
  await keepMaskInScene();
}

/** The store's mask, compressed into the scene (the last call wins when strokes come quickly). */
async function keepMaskInScene() {
  const ticket = ++commits;
  const { mask, maskWidth, maskHeight } = pictureStore.getState();
  const encoded = mask ? await encodeMask(mask, maskWidth, maskHeight) : undefined;
  if (ticket !== commits) return;
  keptText = encoded?.data;
  const { mask: _, ...rest } = pictureSettings();
  sceneStore.getState().setSettings({ picture: encoded ? { ...rest, mask: encoded } : rest });
}

export function clearMask() {
  void commitMask(undefined);
}

export function invertCurrentMask() {
  const { width, height } = currentScene();
  const { mask } = pictureStore.getState();
  void commitMask(invertMask(mask ?? new Uint8Array(width * height)));
}

export function undoMask() {
  pictureStore.getState().undo();
  void keepMaskInScene();
}

export function redoMask() {
  pictureStore.getState().redo();
  void keepMaskInScene();
}

/**
 * Keep the start picture and the mask in step with the scene: a resized frame fits them again, and
 * a scene opened from a link, a PNG or the gallery brings its own mask.
 */
export function syncPicture() {
  sceneStore.subscribe((s, prev) => {
    const { width, height } = s.scene;
    const resized = width !== prev.scene.width || height !== prev.scene.height;
    const { start, mask, maskWidth, maskHeight } = pictureStore.getState();
    if (resized && start) pictureStore.getState().set({ start: { ...start, ...fitPicture(start.source, width, height) } });
    // another scene's mask (a link, a PNG, the gallery) replaces ours; our own follows a resized frame
    if (s.scene.picture?.mask?.data !== keptText) void loadSceneMask();
    else if (resized && mask) void commitMask(resizeMask(mask, { width: maskWidth, height: maskHeight }, { width, height }), false);
    else if (resized) pictureStore.getState().setMask(undefined, width, height, false);
  });
  void loadSceneMask();
}

async function loadSceneMask() {
  const scene = currentScene();
  const encoded = scene.picture?.mask;
  keptText = encoded?.data;
  try {
    const mask = encoded ? await decodeMask(encoded, scene) : undefined;
    if (currentScene().picture?.mask?.data !== encoded?.data) return; // another scene came meanwhile
    pictureStore.getState().setMask(mask, scene.width, scene.height, false);
  } catch (e) {
    studio().set({ alert: `${(e as Error).message} The mask was left out.` });
    const { mask: _, ...rest } = pictureSettings();
    keptText = undefined;
    sceneStore.getState().setSettings({ picture: rest });
  }
}

// ---------------------------------------------------------------- the job

/** The job's `init` (start picture, strength, mask and its options) and `hires`, from the page. */
export function pictureJob(job: GenerateJob, model: ModelInfo | undefined): Pick<GenerateJob, 'init' | 'hires'> {
  const pic = pictureSettings();
  const { start, mask, maskWidth, maskHeight } = pictureStore.getState();
  const out: Pick<GenerateJob, 'init' | 'hires'> = {};
  if (start) {
    const problem = startPictureProblem(model);
    if (problem) throw new Error(`${problem} Or remove the start picture.`);
    const image = start.image.width === job.width && start.image.height === job.height ? start.image : fitPicture(start.source, job.width, job.height).image;
    const painted = mask && maskWidth === job.width && maskHeight === job.height && mask.some((v) => v);
    out.init = {
      image: { width: image.width, height: image.height, data: new Uint8ClampedArray(image.data) },
      strength: pic.strength,
      ...(painted ? { mask: mask.slice(), maskBlur: pic.maskBlur, ...(pic.onlyMasked ? { onlyMaskedPadding: pic.padding } : {}) } : {}),
    };
  }
  // the engine runs the hires fix after text to image only; the Hires fix panel says so while a start picture is set
  if (pic.hires.enabled && !start) {
    const h = pic.hires;
    if (h.upscaler === 'image' && model && !model.vaeEncoder) throw new Error(`The Picture upscaler needs the VAE's encoder. ${startPictureProblem(model)}`);
    out.hires = { scale: h.scale, strength: h.strength, upscaler: h.upscaler, ...(h.steps ? { steps: h.steps } : {}) };
  }
  return out;
}

/** A job as JSON for localStorage: byte arrays as base64 (JSON.stringify would spell out every byte). */
export function jobJson(job: GenerateJob): string {
  return JSON.stringify(job, (_, v) => (v instanceof Uint8Array || v instanceof Uint8ClampedArray ? { base64: bytesToBase64(v) } : v));
}

function bytesToBase64(bytes: Uint8Array | Uint8ClampedArray): string {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

// ---------------------------------------------------------------- the VAE

/** A separate VAE file (null: the model's own), loaded now and again with every model loaded after. */
export async function chooseVae(file: File | null) {
  const { set } = studio();
  set({ vae: file ?? undefined, status: { kind: 'loading', done: 0, total: 1, label: file ? `the VAE ${file.name}` : "the model's own VAE" }, notice: undefined });
  try {
    const model = await engine().loadVae(file ? vaeRef(file) : null);
    set({ model, status: { kind: 'ready' }, notice: file ? `The VAE ${file.name} is in use.` : "The model's own VAE is in use." });
  } catch (e) {
    set({ vae: undefined, status: { kind: 'ready' }, alert: (e as Error).message });
  }
}

export const vaeRef = (file: File): FileRef => ({ kind: 'blob', name: file.name, blob: file });
