// Incremental chains on the lab guests, through Node-RED, with their workloads running (real
// guests, real qemu-ga, real freezes): a full and three incrementals; every point, flattened by
// stock qemu-img from its chain, is proven from the image: an application-consistent point is clean
// ext4 with every record whole and contiguous, a crash-consistent one is what a crash leaves, and
// each point holds more of the workload's records than the one before (what was written between
// two backups is in the later point, not the earlier).
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { chainTarget, recordName } from '../../src/pipeline/chain-plan';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { runProgram } from '../../src/util/run';
import { inspectImage } from '../support/image-check';
import { verifyRepository } from '../../src/verify';
import { LAB, LAB_VMS as VMS, labBackupSuite, runLabBackup } from '../support/lab-backup';

async function ourNodes(vm: string): Promise<{ nodes: string[]; bitmaps: string[] }> {
  const c = await QmpClient.connect(path.join(LAB, 'run', `${vm}.qmp`));
  try {
    const nodes = await c.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>('query-named-block-nodes', {
      flat: true,
    });
    return {
      nodes: nodes.map((n) => n['node-name']).filter((n) => n.startsWith('vmb-')),
      bitmaps: nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name ?? '')).filter((n) => n.startsWith('vmbackup-')),
    };
  } finally {
    await c.close();
  }
}

describe('incremental chains of the lab guests through Node-RED (workloads running)', function () {
  this.timeout(900_000);
  const lab = labBackupSuite('inc-');

  it('a full and three incrementals: every point flattened is consistent as labelled and holds more records than the last', async () => {
    const points: { vm: string; backupId: string; consistency: string; file: string; chain: any; bytes: number }[][] = [];
    for (let i = 0; i < 4; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 3000)); // the workloads write meanwhile
      const msg = await runLabBackup(lab);
      const row = [];
      for (const id of VMS) {
        const vm = msg.payload.vms.find((v: any) => v.id === id);
        const dir = path.join(lab.repository, vm.copy.path);
        const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
        const disk = manifest.files.find((f: any) => f.disk === 'drive-virtio0');
        row.push({
          vm: id,
          backupId: msg.payload.backupId,
          consistency: manifest.consistency,
          file: path.join(dir, disk.name),
          chain: disk.chain,
          bytes: disk.bytes,
        });
        const left = await ourNodes(id);
        assert.deepEqual(left.nodes, [], `${id}: QEMU shows no node of ours after backup ${i}`);
        // one record per disk of this chain (this repository and host name): the lab's guests also
        // carry the records of other tests' repositories, each its own chain, never touched here
        const chain = `vmbackup-${chainTarget(lab.repository, 'lab')}-`;
        const mine = left.bitmaps.filter((b) => b.startsWith(chain));
        assert.deepEqual(
          [...new Set(mine)],
          [recordName(chainTarget(lab.repository, 'lab'), msg.payload.backupId)],
          `${id}: this backup's record is the chain's only one (${left.bitmaps})`,
        );
        assert.equal(mine.length, vm.disks.filter((d: any) => d.included).length, `${id}: one tracking record per disk`);
      }
      points.push(row);
    }
    const lastRecords = new Map<string, number>();
    for (const [i, row] of points.entries()) {
      for (const p of row) {
        if (i === 0) {
          assert.equal(p.chain.mode, 'full', `${p.vm}: the first backup is a full`);
          assert.equal(p.chain.reason, 'first-backup');
        } else {
          assert.equal(p.chain.mode, 'incremental', `${p.vm} point ${i}: ${p.chain.reason} ${p.chain.detail}`);
          assert.equal(p.chain.parent, points[i - 1].find((q) => q.vm === p.vm)!.backupId);
          assert.equal(p.chain.depth, i);
          const chain = JSON.parse((await runProgram('qemu-img', ['info', '-U', '--output=json', '--backing-chain', p.file])).stdout);
          assert.equal(chain.length, i + 1, `${p.vm} point ${i}: a chain of ${i + 1} images`);
          assert.ok(p.bytes < points[0].find((q) => q.vm === p.vm)!.bytes, `${p.vm} point ${i}: the incremental is smaller than the full`);
        }
        const facts = inspectImage(p.file); // qemu-img convert flattens the chain
        if (p.consistency === 'application') {
          assert.equal(facts.needsRecovery, false, `${p.vm} point ${i}: application-consistent, no journal recovery needed`);
          assert.equal(facts.e2fsckExit, 0, `${p.vm} point ${i}: e2fsck -fn clean`);
          assert.ok(facts.records.ok, `${p.vm} point ${i}: records whole and contiguous: ${facts.records.errors.join('; ')}`);
          assert.equal(facts.records.tornTail, false);
        } else {
          assert.equal(p.consistency, 'crash');
        }
        const before = lastRecords.get(p.vm) ?? 0;
        assert.ok(
          facts.records.records > before,
          `${p.vm} point ${i}: ${facts.records.records} records, more than ${before} at the point before`,
        );
        lastRecords.set(p.vm, facts.records.records);
      }
    }
    // every point verifies with the product's own verifier (the whole chain)
    const report = await verifyRepository(lab.repository);
    assert.ok(report.ok, JSON.stringify([report.problems, report.backups.filter((b) => !b.ok)]).slice(0, 2000));
  });
});
