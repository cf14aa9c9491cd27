// A merge of ours that QEMU was still running when Node-RED died (an active block-commit waiting,
// READY, for block-job-complete) must be finished by the next merge, not collide with it.
import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { plannedOverlays } from '../../src/providers/overlay-plan';
import { startBareHost, type BareHost } from '../support/bare-vms';

describe('qemu provider: a merge left running by a crash', function () {
  this.timeout(60_000);
  let host: BareHost;
  let provider: QemuProvider;

  before(async () => {
    host = await startBareHost(['alpha']);
    provider = new QemuProvider({ socketDir: host.socketDir });
  });
  after(async () => {
    await provider?.close();
    await host?.stop();
  });

  it('finishes the READY commit job of the same id, and the VM is back on its base', async () => {
    const [vm] = await provider.enumerate();
    const backupId = '20261122T000000Z-abcdef';
    const disk = vm.disks[0];
    const classified = { ...vm, snapshotLocation: { path: host.imageDir }, disks: [{ ...disk, included: true }] } as never;
    const overlays = await provider.snapshot(classified, backupId);
    assert.deepEqual(overlays, plannedOverlays(classified, backupId));
    const o = overlays[0];
    // what a Node-RED killed in the middle of its merge leaves: the job started, never completed
    const qmp = (provider as unknown as { qmp<R>(id: string, fn: (c: any) => Promise<R>): Promise<R> }).qmp.bind(provider);
    await qmp('alpha', async (c) => {
      const mark = c.eventMark();
      await c.execute('block-commit', { 'job-id': `vmbackup-commit-${o.overlayNode}`, device: o.overlayNode, ...(o.baseNode ? { 'base-node': o.baseNode } : {}) });
      await c.waitEvent('BLOCK_JOB_READY', (d: any) => d?.device === `vmbackup-commit-${o.overlayNode}`, 10_000, { since: mark });
    });

    await provider.merge('alpha', overlays);

    await assert.rejects(fs.access(o.overlay), 'the overlay file is gone');
    const onBase = await qmp('alpha', async (c) => (await c.execute('query-block') as any[]).some((b) => b.inserted?.file === disk.file));
    assert.equal(onBase, true, 'the VM writes to its base image again');
    const jobs = await qmp('alpha', (c) => c.execute('query-block-jobs')) as unknown[];
    assert.deepEqual(jobs, []);
    assert.ok(path.isAbsolute(o.overlay));
  });
});
