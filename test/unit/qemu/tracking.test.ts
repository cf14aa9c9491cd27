// Change tracking's QMP exchanges (src/providers/qemu/tracking.ts) against a recording stand-in
// for the QMP client: one look at the block graph for all of a VM's disks, only the missing
// bitmaps added (persistent on qcow2 alone), only ours removed. The real QEMU side is
// test/integration/incremental.test.ts.
import * as assert from 'node:assert/strict';
import type { QmpClient } from '../../../src/providers/qemu/protocol';
import { addBitmaps, BITMAP_PREFIX, removeBitmaps } from '../../../src/providers/qemu/tracking';

const bitmap = (name: string) => ({ name, recording: true, persistent: true, busy: false, granularity: 65536, count: 0 });

function graph() {
  return [
    { 'node-name': 'fmt0', drv: 'qcow2', 'dirty-bitmaps': [bitmap(`${BITMAP_PREFIX}a`), bitmap('users-own')] },
    { 'node-name': 'fmt1', drv: 'raw' },
    { 'node-name': 'file0', drv: 'file' },
  ];
}

/** A QMP client that answers the block-graph query and records every command. */
function recorder(): { c: QmpClient; sent: { cmd: string; args?: Record<string, unknown> }[] } {
  const sent: { cmd: string; args?: Record<string, unknown> }[] = [];
  const c = {
    execute: async (cmd: string, args?: Record<string, unknown>) => {
      sent.push({ cmd, ...(args ? { args } : {}) });
      return cmd === 'query-named-block-nodes' ? graph() : {};
    },
  } as unknown as QmpClient;
  return { c, sent };
}

describe('change tracking: one look at the block graph per exchange', () => {
  it('adds the missing bitmaps of every disk after one query: persistent on qcow2 only, one already there left alone', async () => {
    const { c, sent } = recorder();
    await addBitmaps(c, [
      { node: 'fmt0', name: `${BITMAP_PREFIX}a` },
      { node: 'fmt0', name: `${BITMAP_PREFIX}b` },
      { node: 'fmt1', name: `${BITMAP_PREFIX}b` },
    ]);
    assert.deepEqual(sent, [
      { cmd: 'query-named-block-nodes', args: { flat: true } },
      { cmd: 'block-dirty-bitmap-add', args: { node: 'fmt0', name: `${BITMAP_PREFIX}b`, persistent: true, granularity: 65536 } },
      { cmd: 'block-dirty-bitmap-add', args: { node: 'fmt1', name: `${BITMAP_PREFIX}b`, persistent: false, granularity: 65536 } },
    ]);
  });

  it('removes only bitmaps that are there, after one query', async () => {
    const { c, sent } = recorder();
    await removeBitmaps(c, [
      { node: 'fmt0', name: `${BITMAP_PREFIX}a` },
      { node: 'fmt1', name: `${BITMAP_PREFIX}a` },
    ]);
    assert.deepEqual(sent, [
      { cmd: 'query-named-block-nodes', args: { flat: true } },
      { cmd: 'block-dirty-bitmap-remove', args: { node: 'fmt0', name: `${BITMAP_PREFIX}a` } },
    ]);
  });

  it("refuses a bitmap that is not ours before removing anything (the user's own bitmaps are never touched)", async () => {
    const { c, sent } = recorder();
    await assert.rejects(
      removeBitmaps(c, [
        { node: 'fmt0', name: `${BITMAP_PREFIX}a` },
        { node: 'fmt0', name: 'users-own' },
      ]),
      /refusing to remove bitmap users-own: not one this product made/,
    );
    assert.deepEqual(sent, []);
  });
});
