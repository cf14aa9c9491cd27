// A VM that was paused before the backup, with the saved-state fallback: after `migrate` QEMU 7.2
// keeps a VM that was not running in postmigrate with its images inactive, which only `cont`
// (running the guest) undoes. So classify gives it a checkpoint instead, and the VM ends exactly
// as it was: paused, on its own image (asked of QEMU, not of the file system).
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { overlaysUnder, startBareHost, type BareHost } from '../support/bare-vms';
import { CATCH, helper, nextMessage, NODE_MODULES, pipelineFlow } from './flow-fixture';

async function qmp<T>(host: BareHost, id: string, command: string): Promise<T> {
  const c = await QmpClient.connect(path.join(host.socketDir, `${id}.qmp`));
  try {
    return await c.execute<T>(command);
  } finally {
    await c.close();
  }
}

describe('a paused VM with the saved-state fallback (real QEMU, no guest OS)', function () {
  this.timeout(60_000);
  let host: BareHost;
  let journalDir: string;

  before(async () => {
    host = await startBareHost(['pz', 'run1']);
    journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-journal-'));
  });
  after(async () => {
    await host?.stop();
    await fs.rm(journalDir, { recursive: true, force: true });
  });
  beforeEach((done) => {
    helper.startServer(done);
  });
  afterEach(async () => {
    await helper.unload();
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
  });

  it('gets a checkpoint with the reason, is published, and stays paused on its own image', async () => {
    await qmp(host, 'pz', 'stop');
    try {
      await helper.load(
        [...NODE_MODULES, CATCH],
        pipelineFlow({ socketDir: host.socketDir, repository: host.repository, journalDir, fallback: 'saved-state' }) as any,
      );
      const done = nextMessage('out-copy');
      helper.getNode('enumerate').receive({ payload: '' });
      const msg = await done;
      const byId = new Map(msg.payload.vms.map((vm: any) => [vm.id, vm]));
      const pz: any = byId.get('pz');
      const run1: any = byId.get('run1');
      assert.deepEqual([pz.method, pz.consistency, pz.prepare.action], ['checkpoint', 'crash', 'none']);
      assert.match(pz.warnings.join('\n'), /saved-state not used: the VM is paused, not running/);
      assert.equal(pz.postSnapshot.returnedTo, 'paused');
      assert.equal(run1.method, 'saved-state', 'a running VM still gets the policy');
      assert.equal(msg.summary.ok, true);
      assert.match(msg.summary.vmState.text, /pz: paused/);
      // QEMU says: still paused, and on its own image again
      assert.equal((await qmp<{ status: string }>(host, 'pz', 'query-status')).status, 'paused');
      const block = await qmp<{ inserted?: { file: string; backing_file_depth?: number } }[]>(host, 'pz', 'query-block');
      assert.equal(block[0].inserted?.file, path.join(host.imageDir, 'pz-disk0.qcow2'));
      assert.equal(block[0].inserted?.backing_file_depth ?? 0, 0);
      assert.equal((await qmp<{ status: string }>(host, 'run1', 'query-status')).status, 'running');
      assert.deepEqual(await overlaysUnder(host.imageDir), []);
    } finally {
      await qmp(host, 'pz', 'cont');
    }
  });
});
