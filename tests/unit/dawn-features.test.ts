// LORA_STUDIO_DAWN_FEATURES: the Dawn toggles the Node device (and the e2e Chromium) is made with.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dawnFeatures, dawnFeaturesFlag } from '../../workers/node/webgpu.ts';

test('LORA_STUDIO_DAWN_FEATURES: a comma list of toggle names, empty for none, anything else refused by name', () => {
  const before = process.env.LORA_STUDIO_DAWN_FEATURES;
  try {
    process.env.LORA_STUDIO_DAWN_FEATURES = ' disable_workgroup_init, skip_validation ';
    assert.deepEqual(dawnFeatures(), ['disable_workgroup_init', 'skip_validation']);
    assert.equal(dawnFeaturesFlag(), 'enable-dawn-features=disable_workgroup_init,skip_validation');
    // a trailing comma names nothing more
    process.env.LORA_STUDIO_DAWN_FEATURES = 'disable_workgroup_init,';
    assert.deepEqual(dawnFeatures(), ['disable_workgroup_init']);
    process.env.LORA_STUDIO_DAWN_FEATURES = '';
    assert.deepEqual(dawnFeatures(), []);
    assert.equal(dawnFeaturesFlag(), undefined);
    delete process.env.LORA_STUDIO_DAWN_FEATURES;
    assert.deepEqual(dawnFeatures(), []);
    // a value that would smuggle another Chromium switch or Dawn flag is refused, the bad name quoted
    process.env.LORA_STUDIO_DAWN_FEATURES = 'disable_workgroup_init,x --no-sandbox';
    assert.throws(() => dawnFeatures(), /no Dawn toggle: x --no-sandbox \(/);
  } finally {
    if (before === undefined) delete process.env.LORA_STUDIO_DAWN_FEATURES;
    else process.env.LORA_STUDIO_DAWN_FEATURES = before;
  }
});
