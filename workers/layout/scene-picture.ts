// Working from a picture, as a scene keeps it: the change strength, the inpainting mask (compressed,
// see mask-codec.ts) and its options, and the hires fix. The start picture itself is never in a
// scene or a link (too large); the artist chooses it again. The field is `picture`; scene readers
// that do not know it (parseScene, older studios) drop it, so scenes stay readable both ways.
import { isObj, type Obj } from '../api/json.ts';
import { parseScene, SceneError, type Scene } from './scene.ts';
import type { EncodedMask } from './mask-codec.ts';

export interface SceneHires {
  enabled: boolean;
  /** 1.5 or 2 in the studio; the engine takes above 1 up to 4. */
  scale: number;
  strength: number;
  upscaler: 'latent' | 'image';
  /** Steps of the second pass's schedule; absent: the job's. */
  steps?: number;
}

export interface ScenePicture {
  /** How much the start picture is changed: 0 keeps it, 1 repaints it. */
  strength: number;
  /** The painted mask at the frame's size (255 repaints). */
  mask?: EncodedMask;
  maskBlur: number;
  /** Inpaint only the masked area at full resolution, with this padding in pixels around it. */
  onlyMasked: boolean;
  padding: number;
  hires: SceneHires;
}

/** A scene as the studio keeps it: the engine's format and the picture settings beside it. */
export type StudioScene = Scene & { picture?: ScenePicture };

export const PICTURE_DEFAULTS: ScenePicture = {
  strength: 0.75,
  maskBlur: 4,
  onlyMasked: false,
  padding: 32,
  hires: { enabled: false, scale: 2, strength: 0.7, upscaler: 'latent' },
};

export const MAX_MASK_BLUR = 64;
export const MAX_PADDING = 256;
/** Longest mask text a scene holds: a 2048 x 2048 mask of single-pixel runs, base64url. */
export const MAX_MASK_TEXT = 12_000_000;

function num(o: Obj, key: string, at: string, lo: number, hi: number, integer = false): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < lo || v > hi || (integer && !Number.isInteger(v))) {
    throw new SceneError(`${at}${key} must be ${integer ? 'a whole number' : 'a number'} from ${lo} to ${hi}`);
  }
  return v;
}

function bool(o: Obj, key: string, at: string): boolean {
  if (typeof o[key] !== 'boolean') throw new SceneError(`${at}${key} must be true or false`);
  return o[key] as boolean;
}

/**
 * The picture settings of an untrusted scene, checked field by field (a SceneError names the field).
 * The mask's text is checked for size and characters here; its runs are checked when it is decoded.
 */
export function parsePicture(v: unknown, frame: { width: number; height: number }, maxMaskText = MAX_MASK_TEXT): ScenePicture {
  if (!isObj(v)) throw new SceneError('picture must be an object');
  const h = v.hires;
  if (!isObj(h)) throw new SceneError('picture.hires must be an object');
  const upscaler = h.upscaler;
  if (upscaler !== 'latent' && upscaler !== 'image') throw new SceneError('picture.hires.upscaler must be "latent" or "image"');
  const out: ScenePicture = {
    strength: num(v, 'strength', 'picture.', 0, 1),
    maskBlur: num(v, 'maskBlur', 'picture.', 0, MAX_MASK_BLUR, true),
    onlyMasked: bool(v, 'onlyMasked', 'picture.'),
    padding: num(v, 'padding', 'picture.', 0, MAX_PADDING, true),
    hires: {
      enabled: bool(h, 'enabled', 'picture.hires.'),
      scale: num(h, 'scale', 'picture.hires.', 1.05, 4),
      strength: num(h, 'strength', 'picture.hires.', 0, 1),
      upscaler,
      ...(h.steps !== undefined ? { steps: num(h, 'steps', 'picture.hires.', 1, 250, true) } : {}),
    },
  };
  const m = v.mask;
  if (m !== undefined) {
    if (!isObj(m)) throw new SceneError('picture.mask must be {width, height, data}');
    const width = num(m, 'width', 'picture.mask.', 1, 2048, true);
    const height = num(m, 'height', 'picture.mask.', 1, 2048, true);
    if (width !== frame.width || height !== frame.height) throw new SceneError(`picture.mask is ${width}x${height} but the frame is ${frame.width}x${frame.height}`);
    if (typeof m.data !== 'string' || !/^[rz][A-Za-z0-9_-]*$/.test(m.data)) throw new SceneError('picture.mask.data must be r or z, then base64url');
    if (m.data.length > maxMaskText) throw new SceneError(`picture.mask.data is ${m.data.length} characters long; at most ${maxMaskText} are read`);
    out.mask = { width, height, data: m.data };
  }
  return out;
}

/** A studio scene from untrusted JSON: parseScene's checks, then the picture settings'. */
export function parseStudioScene(input: unknown, maxMaskText = MAX_MASK_TEXT): StudioScene {
  const scene = parseScene(input);
  const picture = isObj(input) && input.picture !== undefined ? parsePicture(input.picture, scene, maxMaskText) : undefined;
  return picture ? { ...scene, picture } : scene;
}

/** The same, but picture settings that do not check are dropped (a saved scene should still open). */
export function parseStudioSceneLenient(input: unknown): { scene: StudioScene; dropped?: string } {
  const scene = parseScene(input);
  try {
    return { scene: parseStudioScene(input) };
  } catch (e) {
    return { scene, dropped: (e as Error).message };
  }
}
