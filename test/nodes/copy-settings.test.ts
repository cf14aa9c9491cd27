// The copy node's chain settings in Node-RED: a bad `mode` or `fullEvery` is refused before any
// input is looked at, through Catch, with the field named; good ones (and flows made before the
// settings existed) deploy without an error status. No hypervisor is touched: the refusal comes first.
import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CATCH, helper, NODE_MODULES, nextMessage } from './flow-fixture';

describe('copy node: mode and fullEvery', function () {
  this.timeout(20_000);
  let tmp: string;
  before(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-copy-settings-'));
  });
  after(() => rmSync(tmp, { recursive: true, force: true }));
  beforeEach((done) => {
    helper.startServer(done);
  });
  afterEach(async () => {
    await helper.unload();
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
  });

  const load = (copy: Record<string, unknown>) =>
    helper.load([...NODE_MODULES, CATCH], [
      { id: 'f1', type: 'tab', label: 'test' },
      {
        id: 'host',
        type: 'vmbackup-host',
        hostName: 'testhost',
        provider: 'qemu',
        socketDir: path.join(tmp, 'run'),
        repository: path.join(tmp, 'repo'),
        journalDir: path.join(tmp, 'journal'),
        freezeTimeout: 10,
      },
      {
        id: 'copy',
        type: 'vmbackup-copy',
        z: 'f1',
        host: 'host',
        compress: false,
        concurrency: 2,
        progressInterval: 250,
        ...copy,
        wires: [['out'], []],
      },
      { id: 'out', type: 'helper', z: 'f1' },
      { id: 'catch-all', type: 'catch', z: 'f1', scope: null, uncaught: false, wires: [['caught']] },
      { id: 'caught', type: 'helper', z: 'f1' },
    ] as any);

  for (const [setting, value, pattern] of [
    ['mode', 'sometimes', /mode: "sometimes" must be "incremental" or "full"$/],
    ['fullEvery', '7w', /fullEvery: "7w" must be empty \(never\), a count of backups/],
    ['fullEvery', 0, /fullEvery: 0 must be empty/],
  ] as const) {
    it(`refuses ${setting} ${JSON.stringify(value)} naming the field`, async () => {
      await load({ [setting]: value });
      const caught = nextMessage('caught');
      helper.getNode('copy').receive({ payload: { stage: 'post-snapshot' } });
      assert.match((await caught).error.message, pattern);
    });
  }

  it('takes good settings, and flows made before them: the input is refused by its schema, not by the settings', async () => {
    for (const copy of [{ mode: 'full', fullEvery: '' }, { mode: 'incremental', fullEvery: '7d' }, { fullEvery: 14 }, {}]) {
      await load(copy);
      // a malformed input is refused by the schema, not by the settings: the settings passed
      const caught = nextMessage('caught');
      helper.getNode('copy').receive({ payload: { stage: 'post-snapshot' } });
      const message = (await caught).error.message as string;
      assert.match(message, /msg\.payload: /, JSON.stringify(copy));
      assert.doesNotMatch(message, /mode|fullEvery/);
      await helper.unload();
    }
  });
});
