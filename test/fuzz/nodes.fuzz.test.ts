// Fuzz every pipeline node's input in Node-RED (test helper) against real QEMU processes: at least
// 10,000 generated and mutated payloads per node (VMBACKUP_FUZZ_N to change, VMBACKUP_FUZZ_SEED
// to replay). For every message: an answer (output or a refusal through Catch) and no crash; every
// refusal names where (a JSON pointer into msg.payload, or the field); a refusal changes nothing
// (the journal, in which every side effect is written before it happens, is byte-identical; VMs
// and the repository are checked every 1,000 messages and at the end; at the end, once the flow is
// closed, QEMU must show no view of ours in either VM and no fleecing image may be left).
import * as assert from 'node:assert/strict';
import { promises as fs, mkdtempSync, statSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pendingUndos } from '../../src/ledger/pending';
import type { BackupHost } from '../../src/pipeline/backup-host';
import { overlaysUnder, startBareHost, type BareHost } from '../support/bare-vms';
import { assertGraphClean } from '../support/graph';
import { CATCH, helper, NODE_MODULES, pipelineFlow } from '../nodes/flow-fixture';
import { qmp, readJournal } from '../faults/support/world';

const N = Number(process.env.VMBACKUP_FUZZ_N ?? 10_000);
const SEED = Number(process.env.VMBACKUP_FUZZ_SEED ?? 20261122);

/** mulberry32: small, seeded, good enough to drive a fuzzer reproducibly. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  return { next, int, pick };
}
type Rng = ReturnType<typeof prng>;

const NASTY_STRINGS = [
  '',
  ' ',
  '..',
  '../',
  '../../etc/passwd',
  '/etc/shadow',
  'a/b',
  'a\\b',
  '\0',
  'x\0y',
  '.hidden',
  '-rf',
  '$(reboot)',
  '`id`',
  ';rm -rf /',
  '%2e%2e%2f',
  '\u202e',
  '\ud800',
  '😀',
  'CON',
  'vm-agent',
  'alpha',
  'beta',
  '20261122T101500Z-abcdef',
  'enumerated',
  'classified',
  'prepared',
  'snapshotted',
  'post-snapshot',
  'copied',
  'application',
  'crash',
  'saved-state',
  'child-vm-snapshot',
  'freeze',
  'save',
  'none',
  '__proto__',
  'constructor',
  'prototype',
  'x'.repeat(5000),
  'y'.repeat(70),
];
const NASTY_NUMBERS = [
  0,
  -0,
  -1,
  1,
  1.5,
  -1.5,
  2 ** 31,
  2 ** 53 + 1,
  -(2 ** 63),
  1e308,
  -1e308,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  Number.MIN_VALUE,
];
const KEYS = [
  'stage',
  'backupId',
  'host',
  'writer',
  'createdAt',
  'vms',
  'timings',
  'warnings',
  'policy',
  'repository',
  'id',
  'name',
  'disks',
  'file',
  'agent',
  '__proto__',
  'constructor',
  'x',
  '',
];

function generate(r: Rng, depth = 0): unknown {
  const k = r.int(depth > 3 ? 6 : 10);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r.next() < 0.5;
    case 2:
      return r.pick(NASTY_NUMBERS);
    case 3:
      return r.pick(NASTY_STRINGS);
    case 4:
      return r.int(1000);
    case 5:
      return undefined;
    case 6:
    case 7:
      return Array.from({ length: r.int(5) }, () => generate(r, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = r.int(6); i > 0; i--)
        Object.defineProperty(o, r.pick(KEYS), { value: generate(r, depth + 1), enumerable: true, configurable: true, writable: true });
      return o;
    }
  }
}

/** Non-JSON things a function node could put in msg.payload. */
function oddity(r: Rng): unknown {
  const cyclic: any = { stage: 'enumerated', vms: [] };
  cyclic.vms.push(cyclic);
  let deep: any = {};
  const root = deep;
  // 1,000 levels: much deeper and Node-RED's own message cloning (Catch) overflows its stack, whatever the node
  for (let i = 0; i < 1000; i++) deep = deep.a = {};
  // (Objects whose getters throw are left out: Node-RED's own Catch handling clones the message
  // and throws on them before any node code runs, whatever the node.)
  return r.pick([
    () => BigInt(7),
    () => Symbol('s'),
    () => () => 1,
    () => new Date(),
    () => Buffer.from('abc'),
    () => new Map([[1, 2]]),
    () => cyclic,
    () => root,
    () => Object.create(null),
    () => [root],
    () => new Uint8Array(4),
    () => Promise.resolve(1),
    () => new Error('payload'),
  ])();
}

interface PathRef {
  parent: any;
  key: string | number;
}

function paths(doc: unknown, out: PathRef[] = [], depth = 0): PathRef[] {
  if (depth > 8 || doc === null || typeof doc !== 'object') return out;
  for (const key of Array.isArray(doc) ? doc.keys() : Object.keys(doc as object)) {
    out.push({ parent: doc, key });
    paths((doc as any)[key], out, depth + 1);
  }
  return out;
}

