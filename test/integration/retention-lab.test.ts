// Retention, verify and chain trust on real backups of the lab guests, through Node-RED (real
// QEMU, real qemu-ga freezes, the workloads writing): three backups make a full and two
// incrementals of each VM; the verify job passes them all and proves the application-consistent
// ones clean from their images (ext4 without needs_recovery, e2fsck -fn); a byte of vm-agent's
// full then rots on the medium (no metadata change: the nightly identity check cannot see it);
// the next verify finds it, and the next backup of vm-agent is a full with reason parent-invalid
// naming the rotted link, while the other VMs stay incremental; a prune keeping the last backup of
// vm-noagent merges its chain into it, and that point then verifies and flattens to the same bytes.
import * as assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pruneVm } from '../../src/prune';
import { runProgram } from '../../src/util/run';
import { runVerifyJob } from '../../src/verify';
import { labBackupSuite, runLabBackup } from '../support/lab-backup';
import { flipByte } from '../unit/prune/build-repo';

const diskOf = (repository: string, msg: any, vm: string) => {
  const dir = path.join(repository, msg.payload.vms.find((v: any) => v.id === vm).copy.path);
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  const disk = manifest.files.find((f: any) => f.disk === 'drive-virtio0');
  return { dir, file: path.join(dir, disk.name), chain: disk.chain, consistency: manifest.consistency as string };
};

async function flatSha(file: string): Promise<string> {
  const raw = path.join(os.tmpdir(), `vmb-retention-${process.pid}.raw`);
  try {
    await runProgram('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw]);
    return (await runProgram('sha256sum', [raw])).stdout.split(' ')[0];
  } finally {
    fs.rmSync(raw, { force: true });
  }
}

describe('retention, verify and chain trust on the lab guests', function () {
  this.timeout(1_200_000);
  const lab = labBackupSuite('retention-');

  it('verify proves the labels, finds a rotted link, the next backup will not stack on it; a prune keeps every kept point restorable', async () => {
    const runs = [];
    for (let i = 0; i < 3; i++) {
      if (i > 0) await new Promise((r) => setTimeout(r, 2000));
      runs.push(await runLabBackup(lab));
    }
    for (const vm of ['vm-agent', 'vm-noagent']) {
      assert.equal(diskOf(lab.repository, runs[0], vm).chain.mode, 'full');
      assert.equal(
        diskOf(lab.repository, runs[2], vm).chain.mode,
        'incremental',
        `${vm}: trusted by identity, the third backup is incremental`,
      );
      assert.ok(fs.existsSync(path.join(diskOf(lab.repository, runs[2], vm).dir, 'identity.json')), 'identity recorded at publish');
    }

    // every backup verifies; the application-consistent ones are proven clean from the image
    const first = await runVerifyJob(lab.repository);
    assert.ok(first.ok, JSON.stringify(first.backups.filter((b) => !b.ok).map((b) => b.problems)).slice(0, 2000));
    const agent = first.backups.filter((b) => b.vm === 'vm-agent');
    assert.equal(agent.length, 3);
    for (const b of agent) {
      const fsProof = b.proof?.[0]?.filesystems[0];
      assert.equal(fsProof?.type, 'ext', JSON.stringify(b.proof));
      assert.equal(fsProof?.state, 'clean', fsProof?.detail);
    }

    // a byte of vm-agent's full rots (times put back: no metadata changes)
    const full = diskOf(lab.repository, runs[0], 'vm-agent').file;
    flipByte(full, Math.floor(fs.statSync(full).size / 2), true);

    const second = await runVerifyJob(lab.repository, { proof: 'none' });
    assert.equal(second.failed, 3, 'the rotted full and both incrementals on it');
    assert.ok(second.backups.filter((x) => !x.ok).every((x) => x.vm === 'vm-agent'));

    const next = await runLabBackup(lab);
    const agentNext = diskOf(lab.repository, next, 'vm-agent');
    assert.equal(agentNext.chain.mode, 'full', JSON.stringify(agentNext.chain));
    assert.equal(agentNext.chain.reason, 'parent-invalid');
    assert.ok(agentNext.chain.detail.includes(runs[0].payload.backupId), agentNext.chain.detail);
    assert.equal(diskOf(lab.repository, next, 'vm-noagent').chain.mode, 'incremental');

    // prune vm-noagent to its last backup: its chain merged into it, it stays what it was
    const keep = diskOf(lab.repository, next, 'vm-noagent');
    const before = await flatSha(keep.file);
    const pruned = await pruneVm('vm-noagent', { root: lab.repository, host: 'lab', rules: { keepLast: 1 } });
    assert.ok(pruned.ok, pruned.error);
    assert.equal(pruned.removed.length, 3);
    assert.deepEqual(
      pruned.merged.map((m) => m.becameFull),
      [true],
    );
    const after = await runVerifyJob(path.join(lab.repository, 'lab', 'vm-noagent'), { proof: 'all' });
    assert.ok(after.ok && after.verified === 1, JSON.stringify(after.backups.map((x) => x.problems)));
    assert.equal(await flatSha(keep.file), before, 'the kept point flattens to the same bytes');
    // and the next backup of vm-noagent stacks on the merged point, trusted by its new identity
    const last = await runLabBackup(lab);
    const noagent = diskOf(lab.repository, last, 'vm-noagent');
    assert.equal(noagent.chain.mode, 'incremental', JSON.stringify(noagent.chain));
    assert.equal(noagent.chain.parent, next.payload.backupId);
    assert.equal(noagent.chain.depth, 1);
  });
});
