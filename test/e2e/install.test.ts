// End to end, as a user gets the package: npm pack -> npm install <tarball> in a fresh Node-RED
// user dir -> the node-red command -> the admin API. Needs `npm run build` first.
//
//   npm run build && npx mocha --timeout 600000 'dist/test/e2e/**/*.test.js'
//
// With a lab running (VMBACKUP_LAB_DIR=<dir> node dist/lab/cli.js start) the report-only example
// also classifies the lab's VMs and the nightly example backs them up (into a scratch repository);
// without one those two tests are skipped and say why.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  DASHBOARD_TYPE,
  EXAMPLES,
  THIRD_PARTY_EXAMPLES,
  MODULE,
  NodeRed,
  TYPES,
  PIPELINE_TYPES,
  labRunDir,
  packAndInstall,
  readExample,
  removeDir,
  type FlowNode,
  type Installed,
} from './harness';

const PIPELINE = PIPELINE_TYPES;
const folderOf = (type: string) => type.replace(/^vmbackup-/, '');

interface NodeSetInfo {
  id: string;
  module: string;
  types: string[];
  enabled: boolean;
  err?: string;
}

interface ReportRow {
  vm: string;
  method: string;
  consistency: string;
  why: string;
  warnings: string[];
}

interface Summary {
  ok: boolean;
  stage?: string;
  error?: string;
  host?: string;
  vms: unknown[];
  text: string;
}

/** The report-only example, pointed at socketDir, with capture nodes that store its results in global context. */
function reportFlow(socketDir: string, repository: string, journalDir: string): { flow: FlowNode[]; injectId: string } {
  const flow = readExample('Report only - enumerate and classify');
  const host = flow.find((n) => n.type === 'vmbackup-host')!;
  Object.assign(host, { socketDir, repository, journalDir });
  const fn = flow.find((n) => n.type === 'function')!;
  const catcher = flow.find((n) => n.type === 'catch')!;
  const capture = (id: string, key: string, from: string, y: number): FlowNode => ({
    id,
    type: 'change',
    z: fn.z,
    name: `e2e: global.${key}`,
    rules: [{ t: 'set', p: key, pt: 'global', to: from, tot: 'msg' }],
    action: '',
    property: '',
    from: '',
    to: '',
    reg: false,
    x: 960,
    y,
    wires: [[]],
  });
  flow.push(capture('e2e0capture00001', 'e2eReport', 'payload', 300), capture('e2e0capture00002', 'e2eFailure', 'summary', 340));
  fn.wires![0].push('e2e0capture00001');
  catcher.wires![0].push('e2e0capture00002');
  return { flow, injectId: flow.find((n) => n.type === 'inject')!.id };
}

