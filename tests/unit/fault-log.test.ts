// The device's fault log: numbered in order, bounded per kind, and read from a remembered count, so
// an out-of-memory fault is still found after a flood of validation errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GpuFaultLog, type GpuFault } from '../../workers/gpu/device.ts';

const fault = (kind: GpuFault['kind'], n: number): GpuFault => ({ kind, message: `${kind} ${n}`, liveBytes: n });

test('faults are numbered in order and read from a remembered count', () => {
  const log = new GpuFaultLog(4);
  log.push(fault('validation', 0));
  log.push(fault('out-of-memory', 1));
  const seen = log.count;
  log.push(fault('internal', 2));
  log.push(fault('validation', 3));
  assert.equal(log.count, 4);
  assert.deepEqual(log.since(0).map((f) => f.message), ['validation 0', 'out-of-memory 1', 'internal 2', 'validation 3']);
  assert.deepEqual(log.since(seen).map((f) => f.message), ['internal 2', 'validation 3']);
  assert.deepEqual(log.since(0, 'out-of-memory').map((f) => f.liveBytes), [1]);
  assert.deepEqual(log.since(seen, 'out-of-memory'), []);
});

test('each kind holds only its latest faults, and a flood of one kind drops none of another', () => {
  const log = new GpuFaultLog(3);
  log.push(fault('out-of-memory', 0));
  for (let i = 1; i <= 1000; i++) log.push(fault('validation', i));
  assert.equal(log.count, 1001);
  assert.deepEqual(log.since(0).map((f) => f.liveBytes), [0, 998, 999, 1000]);
  assert.deepEqual(log.since(0, 'out-of-memory').map((f) => f.message), ['out-of-memory 0']);
  assert.deepEqual(log.since(999, 'validation').map((f) => f.liveBytes), [999, 1000]);
  assert.equal(new GpuFaultLog().keep, 64);
});
