// The real pipeline in Node-RED on the lab VMs (real guests, real agents, real workloads),
// proven by reading the backups: consistency claims are checked against the images.
import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { GuestAgentClient, QmpClient } from '../../src/providers/qemu/protocol';
import { overlaysUnder } from '../support/bare-vms';
import { assertGraphClean } from '../support/graph';
import { inspectImage } from '../support/image-check';
import { LAB, LAB_VMS as VMS, labBackupSuite, runLabBackup } from '../support/lab-backup';

async function qmp<T>(vm: string, command: string): Promise<T> {
  const c = await QmpClient.connect(path.join(LAB, 'run', `${vm}.qmp`));
  try {
    return await c.execute<T>(command);
  } finally {
    await c.close();
  }
}

async function freezeStatus(vm: string): Promise<string> {
  const c = await GuestAgentClient.connect(path.join(LAB, 'run', `${vm}.qga`));
  try {
    return await c.execute<string>('guest-fsfreeze-status');
  } finally {
    await c.close();
  }
}

/**
 * After every run: no fleecing image anywhere, every VM running with nothing of ours in its block
 * graph as QEMU shows it (at most the newest backup's bitmap per disk), no guest frozen.
 */
async function assertVmsUnharmed(): Promise<void> {
  assert.deepEqual(await overlaysUnder(path.join(LAB, 'images')), [], 'no fleecing image left');
  for (const vm of VMS) {
    assert.equal((await qmp<{ status: string }>(vm, 'query-status')).status, 'running', `${vm} runs`);
    await assertGraphClean(path.join(LAB, 'run', `${vm}.qmp`), vm);
  }
  for (const vm of ['vm-agent', 'vm-passthrough']) assert.equal(await freezeStatus(vm), 'thawed', `${vm} thawed`);
}

describe('backups of the lab VMs through Node-RED', function () {
  this.timeout(600_000);
  const lab = labBackupSuite('');

  it('checkpoint policy: online VMs application-consistent (proven from the image), the agentless VM crash-consistent, the NBD disk backed up', async () => {
    const msg = await runLabBackup(lab, 'checkpoint');
    // The set ended: its QMP sockets are given back at once (each serves one client at a time),
    // not when the provider's idle connections time out (3 s).
    const t0 = Date.now();
    for (const vm of VMS) await qmp(vm, 'query-status');
    assert.ok(Date.now() - t0 < 1500, `QMP of the backed-up VMs answered another client after ${Date.now() - t0} ms`);
    const byId = new Map<string, any>(msg.payload.vms.map((vm: any) => [vm.id, vm]));
    assert.deepEqual(
      VMS.map((id) => [id, byId.get(id)?.method, byId.get(id)?.consistency]),
      [
        ['vm-agent', 'child-vm-snapshot', 'application'],
        ['vm-noagent', 'checkpoint', 'crash'],
        ['vm-passthrough', 'child-vm-snapshot', 'application'],
      ],
    );
    assert.ok(byId.get('vm-noagent').reasons.some((r: any) => r.rule === 'integration-service' && !r.ok));

    for (const id of VMS) {
      const dir = path.join(lab.repository, byId.get(id).copy.path);
      const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
      for (const f of manifest.files) {
        const sha = createHash('sha256')
          .update(readFileSync(path.join(dir, f.name)))
          .digest('hex');
        assert.equal(sha, f.sha256, `${id}/${f.name} sha256`);
      }
      const data = manifest.files.find((f: any) => f.disk === 'drive-virtio0');
      const facts = inspectImage(path.join(dir, data.name));
      if (manifest.consistency === 'application') {
        assert.equal(facts.needsRecovery, false, `${id}: application-consistent image must not need journal recovery`);
        assert.equal(facts.e2fsckExit, 0, `${id}: e2fsck -fn clean`);
        assert.ok(facts.records.ok, `${id}: records whole: ${facts.records.errors.join('; ')}`);
        assert.equal(facts.records.tornTail, false, `${id}: no torn record in a frozen image`);
      } else {
        // the label is honest: the image is what a crash leaves (journal not replayed)
        assert.equal(manifest.consistency, 'crash');
        assert.equal(facts.needsRecovery, true, `${id}: a crash-consistent ext4 image still needs recovery`);
      }
      assert.ok(facts.records.records > 0, `${id}: the workload's records are in the backup`);
    }
    // the NBD disk (a protocol driver, as Ceph RBD or iSCSI) is backed up like the image file
    const pt = JSON.parse(readFileSync(path.join(lab.repository, byId.get('vm-passthrough').copy.path, 'manifest.json'), 'utf8'));
    assert.deepEqual(pt.excludedDisks, []);
    assert.deepEqual(
      pt.files.filter((f: any) => f.kind === 'disk').map((f: any) => f.disk),
      ['drive-virtio0', 'drive-virtio1'],
      'both disks are copied',
    );
    assert.ok(msg.payload.vms.every((vm: any) => vm.snapshot.frozenMs === undefined || vm.snapshot.frozenMs < 10_000));
    await assertVmsUnharmed();
  });

  it('saved-state policy: the agentless VM is saved, returned to running, its state copied', async () => {
    const msg = await runLabBackup(lab, 'saved-state');
    const vm = msg.payload.vms.find((v: any) => v.id === 'vm-noagent');
    assert.equal(vm.method, 'saved-state');
    assert.equal(vm.prepare.action, 'save');
    assert.equal(vm.postSnapshot.resumed, true);
    assert.equal(vm.postSnapshot.returnedTo, 'running');
    assert.ok(vm.postSnapshot.downtimeMs > 0);
    const dir = path.join(lab.repository, vm.copy.path);
    const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    const state = manifest.files.find((f: any) => f.kind === 'saved-state');
    assert.ok(state && state.bytes > 1 << 20, 'saved state holds the guest memory');
    assert.equal(manifest.downtimeMs, vm.postSnapshot.downtimeMs);
    await assertVmsUnharmed();
  });
});
