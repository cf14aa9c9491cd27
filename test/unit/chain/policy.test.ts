// The chain policy as the copy node parses it, and the full-or-incremental decision: every full
// reason, their order, the fullEvery limits at their edges, and manifest entries the schema takes.
import * as assert from 'node:assert/strict';
import {
  decideChain,
  diskChainEntry,
  parseChainPolicy,
  vmChain,
  type BitmapReport,
  type ParentFound,
  type ParentResult,
} from '../../../src/chain';
import { CHAIN_FULL_REASONS } from '../../../src/contract/schemas';
import { assertManifest } from '../../../src/contract/validate';

const PARENT: ParentFound = {
  ok: true,
  backupId: '20261201T010000Z-bbbbbb',
  dir: '/r/lab/vm/20261201T010000Z-bbbbbb',
  file: '/r/lab/vm/20261201T010000Z-bbbbbb/disk-d.qcow2',
  fileName: 'disk-d.qcow2',
  depth: 2,
  fullCreatedAt: '2026-11-28T01:00:00.000Z',
};
const OK: BitmapReport = { state: 'ok', name: 'vmbackup-d', granularity: 65536, persistent: true };
const NOW = new Date('2026-12-01T02:00:00.000Z');
const decide = (over: { parent?: ParentResult; bitmap?: BitmapReport; policy?: Parameters<typeof decideChain>[0]['policy'] } = {}) =>
  decideChain({ parent: over.parent ?? PARENT, bitmap: over.bitmap ?? OK, policy: over.policy ?? { mode: 'incremental' }, now: NOW });

describe('parseChainPolicy', () => {
  it('defaults to incremental, never a forced full', () => {
    assert.deepEqual(parseChainPolicy({}), { mode: 'incremental' });
    assert.deepEqual(parseChainPolicy({ mode: '', fullEvery: '' }), { mode: 'incremental' });
    assert.deepEqual(parseChainPolicy({ mode: 'full', fullEvery: '  ' }), { mode: 'full' });
  });
  it('reads fullEvery as a count (number or text) or as days with a d', () => {
    assert.deepEqual(parseChainPolicy({ fullEvery: 7 }).fullEvery, { kind: 'count', count: 7 });
    assert.deepEqual(parseChainPolicy({ fullEvery: '7' }).fullEvery, { kind: 'count', count: 7 });
    assert.deepEqual(parseChainPolicy({ fullEvery: ' 30d ' }).fullEvery, { kind: 'days', days: 30 });
    assert.deepEqual(parseChainPolicy({ fullEvery: '1' }).fullEvery, { kind: 'count', count: 1 });
    assert.deepEqual(parseChainPolicy({ fullEvery: '3650d' }).fullEvery, { kind: 'days', days: 3650 });
  });
  it('refuses a bad mode naming the field', () => {
    for (const mode of ['incr', 'FULL', 3, true])
      assert.throws(() => parseChainPolicy({ mode }), /^ChainPolicyError: mode: .* must be "incremental" or "full"$/);
  });
  it('refuses a bad fullEvery naming the field', () => {
    for (const fullEvery of [0, '0', '0d', -1, 1.5, '1.5', '7w', 'd', 'seven', '10001', '3651d', {}, [7], true]) {
      assert.throws(
        () => parseChainPolicy({ fullEvery }),
        (err: Error) => err.name === 'ChainPolicyError' && err.message.startsWith('fullEvery: '),
        String(fullEvery),
      );
    }
  });
});

