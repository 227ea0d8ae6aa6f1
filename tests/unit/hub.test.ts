// What the studio downloads for what an artist pastes: repository names, hub pages and file
// addresses, Civitai download links and plain .safetensors addresses, each against the plan written
// out by hand; and the choice of files from a hub repository's file list.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseModelSource, planHubDownload, planHubLora, type HubTreeEntry } from '../../src/library/hub.ts';

test('parseModelSource reads repositories, hub pages and file addresses, Civitai links and plain addresses', () => {
  assert.deepEqual(parseModelSource(' stable-diffusion-v1-5/stable-diffusion-v1-5 '), { kind: 'hub', repo: 'stable-diffusion-v1-5/stable-diffusion-v1-5', revision: 'main' });
  assert.deepEqual(parseModelSource('https://huggingface.co/owner/model'), { kind: 'hub', repo: 'owner/model', revision: 'main' });
  assert.deepEqual(parseModelSource('https://huggingface.co/owner/model/tree/fp16'), { kind: 'hub', repo: 'owner/model', revision: 'fp16' });
  assert.deepEqual(parseModelSource('https://huggingface.co/owner/model/blob/main/sub/my%20lora.safetensors'), {
    kind: 'url',
    url: 'https://huggingface.co/owner/model/resolve/main/sub/my%20lora.safetensors',
    name: 'my lora.safetensors',
  });
  assert.deepEqual(parseModelSource('https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor'), {
    kind: 'url',
    url: 'https://civitai.com/api/download/models/128713?type=Model&format=SafeTensor',
    name: 'civitai-128713.safetensors',
  });
  assert.deepEqual(parseModelSource('https://example.org/files/a.safetensors'), { kind: 'url', url: 'https://example.org/files/a.safetensors', name: 'a.safetensors' });
  assert.throws(() => parseModelSource('https://civitai.com/models/4201/realistic'), /paste the download link/);
  assert.throws(() => parseModelSource('http://example.org/a.safetensors'), /need an https:\/\/ address/);
  assert.throws(() => parseModelSource('https://example.org/model.ckpt'), /"model\.ckpt" is not a \.safetensors file.*can run code/);
  assert.throws(() => parseModelSource('not a thing'), /neither a Hugging Face repository \(owner\/name\) nor a web address/);
});

const file = (path: string, size: number, oid?: string): HubTreeEntry => ({ type: 'file', path, size: oid ? 134 : size, ...(oid ? { lfs: { oid, size } } : {}) });

test('planHubDownload takes the fp16 diffusers parts, or else the smallest single checkpoint', () => {
  const tree = [
    { type: 'directory', path: 'unet' },
    file('unet/diffusion_pytorch_model.safetensors', 3_400_000_000, 'a'.repeat(64)),
    file('unet/diffusion_pytorch_model.fp16.safetensors', 1_700_000_000, 'b'.repeat(64)),
    file('text_encoder/model.safetensors', 492_000_000, 'c'.repeat(64)),
    file('vae/diffusion_pytorch_model.fp16.safetensors', 167_000_000, 'd'.repeat(64)),
    file('tokenizer/vocab.json', 1_059_962),
    file('tokenizer/merges.txt', 524_619),
    file('v1-5-pruned.safetensors', 7_700_000_000, 'e'.repeat(64)),
  ];
  const plan = planHubDownload('o/m', 'main', tree);
  assert.equal(plan.name, 'o/m');
  assert.deepEqual(
    plan.files.map((f) => [f.path, f.size, f.sha256]),
    [
      ['unet/diffusion_pytorch_model.fp16.safetensors', 1_700_000_000, 'b'.repeat(64)],
      ['text_encoder/model.safetensors', 492_000_000, 'c'.repeat(64)],
      ['vae/diffusion_pytorch_model.fp16.safetensors', 167_000_000, 'd'.repeat(64)],
      ['tokenizer/vocab.json', 1_059_962, undefined],
      ['tokenizer/merges.txt', 524_619, undefined],
    ],
  );
  assert.equal(plan.files[0].url, 'https://huggingface.co/o/m/resolve/main/unet/diffusion_pytorch_model.fp16.safetensors');

  const singles = planHubDownload('o/s', 'v2', [file('big.safetensors', 7e9, 'f'.repeat(64)), file('pruned-fp16.safetensors', 2e9, '0'.repeat(64)), file('README.md', 900)]);
  assert.deepEqual(singles.files, [{ url: 'https://huggingface.co/o/s/resolve/v2/pruned-fp16.safetensors', path: 'pruned-fp16.safetensors', size: 2e9, sha256: '0'.repeat(64) }]);
  assert.throws(() => planHubDownload('o/empty', 'main', [file('README.md', 10)]), /neither diffusers folders .* nor a \.safetensors checkpoint/);
});

test('planHubLora takes diffusers\' LoRA file, or the only one, and asks when there are several', () => {
  const diffusers = planHubLora('o/l', 'main', [file('pytorch_lora_weights.safetensors', 3_300_000, '1'.repeat(64)), file('other.safetensors', 10), file('image.png', 5)]);
  assert.deepEqual(diffusers, { url: 'https://huggingface.co/o/l/resolve/main/pytorch_lora_weights.safetensors', path: 'pytorch_lora_weights.safetensors', size: 3_300_000, sha256: '1'.repeat(64) });
  assert.equal(planHubLora('o/l', 'main', [file('style v2.safetensors', 99), file('sub/x.safetensors', 1)]).url, 'https://huggingface.co/o/l/resolve/main/style%20v2.safetensors');
  assert.throws(() => planHubLora('o/l', 'main', [file('a.safetensors', 1), file('b.safetensors', 1)]), /o\/l holds 2 \.safetensors files \(a\.safetensors, b\.safetensors\); paste the address/);
  assert.throws(() => planHubLora('o/l', 'main', [file('sub/a.safetensors', 1)]), /no \.safetensors file at its top level/);
});
