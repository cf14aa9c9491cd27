// Every example flow in examples/ runs unchanged on the libvirt provider: each file is loaded into
// a real Node-RED (the test helper, with Node-RED's own core nodes) with only its host config
// node changed (provider libvirt, a repository and journal folder of this test), triggered at its
// inject node, and its outcome checked at its own nodes against the lab's real libvirtd and
// domains; libvirt's own view is asked of libvirt after each.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { domainImage, LIBVIRT_DOMAINS } from '../../lab/libvirt-lab';
import { helper, NODE_MODULES } from '../nodes/flow-fixture';
import { assertLibvirtView, libvirtLabForSuite } from '../support/libvirt-view';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const NAMES = LIBVIRT_DOMAINS.map((d) => d.name);
const [AGENT, NOAGENT, OFF] = NAMES;
const EXAMPLES = path.resolve(__dirname, '../../../examples');
const core = (f: string) => require(require.resolve(`@node-red/nodes/core/${f}`));
// the core node types the examples use, as Node-RED itself loads them
const CORE = [
  'common/20-inject.js',
  'common/21-debug.js',
  'common/25-catch.js',
  'common/90-comment.js',
  'function/10-function.js',
  'function/15-change.js',
  'function/80-template.js',
  'network/10-mqtt.js',
  'network/21-httprequest.js',
].map(core);

type FlowNode = Record<string, any> & { id: string; type: string };

function example(name: string): FlowNode[] {
  return JSON.parse(readFileSync(path.join(EXAMPLES, `${name}.json`), 'utf8')) as FlowNode[];
}

/** The only edit: the host config node to provider libvirt (and folders of this test). */
function onLibvirt(flow: FlowNode[], host: Record<string, unknown>): FlowNode[] {
  const hosts = flow.filter((n) => n.type === 'vmbackup-host');
  assert.equal(hosts.length, 1, 'one host config node per example');
  return flow.map((n) => (n.type === 'vmbackup-host' ? { ...n, provider: 'libvirt', libvirtUri: 'qemu:///system', ...host } : n));
}

const byName = (flow: FlowNode[], type: string, name?: string) => {
  const n = flow.find((x) => x.type === type && (name === undefined || x.name === name));
  assert.ok(n, `the example has a ${type} node${name ? ` "${name}"` : ''}`);
  return n.id;
};

/** The next message a node of the flow receives (its own input, whatever the node does with it). */
function nextInput(id: string, timeoutMs: number): Promise<any> {
  const node = helper.getNode(id);
  assert.ok(node, `node ${id} is deployed`);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no message at ${id} within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    node.on('input', (msg: unknown) => {
      clearTimeout(timer);
      resolve(msg);
    });
  });
}

