import * as assert from 'node:assert/strict';
import { assertStage, validate } from '../../../src/contract/validate';
import { onlineVm } from './fixtures';

const set = () => ({
  stage: 'enumerated',
  backupId: '20260101T000000Z-abcdef',
  host: { name: 'h1', provider: 'qemu' },
  writer: { name: 'QEMU QMP writer', components: 1 },
  createdAt: '2026-01-01T00:00:00.000Z',
  vms: [onlineVm()],
  timings: {},
  warnings: [],
});

describe('contracts', () => {
  it('accepts a well-formed set at its stage and names pointer and rule otherwise', () => {
    assert.equal(validate('enumerated', set()), null);
    assert.match(validate('classified', set())!, /\/stage is "enumerated" but this node takes a backup set at stage "classified"/);
    assert.match(
      validate('enumerated', { ...set(), vms: [{ ...onlineVm(), disks: [{ id: 'x' }] }] })!,
      /\/vms\/0\/disks\/0 must have required property 'node' \(required: node\)/,
    );
    assert.match(validate('enumerated', { ...set(), host: { name: 'a/b', provider: 'qemu' } })!, /\/host\/name must match pattern/);
    assert.match(validate('enumerated', { ...set(), createdAt: 'yesterday' })!, /\/createdAt must match format "date-time"/);
    assert.throws(() => assertStage('enumerated', 42), /msg\.payload: \/ must be a backup-set object/);
  });
});