function mutate(r: Rng, seed: unknown, others: readonly unknown[]): unknown {
  const doc = JSON.parse(JSON.stringify(seed));
  if (doc === null || typeof doc !== 'object') return doc;
  for (let m = 1 + r.int(3); m > 0; m--) {
    const all = paths(doc);
    if (all.length === 0) break;
    const { parent, key } = r.pick(all);
    const value = parent[key];
    switch (r.int(12)) {
      case 0:
        if (Array.isArray(parent)) parent.splice(key as number, 1);
        else delete parent[key];
        break;
      case 1:
        parent[key] = generate(r);
        break;
      case 2:
        parent[key] = typeof value === 'string' ? r.pick(NASTY_STRINGS) : r.pick(NASTY_NUMBERS);
        break;
      case 3:
        parent[key] = typeof value === 'number' ? String(value) : typeof value === 'string' ? value.length : value === null ? {} : null;
        break;
      case 4:
        if (Array.isArray(value) && value.length) value.push(JSON.parse(JSON.stringify(value[r.int(value.length)])));
        else parent[key] = [value];
        break;
      case 5:
        if (value && typeof value === 'object' && !Array.isArray(value)) value[r.pick(KEYS)] = generate(r);
        else parent[key] = { value };
        break;
      case 6:
        if (Array.isArray(value)) parent[key] = [];
        else parent[key] = r.pick(NASTY_STRINGS);
        break;
      case 7:
        if (typeof value === 'string') parent[key] = value + r.pick(['/..', '/', '\0', '-', ' ', 'x'.repeat(2000)]);
        else parent[key] = -1;
        break;
      case 8:
        doc.stage = r.pick(['enumerated', 'classified', 'prepared', 'snapshotted', 'post-snapshot', 'copied', 'x', 7]);
        break;
      case 9: {
        const o = r.pick(others) as any;
        if (o && typeof o === 'object' && o.backupId) doc.backupId = o.backupId;
        break;
      }
      case 10: {
        const vm = Array.isArray(doc?.vms) && doc.vms.length ? doc.vms[r.int(doc.vms.length)] : undefined;
        if (vm && typeof vm === 'object') vm.id = r.pick(['../etc', 'gamma', 'alpha', 'beta', 'a/b', '..', 'ALPHA', '']);
        break;
      }
      default:
        if (Array.isArray(value)) for (let i = 0; i < 1100; i++) value.push(value[0] ?? 1);
        else parent[key] = value;
        break;
    }
  }
  return doc;
}

/** Where a refusal says the problem is: a JSON pointer into msg.payload, or a named field/VM. */
const SAYS_WHERE = /^(msg\.payload: \/\S*|\/\S*: |[A-Za-z][\w.]*: |no VM backed up: [A-Za-z0-9][\w.-]*: |backup set \S+ was aborted: )/;

