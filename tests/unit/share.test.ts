// Share links and PNG scene chunks: byte-exact round trips against Node's own base64url and zlib,
// and damaged or hostile input (every one-character change of a link, a deflate bomb, wrong versions,
// cut and corrupted PNGs) ending in a named error.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { deflateRawSync, deflateSync, inflateRawSync } from 'node:zlib';
import { encodePng, PngError, readPngText } from '../../workers/engine/png.ts';
import { SceneError, testScene } from '../../workers/layout/scene.ts';
import { decodeShareLink, encodeShareLink, fromBase64Url, LINK_PREFIX, MAX_LINK, ShareLinkError, toBase64Url } from '../../src/share/link.ts';
import { seeded } from '../helpers.ts';

test('base64url matches Node for every length and byte value', () => {
  const rand = seeded(5);
  for (let n = 0; n < 70; n++) {
    const bytes = Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
    const ours = toBase64Url(bytes);
    assert.equal(ours, Buffer.from(bytes).toString('base64url'));
    assert.deepEqual(fromBase64Url(ours), bytes);
  }
});

test('a scene survives a share link byte for byte, and the payload is plain raw deflate', async () => {
  const scene = testScene();
  scene.prompt = 'ünïcödé ✓, <b>bold</b> & "quotes"';
  const link = await encodeShareLink(scene);
  assert.ok(link.startsWith(`${LINK_PREFIX}1.`));
  // an independent inflater reads the same JSON back
  const json = inflateRawSync(Buffer.from(link.slice(`${LINK_PREFIX}1.`.length), 'base64url')).toString('utf8');
  assert.equal(json, JSON.stringify(scene));
  assert.deepEqual(await decodeShareLink(link), scene);
});

