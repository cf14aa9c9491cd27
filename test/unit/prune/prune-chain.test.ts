// The prune on real qcow2 chains (build-repo.ts): what the rules drop goes, every kept point
// verifies afterwards and flattens to exactly the bytes it held before, links under a kept point
// are merged into it (a full when its own full went, else onto its nearest kept ancestor), the
// repository shrinks; protected backups, foreign folders and a running backup are respected; a
// dry run changes nothing.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { pruneVm, PruneBusy, selectRetention, type Retention } from '../../../src/prune';
import { writeOwner } from '../../../src/repository/staging-owner';
import { verifyBackup } from '../../../src/verify';
import { buildRepo, flatSha, HOST, nightly, usedBytes, VM, type BuiltRepo } from './build-repo';

const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;

/** every file under dir with its sha256 (a dry run must leave all of them as they were) */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(p, `${fs.statSync(p).size}:${fs.statSync(p).ino}:${fs.statSync(p).mtimeMs}`);
    }
  };
  walk(dir);
  return out;
}

export async function assertKeptRestorable(tmp: string, repo: BuiltRepo, kept: string[]): Promise<void> {
  for (const id of kept) {
    const report = await verifyBackup(path.join(repo.vmDir, id));
    assert.ok(report.ok, `${id} verifies after the prune: ${JSON.stringify(report.problems)}`);
    for (const d of repo.disks)
      assert.equal(flatSha(tmp, repo.vmDir, id, d.id), repo.refs.get(`${id}/${d.id}`), `${id}/${d.id} flattens to the same bytes`);
  }
}

