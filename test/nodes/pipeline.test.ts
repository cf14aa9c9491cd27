// The six pipeline nodes in Node-RED (node-red-node-test-helper) against real QEMU processes
// without a guest OS: a working flow, bad input refused with a pointer and no side effect,
// Catch routing, stages out of order, all-or-nothing.
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { overlaysUnder, startBareHost, type BareHost } from '../support/bare-vms';
import { assertGraphClean } from '../support/graph';
import { CATCH, expectRefusal, helper, nextMessage, NODE_MODULES, pipelineFlow, type FlowOptions } from './flow-fixture';

async function vmStatus(host: BareHost, id: string): Promise<string> {
  const c = await QmpClient.connect(path.join(host.socketDir, `${id}.qmp`));
  try {
    return (await c.execute<{ status: string }>('query-status')).status;
  } finally {
    await c.close();
  }
}

async function listRepository(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

describe('pipeline nodes (real QEMU, no guest OS)', function () {
  this.timeout(60_000);
  let host: BareHost;
  let journalDir: string;

  before(async () => {
    host = await startBareHost(['alpha', 'beta']);
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
    // no test may leave a view of ours in a VM (as QEMU shows it), a fleecing image, or a VM stopped
    assert.deepEqual(await overlaysUnder(host.imageDir), []);
    for (const id of ['alpha', 'beta']) {
      assert.equal(await vmStatus(host, id), 'running');
      await assertGraphClean(path.join(host.socketDir, `${id}.qmp`), id);
    }
  });

  let loads = 0;
  // each test deploys a host node of its own: a set one test leaves in flight is not reported to the next
  const load = (extra: Partial<FlowOptions> = {}) =>
    helper.load(
      [...NODE_MODULES, CATCH],
      pipelineFlow({ socketDir: host.socketDir, repository: host.repository, journalDir, hostId: `host-${++loads}`, ...extra }) as any,
    );

  it('backs up every VM through the whole flow and publishes a manifest per VM', async () => {
    await load();
    const done = nextMessage('out-copy');
    const progress = nextMessage('progress');
    helper.getNode('enumerate').receive({ payload: 'go' });
    const msg = await done;
    assert.equal(msg.payload.stage, 'copied');
    assert.deepEqual(
      msg.payload.vms.map((vm: any) => [vm.id, vm.method, vm.consistency]),
      [
        ['alpha', 'checkpoint', 'crash'],
        ['beta', 'checkpoint', 'crash'],
      ],
    );
    assert.equal(msg.summary.ok, true);
    assert.match(msg.summary.text, /2 VM\(s\)/);
    const p = await progress;
    assert.equal(p.payload.backupId, msg.payload.backupId);
    assert.ok(p.payload.percent >= 0 && p.payload.percent <= 100);
    for (const vm of msg.payload.vms) {
      const dir = path.join(host.repository, vm.copy.path);
      const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
      assert.equal(manifest.vm, vm.id);
      assert.equal(manifest.consistency, 'crash');
      assert.deepEqual(manifest.files.map((f: any) => f.kind).sort(), ['definition', 'disk']);
      assert.equal(vm.copy.released, true);
    }
    assert.ok(!(await listRepository(host.repository)).some((e) => e.includes('.partial-')), 'no staging directory left');
  });

  it('takes the saved-state fallback: VMs stopped in prepare, running again after post-snapshot', async () => {
    await load({ fallback: 'saved-state' });
    const prepared = nextMessage('out-prepare');
    const done = nextMessage('out-copy');
    helper.getNode('enumerate').receive({ payload: '' });
    const p = await prepared;
    assert.deepEqual(
      p.payload.vms.map((vm: any) => vm.prepare.action),
      ['save', 'save'],
    );
    const msg = await done;
    for (const vm of msg.payload.vms) {
      assert.equal(vm.postSnapshot.resumed, true);
      assert.equal(vm.postSnapshot.returnedTo, 'running');
      const files = await fs.readdir(path.join(host.repository, vm.copy.path));
      assert.ok(files.includes('state.vmstate'), `saved state copied for ${vm.id}`);
    }
  });

  it('refuses with policy "fail" when a VM cannot be backed up online, before any side effect', async () => {
    await load({ fallback: 'fail' });
    const caught = nextMessage('caught');
    helper.getNode('enumerate').receive({ payload: '' });
    const msg = await caught;
    assert.match(msg.error.message, /fallback policy is "fail".*alpha \(integration-service/);
    assert.equal(msg.summary.ok, false);
  });

  describe('bad input', () => {
    let enumerated: any;
    beforeEach(async () => {
      await load({ wired: false });
      const out = nextMessage('out-enumerate');
      helper.getNode('enumerate').receive({ payload: null });
      enumerated = (await out).payload;
    });

    const cases: [string, string, (set: any) => unknown, RegExp][] = [
      ['classify', 'a non-object payload', () => 'hello', /msg\.payload: \/ must be a backup-set object/],
      ['classify', 'an array payload', () => [1, 2], /msg\.payload: \/ must be a backup-set object/],
      [
        'classify',
        'a missing field',
        (s) => ({ ...s, vms: [{ ...s.vms[0], disks: undefined }] }),
        /\/vms\/0 must have required property 'disks'/,
      ],
      [
        'classify',
        'a wrong type',
        (s) => ({ ...s, vms: [{ ...s.vms[0], agent: { ...s.vms[0].agent, present: 'yes' } }] }),
        /\/vms\/0\/agent\/present must be boolean/,
      ],
      ['classify', 'an unknown property', (s) => ({ ...s, extra: 1 }), /additionalProperties: extra/],
      [
        'classify',
        'a VM id with a path separator',
        (s) => ({ ...s, vms: [{ ...s.vms[0], id: '../etc' }] }),
        /\/vms\/0\/id must match pattern/,
      ],
      ['classify', 'a malformed backup id', (s) => ({ ...s, backupId: '../../x' }), /\/backupId must match pattern/],
      [
        'classify',
        'an unknown backup id',
        (s) => ({ ...s, backupId: '20000101T000000Z-aaaaaa' }),
        /\/backupId: backup set 20000101T000000Z-aaaaaa is not live/,
      ],
      ['classify', 'a duplicate VM id', (s) => ({ ...s, vms: [s.vms[0], s.vms[0]] }), /\/vms\/1\/id: duplicate VM id "alpha"/],
      [
        'classify',
        'a VM not in the set',
        (s) => ({ ...s, vms: [{ ...s.vms[0], id: 'gamma' }] }),
        /\/vms\/0\/id: VM "gamma" is not part of backup set/,
      ],
      ['prepare', 'a set at the wrong stage', (s) => s, /\/stage is "enumerated" but this node takes a backup set at stage "classified"/],
      ['snapshot', 'a set at the wrong stage', (s) => s, /\/stage is "enumerated" but this node takes a backup set at stage "prepared"/],
      ['post-snapshot', 'a set at the wrong stage', (s) => s, /\/stage is "enumerated".*"snapshotted"/],
      ['copy', 'a set at the wrong stage', (s) => s, /\/stage is "enumerated".*"post-snapshot"/],
      [
        'copy',
        'an absurd number',
        (s) => ({ ...s, stage: 'post-snapshot', timings: { enumerate: { startedAt: s.createdAt, ms: -1 } } }),
        /must have required property|must be >= 0/,
      ],
    ];
    for (const [node, what, mutate, pattern] of cases) {
      it(`${node} refuses ${what} with a pointer, through Catch, and does nothing`, async () => {
        const before = await listRepository(host.repository);
        const msg = await expectRefusal(node, mutate(structuredClone(enumerated)));
        assert.match(msg.error.message, pattern);
        assert.equal(msg.summary.ok, false);
        assert.deepEqual(await listRepository(host.repository), before);
      });
    }

    it('refuses a stage that runs twice (a replayed message)', async () => {
      const classified = nextMessage('out-classify');
      helper.getNode('classify').receive({ payload: enumerated });
      await classified;
      const msg = await expectRefusal('classify', enumerated);
      assert.match(msg.error.message, /\/stage: backup set .* is at stage "classified" on the host, not "enumerated"/);
    });

    it('refuses dropping a VM after classify', async () => {
      const out = nextMessage('out-classify');
      helper.getNode('classify').receive({ payload: enumerated });
      const classified = (await out).payload;
      const msg = await expectRefusal('prepare', { ...classified, vms: classified.vms.slice(0, 1) });
      assert.match(msg.error.message, /\/vms: VM\(s\) beta .* are missing from the message/);
    });
  });

  describe('settings', () => {
    it('names the field of a bad host setting and does nothing', async () => {
      await load({ hostExtra: { repository: 'relative/path' } });
      const caught = nextMessage('caught');
      helper.getNode('enumerate').receive({ payload: '' });
      assert.match((await caught).error.message, /repository: "relative\/path" must be an absolute path/);
    });

    it('names the field of a bad node setting', async () => {
      await load({ fallback: 'sometimes' });
      const enumerated = nextMessage('out-enumerate');
      helper.getNode('enumerate').receive({ payload: '' });
      const set = (await enumerated).payload;
      const caught = nextMessage('caught');
      // the classify node itself refuses: its fallback is not a policy
      const msg = await caught;
      assert.match(msg.error.message, /fallback: "sometimes" is not one of checkpoint, saved-state, fail/);
      assert.equal(set.stage, 'enumerated');
    });
  });

  it("all-or-nothing: one VM failing its snapshot releases the others' views and publishes nothing", async () => {
    await load({ wired: false });
    const send = async (node: string, payload: unknown) => {
      const out = nextMessage(`out-${node}`);
      helper.getNode(node).receive({ payload });
      return (await out).payload;
    };
    const enumerated = await send('enumerate', '');
    const classified = await send('classify', enumerated);
    const prepared = await send('prepare', classified);
    // beta's view is armed; take its copy-before-write filter away behind our back (another QMP
    // client), so that beta's device cannot be switched onto it at the moment
    const cbwNode: string = prepared.vms.find((v: any) => v.id === 'beta').prepare.view.ref.disks[0].cbwNode;
    const c = await QmpClient.connect(path.join(host.socketDir, 'beta.qmp'));
    try {
      await c.execute('blockdev-del', { 'node-name': cbwNode });
    } finally {
      await c.close();
    }
    const msg = await expectRefusal('snapshot', prepared);
    assert.match(msg.error.message, /no VM backed up: beta: /);
    assert.doesNotMatch(msg.error.message, /alpha:/);
    // whatever of alpha's view was made is taken out again: QEMU shows nothing of ours in either VM
    for (const id of ['alpha', 'beta']) await assertGraphClean(path.join(host.socketDir, `${id}.qmp`), id);
    assert.deepEqual(await overlaysUnder(host.imageDir), []);
    assert.ok(!(await listRepository(host.repository)).some((e) => e.includes(prepared.backupId)), 'nothing of this set in the repository');
    // the set is over: its next stage is refused
    const again = await expectRefusal('snapshot', prepared);
    assert.match(again.error.message, /not live|aborted/);
  });
});