test('damaged, foreign and hostile links each get their own sentence', async () => {
  const link = await encodeShareLink(testScene());
  const body = link.slice(`${LINK_PREFIX}1.`.length);
  const fails = async (hash: string, pattern: RegExp) => {
    await assert.rejects(decodeShareLink(hash), (e: Error) => e instanceof ShareLinkError && pattern.test(e.message), hash.slice(0, 60));
  };
  await fails('#other=1.abc', /does not hold a LoRA Studio scene/);
  await fails(`${LINK_PREFIX}2.${body}`, /writes version 2 links; this one reads version 1/);
  await fails(`${LINK_PREFIX}${body}`, /version number is missing or damaged/);
  await fails(`${LINK_PREFIX}1.${body.slice(0, body.length >> 1)}`, /damaged|cut short/);
  await fails(`${LINK_PREFIX}1.${body}<script>`, /contains the character "<"/);
  await fails(`${LINK_PREFIX}1.${'A'.repeat(MAX_LINK)}`, /characters long; a scene link is at most/);
  // a deflate bomb: 20 MB of spaces packs into a few kilobytes
  const bomb = toBase64Url(deflateRawSync(Buffer.alloc(20_000_000, 32)));
  assert.ok(bomb.length < MAX_LINK);
  await fails(`${LINK_PREFIX}1.${bomb}`, /unpacks to more than 256000 bytes/);
  // valid packing, hostile contents: huge numbers and wrong types are named by field
  const pack = (v: unknown) => `${LINK_PREFIX}1.${toBase64Url(deflateRawSync(Buffer.from(JSON.stringify(v))))}`;
  await fails(pack({ ...testScene(), width: 1e308 }), /width must be a whole number from 64 to 2048/);
  await fails(pack({ ...testScene(), boxes: 'x'.repeat(10) }), /boxes must be a list/);
  await fails(pack({ ...testScene(), __proto__: { polluted: true }, version: 7 }), /version is 7/);
  await fails(`${LINK_PREFIX}1.${toBase64Url(deflateRawSync(Buffer.from([0xff, 0xfe, 0x7b])))}`, /not a scene/);
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test('every one-character change of a link decodes to a checked scene or fails with a named error', async () => {
  const link = await encodeShareLink(testScene());
  const alphabet = 'Aa0-_.=#%';
  let tried = 0;
  let opened = 0;
  for (let i = 0; i < link.length; i++) {
    for (const c of alphabet) {
      if (link[i] === c) continue;
      tried++;
      try {
        const s = await decodeShareLink(link.slice(0, i) + c + link.slice(i + 1));
        assert.ok(s.boxes.length <= 8 && s.width % 64 === 0);
        opened++;
      } catch (e) {
        assert.ok(e instanceof ShareLinkError || e instanceof SceneError, `${(e as Error).name}: ${(e as Error).message}`);
      }
    }
  }
  assert.ok(tried > 1000, `${tried} mutations`);
  assert.ok(opened < tried);
});

test('PNG text chunks round trip, ASCII as tEXt and Unicode as iTXt, and damage is named', async () => {
  const rgba = Uint8Array.from({ length: 4 * 3 * 2 }, (_, i) => (i * 37) & 255);
  const text = { 'lorastudio.scene': JSON.stringify(testScene()), note: 'ünïcödé ✓ <script>' };
  const png = await encodePng(rgba, 3, 2, text, (d) => new Uint8Array(deflateSync(d))); // PNG image data is zlib-wrapped deflate
  assert.deepEqual(readPngText(png), text);
  const types = chunkTypes(png);
  assert.deepEqual(types, ['IHDR', 'tEXt', 'iTXt', 'IDAT', 'IEND']);
  const fails = (bytes: Uint8Array, pattern: RegExp) => assert.throws(() => readPngText(bytes), (e: Error) => e instanceof PngError && pattern.test(e.message));
  fails(png.subarray(0, png.length - 6), /cut short/);
  fails(Uint8Array.from([1, 2, 3]), /not a PNG file/);
  const flipped = png.slice();
  flipped[45] ^= 1; // inside the tEXt chunk's text
  fails(flipped, /checksum mismatch/);
  const long = png.slice();
  new DataView(long.buffer).setUint32(33, 0x7fffffff); // the tEXt chunk's length
  fails(long, /claims 2147483647 bytes, past the end/);
});

function chunkTypes(png: Uint8Array): string[] {
  const v = new DataView(png.buffer, png.byteOffset);
  const out = [];
  for (let at = 8; at < png.length; at += 12 + v.getUint32(at)) out.push(String.fromCharCode(...png.subarray(at + 4, at + 8)));
  return out;
}

test('a link carries the picture settings and the painted mask byte for byte; a mask too long for a link is left out with a sentence, never a broken link', async () => {
  const { encodeMask, decodeMask } = await import('../../workers/layout/mask-codec.ts');
  const { stampSegment } = await import('../../src/picture/mask.ts');
  const { shareLinkOf } = await import('../../src/share/link.ts');
  const scene = { ...testScene(), width: 512, height: 512, boxes: [] };
  const mask = new Uint8Array(512 * 512);
  stampSegment(mask, 512, 512, { x: 100, y: 100 }, { x: 400, y: 300 }, 40, 255);
  stampSegment(mask, 512, 512, { x: 50, y: 450 }, { x: 480, y: 470 }, 12, 255);
  const picture = { strength: 0.6, maskBlur: 8, onlyMasked: true, padding: 48, hires: { enabled: true, scale: 1.5, strength: 0.55, upscaler: 'image' as const, steps: 12 }, mask: await encodeMask(mask, 512, 512) };
  const { link, dropped } = await shareLinkOf({ ...scene, picture });
  assert.equal(dropped, undefined);
  assert.ok(link.length <= MAX_LINK);
  const back = await decodeShareLink(link);
  assert.deepEqual(back.picture, picture);
  assert.deepEqual(await decodeMask(back.picture!.mask!, back), mask, 'the mask, byte for byte');
  // noise at 1024 x 1024 cannot fit: the link keeps everything else
  const rand = seeded(9);
  const noise = Uint8Array.from({ length: 1024 * 1024 }, () => (rand() < 0 ? 0 : 255));
  const big = { ...scene, width: 1024, height: 1024, picture: { ...picture, mask: await encodeMask(noise, 1024, 1024) } };
  const out = await shareLinkOf(big);
  assert.match(out.dropped ?? '', /The painted mask was left out of the link: with it the link would be \d+ characters long, and a link holds at most 32000/);
  assert.ok(out.link.length <= MAX_LINK);
  const { mask: _, ...rest } = big.picture;
  assert.deepEqual((await decodeShareLink(out.link)).picture, rest);
});

test('hostile picture settings in a link: each named, the mask checked before the scene opens', async () => {
  const pack = (v: unknown) => `${LINK_PREFIX}1.${toBase64Url(deflateRawSync(Buffer.from(JSON.stringify(v))))}`;
  const picture = { strength: 0.5, maskBlur: 4, onlyMasked: false, padding: 32, hires: { enabled: false, scale: 2, strength: 0.7, upscaler: 'latent' } };
  const fails = async (v: unknown, pattern: RegExp) => assert.rejects(decodeShareLink(pack(v)), (e: Error) => e instanceof ShareLinkError && pattern.test(e.message), pattern.source);
  await fails({ ...testScene(), picture: { ...picture, strength: 7 } }, /picture\.strength must be a number from 0 to 1/);
  await fails({ ...testScene(), picture: { ...picture, hires: { ...picture.hires, upscaler: 'magic' } } }, /upscaler must be "latent" or "image"/);
  await fails({ ...testScene(), picture: { ...picture, mask: { width: 32, height: 32, data: 'rAA' } } }, /picture\.mask is 32x32 but the frame is 64x64/);
  await fails({ ...testScene(), picture: { ...picture, mask: { width: 64, height: 64, data: 'r<b>' } } }, /r or z, then base64url/);
  // runs that do not cover the frame, and a bomb of runs
  await fails({ ...testScene(), picture: { ...picture, mask: { width: 64, height: 64, data: `r${Buffer.from([255, 10]).toString('base64url')}` } } }, /cover 10 of the 4096 pixels/);
  await fails({ ...testScene(), picture: { ...picture, mask: { width: 64, height: 64, data: `z${deflateRawSync(Buffer.alloc(5_000_000, 1)).toString('base64url')}` } } }, /unpacks to more than 8192 bytes/);
  // unknown extra fields are dropped, not kept
  const ok = await decodeShareLink(pack({ ...testScene(), picture: { ...picture, evil: '<script>' } }));
  assert.deepEqual(ok.picture, picture);
});