describe('fuzz: every pipeline node input', function () {
  this.timeout(1_800_000);
  let bare: BareHost;
  let journalDir: string;
  let host: BackupHost;
  const stats: Record<string, { sent: number; refused: number; accepted: number; failed: number; kinds: Set<string> }> = {};

  before(async () => {
    bare = await startBareHost(['alpha', 'beta']);
    journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-fuzz-journal-'));
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
    await helper.load(
      [...NODE_MODULES, CATCH],
      pipelineFlow({
        socketDir: bare.socketDir,
        repository: bare.repository,
        journalDir,
        wired: false,
        fallback: 'checkpoint',
        hostExtra: { hostName: 'fuzz', idleTimeout: 3600, sessionTimeout: 600 },
      }) as any,
    );
    host = await (helper.getNode('host') as any).backupHost();
  });
  after(async () => {
    await helper.unload();
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    assert.deepEqual(await overlaysUnder(bare.imageDir), [], 'no fleecing image left after the fuzz');
    for (const id of ['alpha', 'beta']) await assertGraphClean(path.join(bare.socketDir, `${id}.qmp`), id);
    await bare?.stop();
    await fs.rm(journalDir, { recursive: true, force: true });
    console.log(`\nfuzz (seed ${SEED}, ${N} per node):`);
    for (const [node, s] of Object.entries(stats)) {
      console.log(
        `  ${node.padEnd(14)} sent ${s.sent}, refused ${s.refused} (each naming where), accepted ${s.accepted}, failed in execution ${s.failed}; ${s.kinds.size} distinct refusal kinds`,
      );
    }
  });

  const journalFile = () => path.join(journalDir, 'journal-fuzz.jsonl');
  const journalSize = () => {
    try {
      return statSync(journalFile()).size;
    } catch {
      return 0;
    }
  };

  /** Send one message; resolve with the output or the refusal. Never more than one answer. */
  function send(nodeId: string, msg: Record<string, unknown>): Promise<{ ok: boolean; error?: string }> {
    const out = helper.getNode(`out-${nodeId}`);
    const caught = helper.getNode('caught');
    return new Promise((resolve, reject) => {
      const onOut = () => finish({ ok: true });
      const onCaught = (m: any) => {
        if (m?.error?.source?.id === nodeId) finish({ ok: false, error: String(m.error.message).replace(/^[A-Za-z]*Error: /, '') });
      };
      const timer = setTimeout(() => {
        out.removeListener('input', onOut);
        caught.removeListener('input', onCaught);
        reject(new Error(`${nodeId}: no answer within 60 s`));
      }, 60_000);
      const finish = (r: { ok: boolean; error?: string }) => {
        clearTimeout(timer);
        out.removeListener('input', onOut);
        caught.removeListener('input', onCaught);
        resolve(r);
      };
      out.on('input', onOut);
      caught.on('input', onCaught);
      helper.getNode(nodeId).receive(msg as any);
    });
  }

  /** A live backup set at the stage `node` takes, made through the same host the nodes use. */
  async function seedFor(node: string): Promise<any> {
    const enumerated = await host.enumerate();
    if (node === 'classify') return enumerated;
    const classified = host.classify(enumerated, 'checkpoint');
    if (node === 'prepare') return classified;
    const prepared = await host.prepare(classified);
    if (node === 'snapshot') return prepared;
    const snapshotted = await host.snapshot(prepared);
    if (node === 'post-snapshot') return snapshotted;
    return host.postSnapshot(snapshotted);
  }

  async function endAllSets(): Promise<void> {
    await host.closeAll('fuzz: next seed');
    for (let i = 0; i < 300 && host.live.size > 0; i++) await new Promise((r) => setTimeout(r, 50));
  }

  async function assertWorldClean(where: string): Promise<void> {
    for (const id of ['alpha', 'beta']) {
      const st = await qmp<{ status: string }>(path.join(bare.socketDir, `${id}.qmp`), 'query-status');
      assert.equal(st.status, 'running', `${where}: ${id} is ${st.status}`);
    }
    const partial = (await fs.readdir(bare.repository, { recursive: true })).map(String).filter((f) => f.includes('.partial-'));
    assert.deepEqual(partial, [], `${where}: staging left in the repository`);
  }

  for (const node of ['enumerate', 'classify', 'prepare', 'snapshot', 'post-snapshot', 'copy']) {
    it(`${node}: ${N} generated and mutated payloads`, async () => {
      const r = prng(SEED + node.length * 7919 + node.charCodeAt(0));
      const s = (stats[node] = { sent: 0, refused: 0, accepted: 0, failed: 0, kinds: new Set<string>() });
      await endAllSets();
      // Mutations start from a live set (so that well-formed edits reach the host's own checks,
      // and valid ones really run) or, to keep the run short, from a set that has ended (refused
      // after the same schema checks, at the host's "not live" check).
      let dead: unknown;
      if (node !== 'enumerate') {
        dead = await seedFor(node);
        await endAllSets();
      }
      let seed = node === 'enumerate' ? undefined : await seedFor(node);
      const others: unknown[] = [seed, dead];
      for (let i = 0; i < N; i++) {
        const roll = r.next();
        let payload: unknown;
        if (node === 'enumerate' || roll < 0.25) payload = generate(r);
        else if (roll < 0.3) payload = oddity(r);
        else payload = mutate(r, roll < 0.4 ? seed : dead, others);
        const msg: Record<string, unknown> =
          r.next() < 0.02 ? {} : { payload, ...(r.next() < 0.05 ? { topic: generate(r), _msgid: generate(r) } : {}) };
        // the test helper records every node call in sinon spies: forget them, or the run slows down
        if (i % 200 === 0) (helper as unknown as { _sandbox?: { resetHistory(): void } })._sandbox?.resetHistory();
        const before = journalSize();
        const res = await send(node, msg);
        s.sent++;
        if (res.ok) {
          s.accepted++;
          if (node !== 'enumerate') {
            // a valid message ran its stage (side effects allowed): end that set, take a new seed
            await endAllSets();
            seed = await seedFor(node);
            others.push(seed);
          }
          continue;
        }
        const error = res.error ?? '';
        assert.match(error, SAYS_WHERE, `${node} #${i}: the refusal does not say where: ${error.slice(0, 300)}`);
        if (/^no VM backed up: |was aborted: /.test(error)) {
          // a well-formed set that failed while running: whatever it did is undone
          s.failed++;
          await endAllSets();
          assert.deepEqual(pendingUndos(readJournal(journalFile())), [], `${node} #${i}: undos pending after a failed run`);
          seed = await seedFor(node);
          others.push(seed);
          continue;
        }
        s.refused++;
        s.kinds.add(
          error
            .replace(/"[^"]*"/g, '"…"')
            .replace(/\d+/g, 'N')
            .slice(0, 80),
        );
        assert.equal(
          journalSize(),
          before,
          `${node} #${i}: a refused message wrote to the journal (a side effect happened): ${error.slice(0, 200)}`,
        );
        if (i % 1000 === 999) await assertWorldClean(`${node} #${i}`);
      }
      if (node === 'enumerate') await endAllSets();
      await assertWorldClean(`${node} end`);
      assert.ok(s.refused + s.accepted + s.failed === N);
    });
  }
});
