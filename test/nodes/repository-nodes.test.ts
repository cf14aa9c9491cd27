// The prune, verify and history nodes in Node-RED over a real repository of qcow2 chains (no
// hypervisor is touched: a host node over an empty socket folder): bad settings refused at deploy
// naming the field and through Catch; a dry run and a prune (payload, summary); verify's second
// output only on damage; history's stale VM alert.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { CATCH, helper, nextMessage } from './flow-fixture';
import { buildRepo, nightly, VM } from '../unit/prune/build-repo';

const nodesDir = path.resolve(__dirname, '../../nodes');
const MODULES = ['host', 'prune', 'verify', 'history'].map((n) => require(path.join(nodesDir, n, `${n}.js`)));
const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;

(HAVE ? describe : describe.skip)('prune, verify and history nodes', function () {
  this.timeout(120_000);
  let tmp: string;
  let root: string;
  let ids: string[];
  beforeEach((done) => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-repo-nodes-'));
    fs.mkdirSync(path.join(tmp, 'run'));
    // build-repo's host folder is "lab"
    const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 6), [{ id: 'drive-virtio0', fullAt: () => false }]);
    root = repo.root;
    ids = repo.ids;
    helper.startServer(done);
  });
  afterEach(async () => {
    await helper.unload();
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  const load = (nodes: Record<string, unknown>[]) =>
    helper.load([...MODULES, CATCH], [
      { id: 'f1', type: 'tab', label: 'test' },
      {
        id: 'host',
        type: 'vmbackup-host',
        hostName: 'lab',
        provider: 'qemu',
        socketDir: path.join(tmp, 'run'),
        repository: root,
        journalDir: path.join(tmp, 'journal'),
        freezeTimeout: 10,
      },
      { id: 'catch-all', type: 'catch', z: 'f1', scope: null, uncaught: false, wires: [['caught']] },
      { id: 'caught', type: 'helper', z: 'f1' },
      { id: 'out', type: 'helper', z: 'f1' },
      { id: 'alert', type: 'helper', z: 'f1' },
      ...nodes.map((n) => ({ z: 'f1', host: 'host', wires: [['out'], ['alert']], ...n })),
    ] as never);

  it('prune: a bad rule is refused at deploy and through Catch, naming the field; nothing is removed', async () => {
    await load([{ id: 'p', type: 'vmbackup-prune', keepDaily: '0' }]);
    const caught = nextMessage('caught');
    helper.getNode('p').receive({ payload: 'go' });
    const m = await caught;
    assert.match(m.error.message, /^(Error: )?keepDaily: /);
    assert.equal(m.summary.ok, false);
    assert.equal(fs.readdirSync(path.join(root, 'lab', VM)).length, 6);
  });

  it('prune: a dry run reports what would go, then the prune removes it; payload and summary', async () => {
    await load([
      { id: 'dry', type: 'vmbackup-prune', keepLast: '2', dryRun: true, wires: [['out']] },
      { id: 'p', type: 'vmbackup-prune', keepLast: 2, wires: [['out']] },
    ]);
    let out = nextMessage('out');
    helper.getNode('dry').receive({ payload: 'go' });
    let m = await out;
    assert.equal(m.summary.ok, true);
    assert.equal(m.summary.dryRun, true);
    assert.equal(m.summary.removed, 4);
    assert.equal(fs.readdirSync(path.join(root, 'lab', VM)).length, 6, 'nothing removed by the dry run');
    out = nextMessage('out');
    // a backup set's VMs: only those are pruned
    helper.getNode('p').receive({ payload: { stage: 'copied', vms: [{ id: VM }] } });
    m = await out;
    assert.equal(m.summary.removed, 4);
    assert.equal(m.summary.merged, 1);
    assert.deepEqual(m.payload.vms[0].kept.sort(), ids.slice(4));
    assert.deepEqual(fs.readdirSync(path.join(root, 'lab', VM)).sort(), ids.slice(4));
    assert.match(m.summary.text, /removed 4 backups/);
  });

  it('verify: clean -> first output only; damage -> both outputs, naming the backup', async () => {
    await load([{ id: 'v', type: 'vmbackup-verify', select: 'all', proof: 'none' }]);
    const out = nextMessage('out');
    helper.getNode('v').receive({ payload: 'go' });
    const m = await out;
    assert.equal(m.summary.ok, true, m.summary.text);
    assert.equal(m.payload.verified, 6);
    assert.ok(fs.existsSync(path.join(root, 'lab', VM, ids[3], 'verify.json')));
    // damage in the middle
    fs.appendFileSync(path.join(root, 'lab', VM, ids[3], 'definition.json'), ' ');
    const out2 = nextMessage('out');
    const alert = nextMessage('alert');
    helper.getNode('v').receive({ payload: 'go' });
    const [m2, a] = await Promise.all([out2, alert]);
    assert.equal(m2.summary.ok, false);
    assert.equal(a.summary.failed, 3);
    assert.ok(a.summary.failures.some((f: { backupId: string }) => f.backupId === ids[3]));
    assert.match(a.summary.text, /FAILED/);
  });

  it('verify: a bad setting is refused naming the field', async () => {
    await load([{ id: 'v', type: 'vmbackup-verify', select: 'some' }]);
    const caught = nextMessage('caught');
    helper.getNode('v').receive({ payload: 'go' });
    assert.match((await caught).error.message, /^(Error: )?select: /);
  });

  it('history: per VM backups and their verify; a VM with no recent backup on the alert output', async () => {
    await load([{ id: 'h', type: 'vmbackup-history', staleHours: 26 }]);
    const out = nextMessage('out');
    const alert = nextMessage('alert');
    // the newest backup is from 2026-11-07: long ago
    helper.getNode('h').receive({ payload: 'go', vms: [VM, 'vm-never'] });
    const [m, a] = await Promise.all([out, alert]);
    const vm = m.payload.vms.find((v: { vm: string }) => v.vm === VM);
    assert.equal(vm.count, 6);
    assert.equal(vm.backups[0].backupId, ids[5]);
    assert.equal(vm.backups[0].mode, 'incremental');
    assert.equal(vm.backups[0].depth, 5);
    assert.equal(vm.stale, true);
    assert.deepEqual(
      a.summary.stale.map((s: { vm: string }) => s.vm),
      [VM, 'vm-never'],
    );
    assert.match(a.summary.text, /NO BACKUP of vm-never published in 26 h \(none at all\)/);
  });
});