describe('installed package: npm pack, npm install, node-red', function () {
  this.timeout(120_000);
  let installed: Installed | undefined;
  let nr: NodeRed | undefined;

  before(async function () {
    this.timeout(600_000);
    installed = await packAndInstall();
    nr = await NodeRed.start(installed.userDir);
  });

  after(async function () {
    this.timeout(60_000);
    await nr?.stop();
    removeDir(installed?.dir);
  });

  it('the tarball holds the built nodes with their editor files, locales, icons and the examples', function () {
    const m = installed!.moduleDir;
    for (const type of TYPES) {
      const f = folderOf(type);
      for (const rel of [`${f}.js`, `${f}.html`, `locales/en-US/${f}.json`, `locales/en-US/${f}.html`, `icons/${type}.svg`]) {
        assert.ok(fs.existsSync(path.join(m, 'dist', 'nodes', f, rel)), `${MODULE}/dist/nodes/${f}/${rel} is in the package`);
      }
    }
    const examples = fs
      .readdirSync(path.join(m, 'examples'))
      .filter((f) => f.endsWith('.json'))
      .sort();
    assert.deepEqual(
      examples,
      EXAMPLES.map((e) => `${e}.json`),
    );
    assert.equal(fs.existsSync(path.join(m, 'dist', 'test')), false, 'tests are not shipped');
    const pkg = JSON.parse(fs.readFileSync(path.join(m, 'package.json'), 'utf8')) as { 'node-red': { nodes: Record<string, string> } };
    assert.deepEqual(Object.keys(pkg['node-red'].nodes).sort(), [...TYPES].sort());
  });

  it('GET /nodes lists every node type, enabled, without load errors', async function () {
    const sets = (await nr!.json<NodeSetInfo[]>('/nodes')).filter((s) => s.module === MODULE);
    const types = sets.flatMap((s) => s.types).sort();
    assert.deepEqual(types, [...TYPES].sort());
    for (const s of sets) {
      assert.equal(s.err, undefined, `${s.id}: ${s.err}`);
      assert.equal(s.enabled, true, `${s.id} enabled`);
    }
    const mod = await nr!.json<{ name: string; version: string; nodes: unknown[] }>(`/nodes/${MODULE}`);
    assert.equal(mod.name, MODULE);
    assert.equal(mod.nodes.length, TYPES.length);
  });

  it('the editor gets a definition, an edit dialog and help for every node type', async function () {
    const res = await nr!.get('/nodes', { Accept: 'text/html' });
    assert.equal(res.status, 200);
    const html = await res.text();
    for (const type of TYPES) {
      assert.match(html, new RegExp(`RED\\.nodes\\.registerType\\('${type}'`), `registerType ${type}`);
      assert.match(html, new RegExp(`data-template-name="${type}"`), `edit dialog of ${type}`);
      assert.match(html, new RegExp(`data-help-name="${type}"`), `help of ${type}`);
    }
    assert.match(html, /category: 'VM backup'/);
    const help = html.slice(html.indexOf('data-help-name="vmbackup-copy"'));
    assert.match(help, /<ol class="node-ports">/, 'copy documents its two outputs');
    for (const h of ['Inputs', 'Outputs', 'Details', 'References']) assert.match(help, new RegExp(`<h3>${h}</h3>`));
  });

  it('every node has its message catalogue (GET /nodes/messages)', async function () {
    const messages = await nr!.json<Record<string, Record<string, Record<string, unknown>>>>('/nodes/messages?lng=en-US');
    for (const type of TYPES) {
      const ns = `${MODULE}/${type}`;
      const catalogue = messages[ns]?.[folderOf(type)];
      assert.ok(catalogue, `catalogue ${ns}`);
      assert.equal(typeof catalogue.paletteLabel, 'string');
    }
    assert.equal(messages[`${MODULE}/vmbackup-classify`].classify.label, 'classify (fallback: __fallback__)');
  });

  it('serves every node icon from its node folder (GET /icons)', async function () {
    const icons = await nr!.json<Record<string, string[]>>('/icons');
    assert.deepEqual([...(icons[MODULE] ?? [])].sort(), TYPES.map((t) => `${t}.svg`).sort());
    for (const type of TYPES) {
      const res = await nr!.get(`/icons/${MODULE}/${type}.svg`);
      assert.equal(res.status, 200, `${type}.svg`);
      assert.match(res.headers.get('content-type') ?? '', /image\/svg\+xml/);
      assert.match(await res.text(), /^<svg /);
    }
  });

  it('lists the example flows under Import > Examples (GET /library/examples/flows/...)', async function () {
    const modules = await nr!.json<unknown[]>('/library/examples/flows/');
    assert.ok(modules.includes(MODULE), `modules with examples: ${JSON.stringify(modules)}`);
    const listing = await nr!.json<{ fn?: string; d?: string }[]>(`/library/examples/flows/${MODULE}`);
    assert.deepEqual(listing.map((e) => e.fn).sort(), [...EXAMPLES].sort());
    for (const name of EXAMPLES) {
      const flow = await nr!.json<FlowNode[]>(`/library/examples/flows/${MODULE}/${encodeURIComponent(name)}`);
      assert.ok(Array.isArray(flow) && flow.length > 0, name);
    }
  });

  it('every node type is used in some example, and examples use only installed types', async function () {
    const installedTypes = new Set((await nr!.json<NodeSetInfo[]>('/nodes')).flatMap((s) => s.types));
    const used = new Set<string>();
    for (const name of EXAMPLES) {
      const flow = readExample(name);
      const ids = new Set<string>();
      for (const n of flow) {
        assert.ok(!ids.has(n.id), `${name}: duplicate id ${n.id}`);
        ids.add(n.id);
        const thirdParty = THIRD_PARTY_EXAMPLES.includes(name) && DASHBOARD_TYPE.test(n.type);
        if (n.type !== 'tab' && !thirdParty) assert.ok(installedTypes.has(n.type), `${name}: unknown type ${n.type}`);
        used.add(n.type);
      }
      for (const n of flow) {
        for (const out of n.wires ?? []) for (const to of out) assert.ok(ids.has(to), `${name}: ${n.id} is wired to missing ${to}`);
        if (typeof n.host === 'string' && n.type.startsWith('vmbackup-')) assert.ok(ids.has(n.host), `${name}: ${n.id}.host`);
        if (n.type === 'mqtt out') assert.ok(ids.has(n.broker as string), `${name}: ${n.id}.broker`);
      }
    }
    for (const type of TYPES) assert.ok(used.has(type), `${type} appears in an example`);
  });

  it('the nightly example keeps the names the main job relies on', function () {
    const flow = readExample('Nightly backup of every VM');
    const host = flow.find((n) => n.type === 'vmbackup-host')!;
    assert.equal(host.hostName, 'lab');
    assert.equal(host.socketDir, '/tmp/vm-backup-lab/run');
    assert.equal(host.repository, '/tmp/vm-backup-lab/repository');
    const injects = flow.filter((n) => n.type === 'inject');
    assert.equal(injects.length, 1);
    assert.equal(injects[0].crontab, '30 01 * * *');
    assert.equal(injects[0].once, false);
    const byId = new Map(flow.map((n) => [n.id, n]));
    // inject -> enumerate -> classify -> prepare -> snapshot -> post-snapshot -> copy
    let node = byId.get(injects[0].wires![0][0])!;
    for (const type of PIPELINE) {
      assert.equal(node.type, type);
      if (type !== 'vmbackup-copy') node = byId.get(node.wires![0][0])!;
    }
    const copy = node;
    const keeps = (n: FlowNode | undefined) =>
      n?.type === 'change' &&
      JSON.stringify(n.rules) === JSON.stringify([{ t: 'set', p: 'vmbackupLastSummary', pt: 'global', to: 'summary', tot: 'msg' }]);
    assert.ok(
      copy.wires![0].some((id) => keeps(byId.get(id))),
      'copy output 1 -> change global.vmbackupLastSummary = msg.summary',
    );
    const progress = byId.get(copy.wires![1][0])!;
    assert.equal(progress.type, 'debug');
    assert.equal(progress.active, false, 'progress debug is off by default');
    const catcher = flow.find((n) => n.type === 'catch')!;
    const pipelineIds = flow.filter((n) => (PIPELINE as readonly string[]).includes(n.type)).map((n) => n.id);
    assert.deepEqual([...(catcher.scope as string[])].sort(), pipelineIds.sort());
    assert.ok(
      catcher.wires![0].some((id) => keeps(byId.get(id))),
      'catch -> change global.vmbackupLastSummary = msg.summary',
    );
  });

  it('deploys every example (but the Dashboard 2 one) at once, with no missing types and no node errors', async function () {
    const all = EXAMPLES.filter((name) => !THIRD_PARTY_EXAMPLES.includes(name)).flatMap((name) => readExample(name));
    // Point every host at an empty scratch dir: a scheduled inject firing during the test
    // (01:30, 02:00) must not reach the VMs of the shared lab the examples name.
    const scratch = path.join(installed!.dir, 'deploy-all');
    fs.mkdirSync(path.join(scratch, 'run'), { recursive: true });
    for (const host of all.filter((n) => n.type === 'vmbackup-host')) {
      Object.assign(host, {
        socketDir: path.join(scratch, 'run'),
        repository: path.join(scratch, 'repository'),
        journalDir: path.join(scratch, 'journal'),
      });
    }
    const from = nr!.log.length;
    await nr!.deploy(all);
    const deployed = await nr!.json<{ flows: FlowNode[] }>('/flows', { 'Node-RED-API-Version': 'v2' });
    assert.equal(deployed.flows.length, all.length);
    // flows start after the deploy answers: wait for Node-RED to say so (a loaded machine takes longer)
    for (let waited = 0; !/Started flows/.test(nr!.log.slice(from)) && waited < 20_000; waited += 200) {
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, 500)); // errors of nodes starting come right after
    const log = nr!.log.slice(from);
    assert.doesNotMatch(log, /Waiting for missing types|Unknown type/);
    assert.doesNotMatch(log, /\[error\] \[vmbackup-/);
    assert.match(log, /Started flows/);
  });

  it('a failing backup reaches the Catch node: global.vmbackupLastSummary says where and why (nightly example)', async function () {
    const flow = readExample('Nightly backup of every VM');
    const host = flow.find((n) => n.type === 'vmbackup-host')!;
    const missing = path.join(installed!.dir, 'no-such-run-dir');
    Object.assign(host, {
      socketDir: missing,
      repository: path.join(installed!.dir, 'repository'),
      journalDir: path.join(installed!.dir, 'journal'),
    });
    await nr!.deploy(flow);
    await nr!.deleteGlobal('vmbackupLastSummary');
    assert.equal(await nr!.globalValue('vmbackupLastSummary'), undefined);
    await nr!.inject(flow.find((n) => n.type === 'inject')!.id);
    const { value } = await nr!.waitForGlobal<Summary>(['vmbackupLastSummary'], 60_000);
    assert.equal(value.ok, false);
    assert.ok(value.error?.includes(missing), `the error names the missing socket dir: ${value.error}`);
    assert.match(value.text, /FAILED/);
    assert.equal(fs.existsSync(path.join(installed!.dir, 'repository', 'lab')), false, 'nothing published');
  });

  it('the report-only example runs on a host without VMs: an empty report, nothing written', async function () {
    const empty = path.join(installed!.dir, 'empty-run');
    const repository = path.join(installed!.dir, 'repository-empty');
    fs.mkdirSync(empty);
    fs.mkdirSync(repository);
    const { flow, injectId } = reportFlow(empty, repository, path.join(installed!.dir, 'journal-empty'));
    await nr!.deploy(flow);
    for (const key of ['e2eReport', 'e2eFailure']) await nr!.deleteGlobal(key);
    await nr!.inject(injectId);
    const { key, value } = await nr!.waitForGlobal<ReportRow[] | Summary>(['e2eReport', 'e2eFailure'], 60_000);
    assert.equal(key, 'e2eReport', `report failed: ${JSON.stringify(value)}`);
    assert.deepEqual(value, []);
    assert.deepEqual(fs.readdirSync(repository), [], 'the report writes nothing to the repository');
  });

  it('the report-only example classifies the lab VMs (VMBACKUP_LAB_DIR)', async function () {
    const lab = labRunDir();
    if ('skip' in lab) {
      console.log(`      skipped: ${lab.skip}`);
      this.skip();
    }
    this.timeout(300_000);
    const repository = path.join(installed!.dir, 'repository-lab');
    fs.mkdirSync(repository);
    const { flow, injectId } = reportFlow(lab.runDir, repository, path.join(installed!.dir, 'journal-lab'));
    await nr!.deploy(flow);
    for (const key of ['e2eReport', 'e2eFailure']) await nr!.deleteGlobal(key);
    await nr!.inject(injectId);
    const { key, value } = await nr!.waitForGlobal<ReportRow[] | Summary>(['e2eReport', 'e2eFailure'], 240_000);
    assert.equal(key, 'e2eReport', `report failed: ${JSON.stringify(value)}`);
    const rows = value as ReportRow[];
    for (const r of rows)
      console.log(`      ${r.vm}: ${r.method} (${r.consistency}) - ${r.why}${r.warnings.length ? ` [${r.warnings.join('; ')}]` : ''}`);
    const vms = fs
      .readdirSync(lab.runDir)
      .filter((f) => f.endsWith('.qmp'))
      .map((f) => f.slice(0, -4))
      .sort();
    assert.deepEqual(rows.map((r) => r.vm).sort(), vms, 'one row per QMP socket');
    for (const r of rows) {
      assert.match(r.method, /^(child-vm-snapshot|checkpoint|saved-state|offline)$/, r.vm);
      assert.match(r.consistency, /^(application|crash|offline)$/, r.vm);
      assert.equal(typeof r.why, 'string');
      assert.equal(r.method === 'child-vm-snapshot', r.consistency === 'application', `${r.vm}: online <=> application-consistent`);
    }
    const row = (vm: string) => rows.find((r) => r.vm === vm);
    if (row('vm-agent')) assert.equal(row('vm-agent')!.method, 'child-vm-snapshot', `vm-agent: ${row('vm-agent')!.why}`);
    if (row('vm-noagent')) {
      assert.equal(row('vm-noagent')!.method, 'checkpoint');
      assert.match(row('vm-noagent')!.why, /integration-service/);
    }
    // its second disk is an NBD export (a protocol driver): backed up like any disk QEMU reads
    if (row('vm-passthrough'))
      assert.ok(
        !row('vm-passthrough')!.warnings.some((w) => /NOT backed up/.test(w)),
        `the NBD disk is backed up too: ${row('vm-passthrough')!.warnings}`,
      );
    assert.deepEqual(fs.readdirSync(repository), [], 'the report writes nothing to the repository');
  });

  it('the nightly example backs up the lab VMs end to end, as the main job runs it (VMBACKUP_LAB_DIR)', async function () {
    const lab = labRunDir();
    if ('skip' in lab) {
      console.log(`      skipped: ${lab.skip}`);
      this.skip();
    }
    this.timeout(600_000);
    const flow = readExample('Nightly backup of every VM');
    const repository = path.join(installed!.dir, 'repository-nightly');
    Object.assign(
      flow.find((n) => n.type === 'vmbackup-host')!,
      { socketDir: lab.runDir, repository, journalDir: path.join(installed!.dir, 'journal-nightly') },
    );
    await nr!.deploy(flow);
    await nr!.deleteGlobal('vmbackupLastSummary');
    await nr!.inject(flow.find((n) => n.type === 'inject')!.id);
    const { value } = await nr!.waitForGlobal<
      Omit<Summary, 'vms'> & { backupId: string; vms: { vm: string; method: string; consistency: string; path?: string }[] }
    >(['vmbackupLastSummary'], 540_000);
    console.log(
      value.text
        .split('\n')
        .map((l) => `      ${l}`)
        .join('\n'),
    );
    assert.equal(value.ok, true, value.text);
    assert.equal(value.stage, 'copied');
    const vms = fs
      .readdirSync(lab.runDir)
      .filter((f) => f.endsWith('.qmp'))
      .map((f) => f.slice(0, -4))
      .sort();
    assert.deepEqual(value.vms.map((v) => v.vm).sort(), vms);
    for (const v of value.vms) {
      const dir = path.join(repository, 'lab', v.vm, value.backupId);
      assert.equal(path.resolve(repository, v.path ?? ''), dir, `${v.vm} published under <repository>/<host>/<vm>/<backupId>`);
      const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as { method: string; consistency: string };
      assert.equal(manifest.method, v.method);
      assert.equal(manifest.consistency, v.consistency);
    }
  });
});
