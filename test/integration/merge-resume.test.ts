// A merge of ours that QEMU was still running when Node-RED died (an active block-commit waiting,
// READY, for block-job-complete) must be finished by the next merge, not collide with it; one
// that had completed (the overlay out of the VM's graph, its file not yet deleted) must be known
// as merged from QEMU's record of the job, not kept aside as an overlay the VM lost.
import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { plannedOverlays } from '../../src/providers/overlay-plan';
import { runProgram } from '../../src/util/run';
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

  it('a commit that completed before its process died: the overlay (holding data) is deleted, the job record dismissed', async () => {
    const [vm] = await provider.enumerate();
    const backupId = '20261122T000001Z-bcdefg';
    const disk = vm.disks[0];
    const classified = { ...vm, snapshotLocation: { path: host.imageDir }, disks: [{ ...disk, included: true }] } as never;
    const [o] = await provider.snapshot(classified, backupId);
    const qmp = (provider as unknown as { qmp<R>(id: string, fn: (c: any) => Promise<R>): Promise<R> }).qmp.bind(provider);
    const hmp = (line: string) => qmp('alpha', (c) => c.execute('human-monitor-command', { 'command-line': line })) as Promise<string>;
    // the VM writes while on its overlay: the overlay file holds data
    await hmp(`qemu-io ${vm.disks[0].id} "write -P 0x5c 0 64k"`);
    await hmp(`qemu-io ${vm.disks[0].id} "flush"`); // qcow2 metadata out of QEMU's cache, for qemu-img map
    const map = JSON.parse((await runProgram('qemu-img', ['map', '-U', '--output=json', o.overlay])).stdout) as { depth: number; data: boolean }[];
    assert.ok(map.some((e) => e.depth === 0 && e.data), 'the overlay holds the write');
    // what a merging process killed right after the commit completed leaves: the VM back on its
    // base, the overlay file still there, QEMU's record of the (auto-dismiss off) job
    const jobId = `vmbackup-commit-${o.overlayNode}`;
    await qmp('alpha', async (c) => {
      const mark = c.eventMark();
      await c.execute('block-commit', { 'job-id': jobId, device: o.overlayNode, 'auto-dismiss': false, ...(o.baseNode ? { 'base-node': o.baseNode } : {}) });
      await c.waitEvent('BLOCK_JOB_READY', (d: any) => d?.device === jobId, 10_000, { since: mark });
      await c.execute('block-job-complete', { device: jobId });
      await c.waitEvent('BLOCK_JOB_COMPLETED', (d: any) => d?.device === jobId, 10_000, { since: mark });
    });
    await fs.access(o.overlay);

    await provider.merge('alpha', [o]);

    await assert.rejects(fs.access(o.overlay), 'the overlay file is gone');
    await assert.rejects(fs.access(`${o.overlay}.orphaned`), 'nothing kept aside');
    assert.deepEqual(await qmp('alpha', (c) => c.execute('query-jobs')), [], 'the job record was dismissed');
    const read = (await runProgram('qemu-io', ['-U', '-r', '-f', 'qcow2', '-c', 'read -P 0x5c 0 64k', disk.file])).stdout;
    assert.match(read, /read 65536\/65536 bytes/);
    assert.doesNotMatch(read, /Pattern verification failed/, 'the write is in the base');
  });
});
