// Share links: a scene in the URL fragment (`#scene=1.<payload>`), never sent to any server. The
// payload is the scene's JSON, deflated (raw) and base64url-encoded; the version number sits before
// it so a link from a newer studio is recognised without decoding anything. Decoding is bounded at
// every stage (link length, inflated size) and ends in parseScene, so a damaged or hostile link gets
// a sentence and nothing else. The scene's picture settings travel too, its painted mask included
// while the link stays within MAX_LINK (a larger mask is left out, and the caller is told); a start
// picture never does.
import { fromBase64UrlChecked, toBase64Url } from '../../workers/api/base64url.ts';
import { readCapped } from '../../workers/checkpoint/source.ts';
import { parseJson } from '../../workers/api/json.ts';
import { SceneError } from '../../workers/layout/scene.ts';
import { decodeMask, MaskCodecError } from '../../workers/layout/mask-codec.ts';
import { parseStudioScene, type StudioScene } from '../../workers/layout/scene-picture.ts';

export const LINK_VERSION = 1;
export const LINK_PREFIX = '#scene=';
/** Longest fragment read: browsers keep far longer URLs, but no honest scene needs more. */
export const MAX_LINK = 32_000;
/** Largest inflated scene: a scene at every limit of parseScene stays well under this. */
export const MAX_SCENE_BYTES = 256_000;

export class ShareLinkError extends Error {
  constructor(problem: string) {
    super(`This share link cannot be opened: ${problem}`);
    this.name = 'ShareLinkError';
  }
}

export { toBase64Url };

export function fromBase64Url(text: string): Uint8Array {
  const got = fromBase64UrlChecked(text);
  if (typeof got === 'string') throw new ShareLinkError(got);
  return got;
}

async function pump(stream: CompressionStream | DecompressionStream, input: Uint8Array, limit: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  // errors surface on the reading side; the writer's own promises are only kept from going unhandled
  writer.write(input as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  return readCapped(stream.readable, limit, () => new ShareLinkError(`its scene unpacks to more than ${limit} bytes, which no scene needs.`));
}

async function pack(scene: StudioScene): Promise<string> {
  const json = new TextEncoder().encode(JSON.stringify(parseStudioScene(scene)));
  const packed = await pump(new CompressionStream('deflate-raw'), json, Number.MAX_SAFE_INTEGER);
  return `${LINK_PREFIX}${LINK_VERSION}.${toBase64Url(packed)}`;
}

/** The fragment (with its leading '#') that carries a scene. */
export async function encodeShareLink(scene: StudioScene): Promise<string> {
  return (await shareLinkOf(scene)).link;
}

/**
 * The fragment, and `dropped` when the scene's mask was left out because the link would have been
 * longer than a link may be (the rest of the scene is still there: never a broken link).
 */
export async function shareLinkOf(scene: StudioScene): Promise<{ link: string; dropped?: string }> {
  const link = await pack(scene);
  if (link.length <= MAX_LINK || !scene.picture?.mask) return { link };
  const { mask: _, ...picture } = scene.picture;
  const shorter = await pack({ ...scene, picture });
  return { link: shorter, dropped: `The painted mask was left out of the link: with it the link would be ${link.length} characters long, and a link holds at most ${MAX_LINK}. Simpler strokes (or a smaller frame) make a shorter mask; the scene file or the PNG keeps it whole.` };
}

/** Whether a fragment is meant as a share link (it may still be broken). */
export const isShareLink = (hash: string) => hash.startsWith(LINK_PREFIX);

/** The scene a fragment carries, checked; a ShareLinkError saying what is wrong otherwise. */
export async function decodeShareLink(hash: string): Promise<StudioScene> {
  if (!isShareLink(hash)) throw new ShareLinkError('it does not hold a LoRA Studio scene.');
  if (hash.length > MAX_LINK) throw new ShareLinkError(`it is ${hash.length} characters long; a scene link is at most ${MAX_LINK}.`);
  const body = hash.slice(LINK_PREFIX.length);
  const dot = body.indexOf('.');
  const version = dot < 0 ? '' : body.slice(0, dot);
  if (!/^\d{1,6}$/.test(version)) throw new ShareLinkError('its version number is missing or damaged.');
  if (Number(version) !== LINK_VERSION) {
    throw new ShareLinkError(`it was made by a studio that writes version ${version} links; this one reads version ${LINK_VERSION}. Update the studio (reload it while online).`);
  }
  const packed = fromBase64Url(body.slice(dot + 1));
  let json: Uint8Array;
  try {
    json = await pump(new DecompressionStream('deflate-raw'), packed, MAX_SCENE_BYTES);
  } catch (e) {
    if (e instanceof ShareLinkError) throw e;
    throw new ShareLinkError('its data is damaged (it does not unpack). Ask for the link again; it may have been cut when it was copied.');
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(json);
  } catch {
    throw new ShareLinkError('its data is damaged (it is not a scene).');
  }
  try {
    const scene = parseStudioScene(parseJson(text, (problem) => new SceneError(problem)), MAX_LINK);
    // the mask's runs are checked now, so a bad one fails the link here and not later on the canvas
    if (scene.picture?.mask) await decodeMask(scene.picture.mask, scene, MAX_LINK);
    return scene;
  } catch (e) {
    if (e instanceof SceneError || e instanceof MaskCodecError) throw new ShareLinkError(`${e.problem}${e.problem.endsWith('.') ? '' : '.'}`);
    throw e;
  }
}
