// Share links: a scene in the URL fragment (`#scene=1.<payload>`), never sent to any server. The
// payload is the scene's JSON, deflated (raw) and base64url-encoded; the version number sits before
// it so a link from a newer studio is recognised without decoding anything. Decoding is bounded at
// every stage (link length, inflated size) and ends in parseScene, so a damaged or hostile link gets
// a sentence and nothing else.
import { readCapped } from '../../workers/checkpoint/source.ts';
import { parseScene, parseSceneText, SceneError, type Scene } from '../../workers/layout/scene.ts';

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

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const B64_INDEX = new Int16Array(128).fill(-1);
for (let i = 0; i < B64.length; i++) B64_INDEX[B64.charCodeAt(i)] = i;

export function toBase64Url(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    const left = bytes.length - i;
    out += B64[(n >> 18) & 63] + B64[(n >> 12) & 63] + (left > 1 ? B64[(n >> 6) & 63] : '') + (left > 2 ? B64[n & 63] : '');
  }
  return out;
}

export function fromBase64Url(text: string): Uint8Array {
  if (text.length % 4 === 1) throw new ShareLinkError('it was cut short (its data has an impossible length).');
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let acc = 0;
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    const v = c < 128 ? B64_INDEX[c] : -1;
    if (v < 0) throw new ShareLinkError(`it contains the character ${JSON.stringify(text[i])}, which no share link has.`);
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  return out.subarray(0, o);
}

async function pump(stream: CompressionStream | DecompressionStream, input: Uint8Array, limit: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  // errors surface on the reading side; the writer's own promises are only kept from going unhandled
  writer.write(input as Uint8Array<ArrayBuffer>).catch(() => {});
  writer.close().catch(() => {});
  return readCapped(stream.readable, limit, () => new ShareLinkError(`its scene unpacks to more than ${limit} bytes, which no scene needs.`));
}

/** The fragment (with its leading '#') that carries a scene. */
export async function encodeShareLink(scene: Scene): Promise<string> {
  const json = new TextEncoder().encode(JSON.stringify(parseScene(scene)));
  const packed = await pump(new CompressionStream('deflate-raw'), json, Number.MAX_SAFE_INTEGER);
  return `${LINK_PREFIX}${LINK_VERSION}.${toBase64Url(packed)}`;
}

/** Whether a fragment is meant as a share link (it may still be broken). */
export const isShareLink = (hash: string) => hash.startsWith(LINK_PREFIX);

/** The scene a fragment carries, checked; a ShareLinkError saying what is wrong otherwise. */
export async function decodeShareLink(hash: string): Promise<Scene> {
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
    return parseSceneText(text);
  } catch (e) {
    if (e instanceof SceneError) throw new ShareLinkError(`${e.problem}.`);
    throw e;
  }
}
