// The verify job on real chains and real file systems: each kind of damage is found and named (a
// flipped byte in the newest, a middle and the oldest link, a missing and an extra file, a broken
// backing string, an "application" disk whose ext4 needs recovery), clean backups pass, the records
// are written beside the manifests (which never change) and drive "only unverified" and
// "re-verify after N days"; a prune's rewritten manifest makes the old record not apply.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { runVerifyJob, summarizeVerifyJob, currentRecord } from '../../../src/verify';
import { pruneVm } from '../../../src/prune';
import { buildRepo, HOST, nightly, run, shaOf, VM, flipByte } from '../prune/build-repo';

const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
const HAVE_E2FS = spawnSync('mkfs.ext4', ['-V']).status === 0 && spawnSync('debugfs', ['-V']).status === 0;
const HAVE_XFS_NTFS = spawnSync('mkfs.xfs', ['-V']).status === 0 && spawnSync('mkntfs', ['--version']).status === 0;

/** a 64 MiB raw disk: MBR, one partition from 1 MiB holding a fresh ext4 (needs_recovery set if asked) */
export function ext4Disk(file: string, needsRecovery: boolean): void {
  const part = `${file}.part`;
  run('truncate', ['-s', '63M', part]);
  run('mkfs.ext4', ['-q', '-F', '-L', 'guestroot', part]);
  if (needsRecovery) run('debugfs', ['-w', '-R', 'feature needs_recovery', part]);
  run('truncate', ['-s', '64M', file]);
  const mbr = Buffer.alloc(512);
  mbr[446 + 4] = 0x83;
  mbr.writeUInt32LE(2048, 446 + 8);
  mbr.writeUInt32LE(129024, 446 + 12);
  mbr.writeUInt16LE(0xaa55, 510);
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, mbr, 0, 512, 0);
  fs.closeSync(fd);
  run('dd', [`if=${part}`, `of=${file}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
  fs.rmSync(part);
}

(HAVE ? describe : describe.skip)('verify job', function () {
  this.timeout(300_000);
  let tmp: string;
  beforeEach(() => (tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-verify-'))));
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const disk = { id: 'drive-virtio0', fullAt: () => false };
  const file = 'disk-drive-virtio0.qcow2';

  it('clean backups pass, each with a record beside its manifest, and the manifests never change', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 5), [disk]);
    const before = repo.ids.map((id) => shaOf(path.join(repo.vmDir, id, 'manifest.json')));
    const job = await runVerifyJob(repo.root);
    assert.ok(job.ok, JSON.stringify(job.backups.map((b) => b.problems)));
    assert.equal(job.verified, 5);
    for (const [i, id] of repo.ids.entries()) {
      assert.equal(shaOf(path.join(repo.vmDir, id, 'manifest.json')), before[i]);
      const record = await currentRecord(path.join(repo.vmDir, id));
      assert.ok(record?.ok && record.intact && record.backupId === id);
    }
    assert.match(summarizeVerifyJob(job).text, /5 verified: all OK/);
    // nothing of ours besides the record: no temporary file left
    for (const id of repo.ids)
      assert.deepEqual(
        fs.readdirSync(path.join(repo.vmDir, id)).filter((n) => n.startsWith('.')),
        [],
      );
  });

  const damages: [string, (vmDir: string, ids: string[]) => string, RegExp][] = [
    ['a flipped byte in the newest link', (v, ids) => (flipByte(path.join(v, ids[4], file), 300_000), ids[4]), /sha256/],
    ['a flipped byte in a middle link', (v, ids) => (flipByte(path.join(v, ids[2], file), 300_000), ids[2]), /sha256/],
    ['a flipped byte in the oldest link (the full)', (v, ids) => (flipByte(path.join(v, ids[0], file), 300_000), ids[0]), /sha256/],
    ['a missing file', (v, ids) => (fs.rmSync(path.join(v, ids[2], 'definition.json')), ids[2]), /missing/],
    ['an extra file', (v, ids) => (fs.writeFileSync(path.join(v, ids[2], 'notes.txt'), 'x'), ids[2]), /not listed/],
    [
      'a broken backing string',
      (v, ids) => (
        run('qemu-img', ['rebase', '-q', '-u', '-f', 'qcow2', '-b', `../${ids[0]}/${file}`, '-F', 'qcow2', path.join(v, ids[2], file)]),
        ids[2]
      ),
      /backing file/,
    ],
  ];
  for (const [what, plant, problem] of damages) {
    it(`finds ${what}, names it, and fails every backup stacked on it`, async () => {
      const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 5), [disk]);
      const bad = plant(repo.vmDir, repo.ids);
      const job = await runVerifyJob(repo.root);
      assert.ok(!job.ok);
      const at = repo.ids.indexOf(bad);
      for (const [i, id] of repo.ids.entries()) {
        const b = job.backups.find((x) => x.backupId === id)!;
        assert.equal(b.ok, i < at, `${id} (${i}) ${b.ok ? 'passes' : 'fails'}: ${JSON.stringify(b.problems)}`);
        const record = await currentRecord(path.join(repo.vmDir, id));
        assert.equal(record?.intact, i < at, `${id}'s record says whether anything may stack on it`);
      }
      const own = job.backups.find((x) => x.backupId === bad)!;
      assert.ok(
        own.problems.some((p) => problem.test(p.problem)),
        JSON.stringify(own.problems),
      );
      assert.match(summarizeVerifyJob(job).text, /FAILED/);
    });
  }

  it('"only unverified" skips what was verified, re-verifies after N days, and a prune-rewritten manifest voids its record', async () => {
    const repo = buildRepo(tmp, nightly('2026-11-02T03:00:00Z', 6), [disk]);
    const t = Date.parse('2026-11-10T00:00:00Z');
    const first = await runVerifyJob(repo.root, { now: () => new Date(t) });
    assert.equal(first.verified, 6);
    const again = await runVerifyJob(repo.root, { select: 'unverified', now: () => new Date(t + 86_400_000) });
    assert.equal(again.verified, 0);
    assert.equal(again.skipped, 6);
    const later = await runVerifyJob(repo.root, { select: 'unverified', reverifyDays: 7, now: () => new Date(t + 8 * 86_400_000) });
    assert.equal(later.verified, 6, 'verified more than 7 days ago: verified again');
    const pruned = await pruneVm(VM, { root: repo.root, host: HOST, rules: { keepLast: 2 } });
    assert.ok(pruned.ok && pruned.merged.length === 1);
    const afterPrune = await runVerifyJob(repo.root, { select: 'unverified', now: () => new Date(t + 9 * 86_400_000) });
    // the merged point and the one above it (its depth changed): their manifests changed, their records no longer apply
    assert.equal(afterPrune.verified, 2);
    assert.ok(afterPrune.ok);
  });

  (HAVE_E2FS ? it : it.skip)(
    'the consistency proof: an "application" disk whose ext4 needs recovery contradicts its label; a clean one passes',
    async () => {
      for (const dirty of [false, true]) {
        const sub = path.join(tmp, dirty ? 'dirty' : 'clean');
        fs.mkdirSync(sub);
        const seed = path.join(sub, 'seed.raw');
        ext4Disk(seed, dirty);
        // the points' writes land in the last 4 MiB, clear of the file system's metadata
        const repo = buildRepo(
          sub,
          nightly('2026-11-02T03:00:00Z', 2),
          [{ id: 'drive-virtio0', fullAt: () => false, size: 64 << 20, seed, writeBase: 60 << 20 }],
          {
            consistency: 'application',
          },
        );
        const job = await runVerifyJob(repo.root);
        for (const b of job.backups) {
          const fsProof = b.proof?.[0]?.filesystems[0];
          assert.equal(fsProof?.type, 'ext');
          assert.equal(fsProof?.partition, 1);
          if (dirty) {
            assert.equal(fsProof?.state, 'needs-recovery');
            assert.ok(!b.ok && b.intact, 'the label is contradicted; the files are intact');
            assert.ok(
              b.problems.some((p) => /labelled application-consistent, but ext on partition 1.*needs_recovery/.test(p.problem)),
              JSON.stringify(b.problems),
            );
          } else {
            assert.equal(fsProof?.state, 'clean', fsProof?.detail);
            assert.ok(b.ok);
          }
        }
        assert.equal(job.contradicted, dirty ? 2 : 0);
      }
    },
  );

  (HAVE_XFS_NTFS ? it : it.skip)('the consistency proof reads XFS and NTFS too (whole-disk file systems, clean)', async () => {
    for (const [type, make] of [
      ['xfs', (f: string) => (run('truncate', ['-s', '320M', f]), run('mkfs.xfs', ['-q', f]))],
      ['ntfs', (f: string) => (run('truncate', ['-s', '64M', f]), run('mkntfs', ['-q', '-F', '-f', f]))],
    ] as const) {
      const sub = path.join(tmp, type);
      fs.mkdirSync(sub);
      const seed = path.join(sub, 'seed.raw');
      make(seed);
      const size = fs.statSync(seed).size;
      // one backup of the disk as it is (no writes over the file system's metadata)
      const repo = buildRepo(
        sub,
        nightly('2026-11-02T03:00:00Z', 1),
        [{ id: 'drive-virtio0', fullAt: () => false, size, seed, writeBase: size - (4 << 20) }],
        {
          consistency: 'application',
        },
      );
      const job = await runVerifyJob(repo.root);
      const proof = job.backups[0].proof?.[0]?.filesystems[0];
      assert.equal(proof?.partition, 0, `${type}: the whole disk`);
      assert.equal(proof?.type, type);
      assert.equal(proof?.state, 'clean', proof?.detail);
      assert.ok(job.ok);
    }
  });
});
