// Chain trust without reading the chain (src/chain/trust.ts via findParent): with identities
// recorded at publish, the parent search reads a stat and a header per link, not the parent's
// data (counted in /proc/self/io); a link written to, replaced, truncated or re-pointed is named
// at once; a middle link that rotted without any metadata change passes the identity check, is
// found by the next verify job, and from then on the parent search refuses the chain naming it.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { findParent } from '../../../src/chain';
import { recordIdentity } from '../../../src/chain/identity';
import { pruneVm } from '../../../src/prune';
import { runVerifyJob } from '../../../src/verify';
import { buildRepo, HOST, nightly, run, VM, type BuiltRepo, flipByte } from '../prune/build-repo';

const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
const FILE = 'disk-drive-virtio0.qcow2';
const rchar = () => Number(/rchar: (\d+)/.exec(fs.readFileSync('/proc/self/io', 'utf8'))![1]);

(HAVE ? describe : describe.skip)('chain trust by identity and verify records', function () {
  this.timeout(120_000);
  let tmp: string;
  let repo: BuiltRepo;
  const parent = () => findParent({ root: repo.root, host: HOST, vm: VM, disk: 'drive-virtio0', virtualSize: 32 << 20 });
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-trust-'));
    // a 32 MiB full with 24 MiB of data, then four incrementals
    const seed = path.join(tmp, 'seed.raw');
    run('qemu-img', ['create', '-q', '-f', 'raw', seed, '32M']);
    run('qemu-io', ['-f', 'raw', '-c', 'write -q -P 0x5a 0 24M', seed]);
    repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 5), [
      { id: 'drive-virtio0', fullAt: () => false, size: 32 << 20, seed, writeBase: 24 << 20 },
    ]);
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const record = async () => {
    for (const id of repo.ids) await recordIdentity(path.join(repo.vmDir, id));
  };

  it('without identity records: the old way (the parent hashed whole); with them: a few KiB read per link', async () => {
    // the newest backup a full of 24 MiB of data: the old way hashes all of it every night
    const dir = path.join(tmp, 'full-parent');
    const seed = path.join(tmp, 'seed.raw');
    const withFull = buildRepo(dir, nightly('2026-11-02T03:00:00Z', 4), [
      { id: 'drive-virtio0', fullAt: (i) => i === 3, size: 32 << 20, seed, writeBase: 24 << 20 },
    ]);
    const search = () => findParent({ root: withFull.root, host: HOST, vm: VM, disk: 'drive-virtio0', virtualSize: 32 << 20 });
    let r0 = rchar();
    const slow = await search();
    const slowRead = rchar() - r0;
    assert.ok(slow.ok && slow.backupId === withFull.ids[3] && slow.depth === 0, JSON.stringify(slow));
    for (const id of withFull.ids) await recordIdentity(path.join(withFull.vmDir, id));
    r0 = rchar();
    const fast = await search();
    const fastRead = rchar() - r0;
    assert.ok(fast.ok && fast.backupId === withFull.ids[3], JSON.stringify(fast));
    assert.ok(slowRead > 20 << 20, `the old way read ${slowRead} bytes`);
    assert.ok(fastRead < 256 << 10, `the trusted search read ${fastRead} bytes`);
    // and a chain of five links: still a few KiB each
    await record();
    r0 = rchar();
    const deep = await parent();
    assert.ok(deep.ok && deep.depth === 4);
    assert.ok(rchar() - r0 < 1 << 20);
  });

  const changes: [string, (file: string, dir: string) => void, RegExp][] = [
    ['written to', (f) => flipByte(f, 200_000, false), /written to since it was published/],
    ['replaced by a copy', (f) => (fs.copyFileSync(f, `${f}.x`), fs.renameSync(`${f}.x`, f)), /replaced since it was published/],
    ['truncated', (f) => fs.truncateSync(f, fs.statSync(f).size - 65536), /size is/],
    [
      're-pointed to another parent (qemu-img rebase -u)',
      (f, dir) =>
        run('qemu-img', ['rebase', '-q', '-u', '-f', 'qcow2', '-b', `../${repo.ids[0]}/${FILE}`, '-F', 'qcow2', path.join(dir, FILE)]),
      /(written to|header changed)/,
    ],
  ];
  for (const [what, change, problem] of changes) {
    it(`a middle link ${what}: refused at once, naming it`, async () => {
      await record();
      const dir = path.join(repo.vmDir, repo.ids[2]);
      change(path.join(dir, FILE), dir);
      const p = await parent();
      assert.ok(!p.ok && p.reason === 'parent-invalid', JSON.stringify(p));
      assert.ok(!p.ok && p.detail.includes(repo.ids[2]) && problem.test(p.detail), p.ok ? '' : p.detail);
    });
  }

  it('a middle link rotted without a trace: passes the identity check, is found by verify, then refused naming it', async () => {
    await record();
    flipByte(path.join(repo.vmDir, repo.ids[2], FILE), 300_000, true);
    const before = await parent();
    assert.ok(before.ok, 'no metadata changed: the nightly check cannot see it (that is what verify jobs are for)');
    const job = await runVerifyJob(repo.root);
    assert.equal(job.failed, 3, 'the rotted link and the two above it');
    const after = await parent();
    assert.ok(!after.ok && after.reason === 'parent-invalid', JSON.stringify(after));
    assert.ok(!after.ok && after.detail.includes(`found backup ${repo.ids[2]} damaged`), !after.ok ? after.detail : '');
  });

  it('a verify that passed changes nothing; a prune that merged re-records the identities it changed', async () => {
    await record();
    assert.ok((await runVerifyJob(repo.root)).ok);
    assert.ok((await parent()).ok);
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 2 } });
    assert.ok(r.ok && r.merged.length === 1, JSON.stringify(r));
    const r0 = rchar();
    const p = await parent();
    assert.ok(p.ok && p.depth === 1, JSON.stringify(p));
    assert.ok(rchar() - r0 < 1 << 20, 'still trusted by identity after the prune');
  });
});
