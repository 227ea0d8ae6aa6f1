// Reading a checkpoint over HTTP from real local servers (node:http, Node's fetch): by ranges where
// the server answers them, whole (and byte-exact) where it sends the full file the way a service
// worker's precache does, and refused with a sentence when such a file is too large.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, test } from 'node:test';
import { HttpSource, MemorySource, WHOLE_BODY_LIMIT } from '../../workers/checkpoint/source.ts';

const file = randomBytes(70_001);
const seen: string[] = [];

function ranged(req: IncomingMessage, res: ServerResponse) {
  seen.push(req.headers.range ?? 'none');
  const m = /^bytes=(\d+)-(\d+)$/.exec(req.headers.range ?? '');
  if (!m) return res.writeHead(200, { 'Content-Length': file.length }).end(file);
  const [a, b] = [Number(m[1]), Math.min(Number(m[2]), file.length - 1)];
  res.writeHead(206, { 'Content-Range': `bytes ${a}-${b}/${file.length}`, 'Content-Length': b - a + 1 }).end(file.subarray(a, b + 1));
}

const whole = (_req: IncomingMessage, res: ServerResponse) => res.writeHead(200, { 'Content-Length': file.length }).end(file);

/** Claims a file past the limit and would stream it forever: the source must not wait for it. */
function huge(_req: IncomingMessage, res: ServerResponse) {
  res.writeHead(200, { 'Content-Length': WHOLE_BODY_LIMIT + 1 });
  res.write(file);
}

const servers: ReturnType<typeof createServer>[] = [];
async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}/models/tiny%20sd.safetensors`;
}

after(() => {
  for (const s of servers) s.closeAllConnections(), s.close();
  setTimeout(() => process.exit(0), 10).unref();
});

test('a server that answers ranges is read by ranges, byte-exact at the edges', async () => {
  const src = await HttpSource.open(await serve(ranged));
  assert.ok(src instanceof HttpSource);
  assert.equal(src.size, file.length);
  assert.equal(src.name, 'tiny sd.safetensors');
  for (const [o, n] of [[0, 1], [1000, 4096], [file.length - 3, 10], [file.length, 5]]) {
    assert.deepEqual(Buffer.from(await src.read(o, n)), file.subarray(o, Math.min(o + n, file.length)), `bytes ${o}+${n}`);
  }
  assert.deepEqual(seen, ['bytes=0-0', 'bytes=0-0', 'bytes=1000-5095', `bytes=${file.length - 3}-${file.length - 1}`]);
});

test('a server that sends the whole file (a precache) is read once and kept', async () => {
  const src = await HttpSource.open(await serve(whole));
  assert.ok(src instanceof MemorySource);
  assert.equal(src.size, file.length);
  assert.deepEqual(Buffer.from(await src.read(12_345, 999)), file.subarray(12_345, 13_344));
});

test('ranges that come back empty (a precache after a reload) or fail outright: the file is read whole, once, byte-exact', async () => {
  let ranges = 0;
  let wholes = 0;
  const src = await HttpSource.open(
    await serve((req, res) => {
      if (!req.headers.range) return wholes++, whole(req, res);
      // the size probe is answered, every later range with a 206 and no bytes
      if (ranges++ === 0) return ranged(req, res);
      res.writeHead(206, { 'Content-Range': `bytes 0-0/${file.length}`, 'Content-Length': 0 }).end();
    }),
  );
  assert.ok(src instanceof HttpSource);
  assert.deepEqual(Buffer.from(await src.read(8, 100)), file.subarray(8, 108));
  assert.deepEqual(Buffer.from(await src.read(file.length - 5, 10)), file.subarray(file.length - 5));
  assert.equal(wholes, 1, 'read whole once, then from memory');
  // a fetch that refuses ranged requests altogether
  const url = await serve(whole);
  const refusing = ((input: string | URL | Request, init?: RequestInit) => (new Headers(init?.headers).has('Range') ? Promise.reject(new TypeError('Failed to fetch')) : fetch(input, init))) as typeof fetch;
  const m = await HttpSource.open(url, refusing);
  assert.deepEqual(Buffer.from(await m.read(100, 50)), file.subarray(100, 150));
});

test('a whole-file answer past the limit is refused with a sentence, without reading it all', async () => {
  await assert.rejects(HttpSource.open(await serve(huge)), /does not support HTTP range requests, and it is larger than 256 MB.*download it into the library instead/);
});
