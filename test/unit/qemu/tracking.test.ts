// Change tracking's QMP exchanges (src/providers/qemu/tracking.ts) against a recording stand-in
// for the QMP client: one look at the block graph for all of a VM's disks, only the missing
// bitmaps added (persistent on qcow2 alone), only ours removed. The real QEMU side is
// test/integration/incremental.test.ts.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { QemuProvider } from '../../../src/providers/qemu/qemu-provider';
import type { PointInTimeView } from '../../../src/contract/types';
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

describe("the provider's tracking.remove: QEMU asked only when there is something to remove", () => {
  // A socket where the VM's QMP would be, counting who connects (and hanging up at once).
  async function countingSocket(dir: string, id: string) {
    const server = net.createServer((s) => {
      server.connections++;
      s.destroy();
    }) as net.Server & { connections: number };
    server.connections = 0;
    await new Promise<void>((r) => server.listen(path.join(dir, `${id}.qmp`), () => r()));
    return server;
  }
  const view = (vm: string): PointInTimeView =>
    ({
      ref: {
        backupId: '20261207T000000Z-abcdef',
        vm,
        prefix: 'vmb-abcdef-',
        disks: [{ disk: 'drive-virtio0', index: 0, qdev: '/q', node: 'fmt0' }],
      },
    }) as unknown as PointInTimeView;

  it('a full (no parent record to drop once published): no connection, no probe of the socket', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-untrack-'));
    const server = await countingSocket(dir, 'vm1');
    try {
      const provider = new QemuProvider({ socketDir: dir, commandMs: 500 });
      await provider.tracking.remove('vm1', [], view('vm1'));
      assert.equal(server.connections, 0);
      // something to remove: QEMU is asked (here it hangs up, and the removal fails)
      await assert.rejects(provider.tracking.remove('vm1', [{ disk: 'drive-virtio0', name: `${BITMAP_PREFIX}a` }], view('vm1')));
      assert.ok(server.connections >= 1, `${server.connections} connections`);
    } finally {
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