(HAVE ? describe : describe.skip)('prune on real chains', function () {
  this.timeout(300_000);
  let tmp: string;
  let tz: string | undefined;
  before(() => {
    tz = process.env.TZ;
    process.env.TZ = 'UTC';
  });
  after(() => (tz === undefined ? delete process.env.TZ : (process.env.TZ = tz)));
  beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-prune-'))));
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // two disks with their fulls at different points: each disk's chain is merged on its own
  const disks = [
    { id: 'drive-virtio0', fullAt: (i: number) => i % 10 === 0 },
    { id: 'drive-virtio1', fullAt: (i: number) => i === 7 },
  ];

  it("keep 7 daily, 4 weekly, 6 monthly over 40 nights: the rules' choice goes, the rest merges and restores byte for byte", async () => {
    const times = nightly('2026-09-01T01:30:00Z', 40);
    const repo = buildRepo(tmp, times, disks);
    const rules: Retention = { keepDaily: 7, keepWeekly: 4, keepMonthly: 6 };
    const before = usedBytes(repo.vmDir);
    const marks = selectRetention(
      repo.ids.map((id, i) => ({ id, time: times[i] })),
      rules,
    );
    const expectKept = repo.ids.filter((id) => marks.get(id)!.keep);
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules });
    assert.ok(r.ok, r.error);
    assert.deepEqual([...r.kept].sort(), expectKept);
    assert.deepEqual(fs.readdirSync(repo.vmDir).sort(), expectKept, 'only the kept backups are left, nothing of ours beside them');
    assert.ok(
      r.merged.some((m) => m.becameFull),
      'a kept point whose full went became a full',
    );
    assert.ok(
      r.merged.some((m) => !m.becameFull && m.onto),
      'a kept point was merged onto a kept ancestor',
    );
    await assertKeptRestorable(tmp, repo, expectKept);
    const after = usedBytes(repo.vmDir);
    assert.ok(after < before, `the repository shrank (${before} -> ${after} bytes)`);
    // every merged manifest says so, with the merged backups named
    for (const id of new Set(r.merged.map((m) => m.backup))) {
      const manifest = JSON.parse(fs.readFileSync(path.join(repo.vmDir, id, 'manifest.json'), 'utf8'));
      const from = new Set(r.merged.filter((m) => m.backup === id).flatMap((m) => m.from));
      assert.deepEqual(new Set(manifest.merges[0].backups), from, `${id}'s manifest names what was merged into it`);
    }
    // a second prune with the same rules changes nothing
    const again = await pruneVm(VM, { root: repo.root, host: HOST, rules });
    assert.deepEqual(again.removed, []);
    assert.deepEqual(again.merged, []);
  });

  it('hourly backups, keep-last 3 + keep-hourly 4 + keep-daily 2: middle links merged into the next kept point', async () => {
    const times = nightly('2026-12-01T20:10:00Z', 14, 1).map((t, i) => new Date(t.getTime() + (i % 3) * 600_000));
    const repo = buildRepo(tmp, times, [disks[0]]);
    const rules: Retention = { keepLast: 3, keepHourly: 4, keepDaily: 2 };
    // a boot test's record beside every backup (restore's <backupId>.boot-test.json)
    const ids = fs.readdirSync(repo.vmDir).filter((n) => /^[0-9]{8}T/.test(n));
    for (const id of ids) fs.writeFileSync(path.join(repo.vmDir, `${id}.boot-test.json`), '{}');
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules });
    assert.ok(r.ok, r.error);
    assert.ok(r.removed.length > 0);
    for (const id of ids)
      assert.equal(fs.existsSync(path.join(repo.vmDir, `${id}.boot-test.json`)), r.kept.includes(id), `${id}'s boot-test record`);
    await assertKeptRestorable(tmp, repo, r.kept);
  });

  it('a protected backup is never removed nor rewritten, and its chain stays whole', async () => {
    const times = nightly('2026-11-01T02:00:00Z', 12);
    const repo = buildRepo(tmp, times, [disks[0]]);
    const prot = repo.ids[4];
    fs.writeFileSync(path.join(repo.vmDir, prot, 'protected'), 'before the upgrade\n');
    const files = snapshot(path.join(repo.vmDir, prot));
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 2 } });
    assert.ok(r.ok, r.error);
    assert.ok(r.kept.includes(prot));
    for (const id of repo.ids.slice(0, 4)) assert.ok(r.kept.includes(id), `${id}: needed by the protected backup`);
    assert.deepEqual(snapshot(path.join(repo.vmDir, prot)), files, 'not a byte of the protected backup changed');
    await assertKeptRestorable(tmp, repo, r.kept);
    assert.ok((await verifyBackup(path.join(repo.vmDir, prot))).ok, 'the protected marker is not an unlisted file to verify');
  });

  it('a dry run lists what would go and why, and changes nothing', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 9), [disks[0]]);
    const files = snapshot(repo.root);
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 3 }, dryRun: true });
    assert.ok(r.ok && r.dryRun);
    assert.equal(r.removed.length, 6);
    assert.ok(
      r.backups.filter((b) => !b.keep).every((b) => /kept by no rule|already keeps/.test(b.why)),
      JSON.stringify(r.backups),
    );
    assert.equal(r.merged.length, 1);
    assert.deepEqual(snapshot(repo.root), files);
  });

  it('no rule: nothing is removed', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 4), [disks[0]]);
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: {} });
    assert.ok(r.ok);
    assert.deepEqual(r.removed, []);
    assert.equal(fs.readdirSync(repo.vmDir).length, 4);
  });

  it('only our own backup folders are touched: a foreign folder, a file and a link to a backup stay', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 5), [disks[0]]);
    const outside = path.join(tmp, 'outside');
    fs.mkdirSync(outside);
    fs.writeFileSync(path.join(outside, 'precious'), 'x');
    fs.mkdirSync(path.join(repo.vmDir, 'notes'));
    fs.writeFileSync(path.join(repo.vmDir, 'README'), 'x');
    fs.symlinkSync(outside, path.join(repo.vmDir, '20261001T000000Z-linked'));
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 1 } });
    assert.ok(r.ok, r.error);
    assert.ok(fs.existsSync(path.join(outside, 'precious')));
    assert.ok(fs.existsSync(path.join(repo.vmDir, 'notes')) && fs.existsSync(path.join(repo.vmDir, 'README')));
    assert.ok(fs.lstatSync(path.join(repo.vmDir, '20261001T000000Z-linked')).isSymbolicLink());
    assert.ok(r.leftAlone.some((l) => /symbolic link/.test(l.why)));
    await assertKeptRestorable(tmp, repo, r.kept);
  });

  it('a backup of the VM being written: refused at once, or waited for', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 4), [disks[0]]);
    const staging = path.join(repo.vmDir, '.partial-20261106T020000Z-abcdef');
    fs.mkdirSync(staging);
    await writeOwner(staging, HOST); // this process, alive: a backup running
    await assert.rejects(
      pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 1 } }),
      (err: Error) =>
        err instanceof PruneBusy && /being written/.test(err.message) && err.message.includes('.partial-20261106T020000Z-abcdef'),
    );
    assert.equal(fs.readdirSync(repo.vmDir).filter((n) => !n.startsWith('.')).length, 4, 'nothing removed');
    setTimeout(() => fs.rmSync(staging, { recursive: true }), 300);
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 1 }, waitMs: 10_000, pollMs: 100 });
    assert.ok(r.ok, r.error);
    assert.equal(r.removed.length, 3);
  });

  it('a backup planned before a prune and published after it (its parent merged meanwhile) still verifies', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 6), [disks[0]]);
    const pruneAt = new Date('2026-11-07T03:00:00Z');
    const r = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 2 }, now: () => pruneAt });
    assert.ok(r.ok && r.merged.length === 1);
    // the next backup was planned at 02:59 on the old chain (depth 6 on the newest), published after the prune
    const parent = repo.ids[5];
    const id = '20261107T025900Z-late00';
    const dir = path.join(repo.vmDir, id);
    fs.mkdirSync(dir);
    const file = 'disk-drive-virtio0.qcow2';
    spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `../${parent}/${file}`, '-F', 'qcow2', path.join(dir, file)]);
    const m = JSON.parse(fs.readFileSync(path.join(repo.vmDir, parent, 'manifest.json'), 'utf8'));
    const image = path.join(dir, file);
    fs.copyFileSync(path.join(repo.vmDir, parent, 'definition.json'), path.join(dir, 'definition.json'));
    const disk = m.files.find((f: { kind: string }) => f.kind === 'disk');
    Object.assign(disk, {
      bytes: fs.statSync(image).size,
      sha256: spawnSync('sha256sum', [image], { encoding: 'utf8' }).stdout.split(' ')[0],
      chain: { ...disk.chain, mode: 'incremental', reason: 'incremental', depth: 6, parent, backing: `../${parent}/${file}` },
    });
    Object.assign(m, {
      backupId: id,
      chain: { parent, depth: 6 },
      createdAt: '2026-11-07T02:59:00.000Z',
      completedAt: '2026-11-07T03:05:00.000Z',
    });
    delete m.merges;
    m.totalBytes = m.files.reduce((n: number, f: { bytes: number }) => n + f.bytes, 0);
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(m, null, 2));
    const v = await verifyBackup(dir);
    assert.ok(v.ok, JSON.stringify(v.problems));
  });

  it('a second prune of the same VM while one runs is refused', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-01T02:00:00Z', 6), [disks[0]]);
    let second: Promise<unknown> | undefined;
    const r = await pruneVm(VM, {
      root: repo.root,
      host: HOST,
      rules: { keepLast: 1 },
      onStep: (step) => {
        if (step !== 'planned') return;
        second = pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 1 } });
        second.catch(() => undefined); // asserted below
      },
    });
    assert.ok(r.ok);
    await assert.rejects(second!, (err: Error) => err instanceof PruneBusy && /another prune/.test(err.message));
  });
});