describe('decideChain', () => {
  it('stacks on a trusted parent with a trusted bitmap: incremental, one deeper', () => {
    const d = decide();
    assert.equal(d.mode, 'incremental');
    if (d.mode !== 'incremental') return;
    assert.equal(d.depth, 3);
    assert.equal(d.parent.backupId, PARENT.backupId);
    assert.deepEqual(d.bitmap, { name: 'vmbackup-d', granularity: 65536, persistent: true });
  });
  it('says so when the bitmap is transient (raw disk, valid while this QEMU lives)', () => {
    const d = decide({ bitmap: { ...OK, persistent: false } });
    assert.equal(d.mode, 'incremental');
    assert.match(d.detail, /transient/);
  });
  it('names each full reason from the parent and the bitmap', () => {
    const cases: [ParentResult | undefined, BitmapReport | undefined, string][] = [
      [{ ok: false, reason: 'first-backup', detail: 'x' }, undefined, 'first-backup'],
      [{ ok: false, reason: 'new-disk', detail: 'x' }, undefined, 'new-disk'],
      [{ ok: false, reason: 'resized', detail: 'x' }, undefined, 'resized'],
      [{ ok: false, reason: 'parent-missing', detail: 'x' }, undefined, 'parent-missing'],
      [{ ok: false, reason: 'parent-invalid', detail: 'x' }, undefined, 'parent-invalid'],
      [undefined, { state: 'missing' }, 'bitmap-missing'],
      [undefined, { state: 'inconsistent', name: 'b' }, 'bitmap-inconsistent'],
      [undefined, { state: 'not-recording', name: 'b' }, 'bitmap-not-recording'],
      [undefined, { state: 'transient-lost' }, 'transient-bitmap-lost'],
      [undefined, { state: 'raw-disk' }, 'raw-disk'],
      [undefined, { state: 'not-supported' }, 'not-supported'],
    ];
    for (const [parent, bitmap, reason] of cases) {
      const d = decide({ ...(parent ? { parent } : {}), ...(bitmap ? { bitmap } : {}) });
      assert.equal(d.mode, 'full', reason);
      if (d.mode === 'full') assert.equal(d.reason, reason);
      assert.ok(d.detail.length > 0);
    }
  });
  it("the user's mode comes first, then the parent, then the bitmap", () => {
    const noParent: ParentResult = { ok: false, reason: 'first-backup', detail: 'none' };
    assert.equal((decide({ policy: { mode: 'full' }, parent: noParent, bitmap: { state: 'missing' } }) as any).reason, 'policy-full');
    assert.equal((decide({ parent: noParent, bitmap: { state: 'missing' } }) as any).reason, 'first-backup');
  });
  it('a bitmap that counts changes since another backup than the parent gives a full (the newest backup was removed)', () => {
    const d = decide({ bitmap: { ...OK, since: '20261201T020000Z-cccccc' } });
    assert.equal(d.mode, 'full');
    assert.equal((d as any).reason, 'parent-missing');
    assert.match(d.detail, /20261201T020000Z-cccccc/);
    assert.equal(decide({ bitmap: { ...OK, since: PARENT.backupId } }).mode, 'incremental');
  });
  it('fullEvery as a count: a chain holds at most that many backups, its full included', () => {
    // the parent has depth 2: the chain holds 3, the next would be the 4th
    assert.equal(decide({ policy: { mode: 'incremental', fullEvery: { kind: 'count', count: 4 } } }).mode, 'incremental');
    const d = decide({ policy: { mode: 'incremental', fullEvery: { kind: 'count', count: 3 } } });
    assert.equal((d as any).reason, 'policy-full-every');
    assert.equal((decide({ policy: { mode: 'incremental', fullEvery: { kind: 'count', count: 1 } } }) as any).reason, 'policy-full-every');
  });
  it("fullEvery in days counts from the chain's full", () => {
    // the full was made 3 days and 1 hour before NOW
    assert.equal(decide({ policy: { mode: 'incremental', fullEvery: { kind: 'days', days: 4 } } }).mode, 'incremental');
    assert.equal((decide({ policy: { mode: 'incremental', fullEvery: { kind: 'days', days: 3 } } }) as any).reason, 'policy-full-every');
    assert.equal(
      (
        decide({
          parent: { ...PARENT, fullCreatedAt: 'garbage' },
          policy: { mode: 'incremental', fullEvery: { kind: 'days', days: 30 } },
        }) as any
      ).reason,
      'policy-full-every',
    );
  });
});

describe('manifest chain entries', () => {
  const manifest = (files: any[], chain?: any) => ({
    format: 'vm-backup-manifest@1',
    backupId: '20261201T030000Z-dddddd',
    host: 'lab',
    vm: 'vm',
    method: 'offline',
    consistency: 'offline',
    reasons: [],
    excludedDisks: [],
    warnings: [],
    timings: {},
    createdAt: NOW.toISOString(),
    completedAt: NOW.toISOString(),
    files,
    ...(chain ? { chain } : {}),
  });
  const file = (chain: any) => ({
    name: 'disk-d.qcow2',
    kind: 'disk',
    disk: 'd',
    format: 'qcow2',
    virtualSize: 1 << 20,
    bytes: 1,
    sha256: 'a'.repeat(64),
    chain,
  });

  it('what diskChainEntry writes, for a full of every reason and for an incremental, passes the schema', () => {
    for (const reason of CHAIN_FULL_REASONS) {
      const e = diskChainEntry({ mode: 'full', reason, detail: 'why' }, { bytesRead: 10 });
      assertManifest(manifest([file(e)], vmChain([{ chain: e }])));
    }
    const inc = decide();
    const e = diskChainEntry(inc, { bytesRead: 65536, bytesChanged: 65536 });
    assert.equal(e.backing, `../${PARENT.backupId}/disk-d.qcow2`);
    assert.deepEqual(vmChain([{ chain: e }, {}]), { parent: PARENT.backupId, depth: 3 });
    assertManifest(manifest([file(e)], vmChain([{ chain: e }])));
  });
  it('format @1 without chain fields is still read', () => {
    assertManifest(manifest([{ name: 'disk-d.qcow2', kind: 'disk', bytes: 1, sha256: 'a'.repeat(64) }]));
  });
  it('refuses mixed-up entries naming the field', () => {
    const bad: [any, RegExp][] = [
      [
        { mode: 'incremental', reason: 'incremental', detail: '', depth: 1, bytesRead: 0 },
        /\/files\/0\/chain must have required property 'parent'/,
      ],
      [{ mode: 'full', reason: 'incremental', detail: '', depth: 0, bytesRead: 0 }, /\/files\/0\/chain\/reason/],
      [{ mode: 'full', reason: 'resized', detail: '', depth: 2, bytesRead: 0 }, /\/files\/0\/chain\/depth/],
      [
        {
          mode: 'incremental',
          reason: 'incremental',
          detail: '',
          depth: 1,
          bytesRead: 0,
          parent: PARENT.backupId,
          backing: '/abs/disk-d.qcow2',
        },
        /\/files\/0\/chain\/backing must match pattern/,
      ],
      [
        {
          mode: 'incremental',
          reason: 'incremental',
          detail: '',
          depth: 1,
          bytesRead: 0,
          parent: PARENT.backupId,
          backing: '../../x/disk-d.qcow2',
        },
        /\/files\/0\/chain\/backing must match pattern/,
      ],
      [
        {
          mode: 'incremental',
          reason: 'incremental',
          detail: '',
          depth: 0,
          bytesRead: 0,
          parent: PARENT.backupId,
          backing: `../${PARENT.backupId}/disk-d.qcow2`,
        },
        /\/files\/0\/chain\/depth must be >= 1/,
      ],
    ];
    for (const [chain, re] of bad) assert.throws(() => assertManifest(manifest([file(chain)])), re);
  });
});
