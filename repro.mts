import { openStudio } from './e2e/harness.ts';
const s = await openStudio(4874);
const p = s.page;
const probe = async (label: string) => console.log(label, await p.evaluate(async () => {
  const out = [];
  for (const r of ['bytes=0-0', 'bytes=0-7', 'bytes=8-100']) {
    const res = await fetch('test-model/tiny-sd15.safetensors', { headers: { Range: r } });
    const b = await res.arrayBuffer();
    out.push(`${r}: ${res.status} ${res.headers.get('Content-Range')} len ${b.byteLength}`);
  }
  return out.join(' ; ') + ' controlled ' + !!navigator.serviceWorker.controller;
}));
await probe('first');
await p.reload();
await p.waitForTimeout(2000);
await probe('reload');
await s.close();