describe('every example flow runs unchanged on the libvirt provider', function () {
  this.timeout(900_000);
  let lab: { release(): Promise<void> } | undefined;
  let root: string;
  const proxy = { http: process.env.http_proxy, https: process.env.https_proxy };

  before(async function () {
    lab = await libvirtLabForSuite(this, LAB);
    root = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvx-'));
    // the alert example POSTs to its web hook: sent to a local port that refuses, nothing leaves
    process.env.http_proxy = process.env.https_proxy = 'http://127.0.0.1:9';
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
  });
  afterEach(async () => {
    await helper.unload();
  });
  after(async () => {
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    for (const [k, v] of Object.entries({ http_proxy: proxy.http, https_proxy: proxy.https })) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    if (root) await fs.rm(root, { recursive: true, force: true });
    await lab?.release();
  });

  function folders(tag: string) {
    const repository = path.join(root, tag, 'repository');
    const journalDir = path.join(root, tag, 'journal');
    spawnSync('mkdir', ['-p', repository, journalDir]);
    return { repository, journalDir };
  }

  function libvirtViewRight(): void {
    for (const n of [AGENT, NOAGENT]) assertLibvirtView(n, 'running', LAB);
    assertLibvirtView(OFF, 'shut off', LAB);
    assert.deepEqual(
      readdirSync(path.dirname(domainImage(AGENT, LAB))).filter((f) => f.includes('.vmbackup-')),
      [],
      'no scratch file left',
    );
  }

  /** Load, trigger the inject node, wait for `ok` or the flow's Catch. */
  async function run(name: string, host: Record<string, unknown>, okAt: [string, string?], msAllowed = 400_000) {
    const flow = onLibvirt(example(name), host);
    await helper.load([...NODE_MODULES, ...CORE], flow as any);
    const ok = nextInput(byName(flow, ...okAt), msAllowed);
    const caught = nextInput(byName(flow, 'catch'), msAllowed);
    helper.getNode(byName(flow, 'inject')).receive({});
    return { flow, ok, caught };
  }

  for (const [name, fallback] of [
    ['Nightly backup of every VM', 'checkpoint'],
    ['Legacy saved-state backup', 'saved-state'],
  ] as const) {
    it(`${name}: a backup set published for the 3 domains (${fallback} policy)`, async () => {
      const { repository, journalDir } = folders(name.split(' ')[0]);
      const { ok, caught } = await run(name, { repository, journalDir }, ['debug', 'backup summary']);
      const msg = await Promise.race([ok, caught.then((m) => Promise.reject(new Error(`the flow's catch: ${m.error?.message}`)))]);
      const s = msg.summary;
      assert.equal(s.ok, true, s.text);
      const byId = new Map<string, any>(s.vms.map((v: any) => [v.vm, v]));
      assert.deepEqual(
        NAMES.map((n) => [n, byId.get(n)?.method, byId.get(n)?.consistency]),
        [
          [AGENT, 'child-vm-snapshot', 'application'],
          fallback === 'checkpoint' ? [NOAGENT, 'checkpoint', 'crash'] : [NOAGENT, 'saved-state', 'crash'],
          [OFF, 'offline', 'offline'],
        ],
      );
      assert.equal(s.backups.published, true);
      for (const n of NAMES) {
        const dir = byId.get(n).path;
        assert.ok(dir.startsWith(`${repository}/`), `${n}: published under the repository (${dir})`);
        const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
        assert.equal(manifest.provider, 'libvirt');
        assert.equal(
          spawnSync('qemu-img', ['check', path.join(dir, manifest.files.find((f: any) => f.disk === 'vda').name)]).status,
          0,
          `${n}: its image is sound`,
        );
      }
      if (fallback === 'saved-state')
        assert.ok(
          readdirSync(byId.get(NOAGENT).path).some((f) => /state/.test(f)),
          'the saved state is in the backup',
        );
      libvirtViewRight();
    });
  }

  it('Report only - enumerate and classify: a report row per domain, no side effect', async () => {
    const { repository, journalDir } = folders('report');
    const { ok, caught } = await run('Report only - enumerate and classify', { repository, journalDir }, ['debug', 'methods'], 120_000);
    const msg = await Promise.race([ok, caught.then((m) => Promise.reject(new Error(`the flow's catch: ${m.error?.message}`)))]);
    const rows = new Map<string, any>(msg.payload.map((r: any) => [r.vm, r]));
    assert.deepEqual(
      NAMES.map((n) => rows.get(n)?.method),
      ['child-vm-snapshot', 'checkpoint', 'offline'],
    );
    assert.match(rows.get(NOAGENT).why, /integration-service/);
    assert.deepEqual(readdirSync(repository), [], 'nothing written to the repository');
    libvirtViewRight();
  });

  it('Alert on failure: a backup that fails (libvirtd not answering) reaches the alert path (text, MQTT, web hook) with its summary', async () => {
    // the failure an alert is for: libvirtd not reachable at backup time (here: its URI names a
    // socket where no libvirtd listens, the only edit being the host node's, as for the others)
    const { repository, journalDir } = folders('alert');
    const name = 'Alert on failure';
    const flow = onLibvirt(example(name), {
      repository,
      journalDir,
      libvirtUri: `qemu:///system?socket=${path.join(root, 'no-libvirtd.sock')}`,
    });
    await helper.load([...NODE_MODULES, ...CORE], flow as any);
    const text = nextInput(byName(flow, 'debug', 'alert text'), 400_000);
    const mqtt = nextInput(byName(flow, 'mqtt out'), 400_000);
    const hook = nextInput(byName(flow, 'http request'), 400_000);
    const done = nextInput(byName(flow, 'debug', 'backup summary'), 400_000);
    done.catch(() => undefined);
    helper.getNode(byName(flow, 'inject')).receive({});
    const t = await Promise.race([text, done.then(() => Promise.reject(new Error('the backup succeeded: no failure to alert on')))]);
    assert.match(String(t.payload), /^VM backup FAILED on lab at enumerate\n[\s\S]*libvirtd does not answer/, `alert text: ${t.payload}`);
    const m = await mqtt;
    const summary = typeof m.payload === 'string' ? JSON.parse(m.payload) : m.payload;
    assert.equal(summary.ok, false);
    assert.match(String(summary.failedAt), /enumerate/, `failedAt ${summary.failedAt}`);
    assert.equal(summary.host, 'lab', 'the summary names the host (from the host node: no set exists yet)');
    assert.match(summary.error, /libvirtd does not answer on qemu:\/\/\/system\?socket=/);
    await hook;
    console.log(`      alert text: ${String(t.payload).split('\n')[0]}`);
    assert.deepEqual(readdirSync(repository), [], 'nothing written to the repository');
    libvirtViewRight();
  });
});
