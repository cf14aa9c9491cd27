// verifyBackup / verifyRepository / vm-backup-verify on small hand-made backups (a 1 MiB qcow2
// made with qemu-img, a definition, a fake saved state): what passes, and what each kind of damage
// reports, always naming the file.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Manifest } from '../../src/contract/types';
import { formatReport, verifyBackup, verifyPath, verifyRepository, type VerifyProblem } from '../../src/verify';
import { flipByte } from './prune/build-repo';

const HAVE_QEMU_IMG = spawnSync('qemu-img', ['--version']).status === 0;
const CLI = path.resolve(__dirname, '../../src/cli/verify.js');
const BACKUP_ID = '20261122T101500Z-abc123';

const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** <root>/lab/vm-one/<BACKUP_ID>/ with a qcow2 disk (or a plain file when qemu-img is missing). */
function makeBackup(root: string, vm = 'vm-one', backupId = BACKUP_ID): string {
  const dir = path.join(root, 'lab', vm, backupId);
  fs.mkdirSync(dir, { recursive: true });
  const disk = path.join(dir, 'disk-drive-virtio0.qcow2');
  if (HAVE_QEMU_IMG) {
    const r = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '1M']);
    assert.equal(r.status, 0, String(r.stderr));
  } else {
    fs.writeFileSync(disk, Buffer.alloc(4096, 1));
  }
  fs.writeFileSync(path.join(dir, 'definition.json'), JSON.stringify({ format: 'vm-backup-qemu-definition@1', id: vm }) + '\n');
  fs.writeFileSync(path.join(dir, 'state.vmstate'), Buffer.alloc(8192, 7));
  const files = [
    { name: 'definition.json', kind: 'definition' as const },
    { name: 'disk-drive-virtio0.qcow2', kind: 'disk' as const, disk: 'drive-virtio0', format: 'qcow2', virtualSize: 1 << 20 },
    { name: 'state.vmstate', kind: 'saved-state' as const },
  ].map((f) => ({ ...f, bytes: fs.statSync(path.join(dir, f.name)).size, sha256: sha(path.join(dir, f.name)) }));
  const manifest: Manifest = {
    format: 'vm-backup-manifest@1',
    backupId,
    host: 'lab',
    provider: 'qemu',
    vm,
    vmName: vm,
    method: 'saved-state',
    consistency: 'crash',
    reasons: [],
    excludedDisks: [],
    warnings: [],
    files,
    totalBytes: files.reduce((n, f) => n + f.bytes, 0),
    timings: { copyMs: 1 },
    createdAt: '2026-11-22T10:15:00.000Z',
    completedAt: '2026-11-22T10:15:05.000Z',
  } as Manifest;
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  return dir;
}

function editManifest(dir: string, edit: (m: any) => void): void {
  const file = path.join(dir, 'manifest.json');
  const m = JSON.parse(fs.readFileSync(file, 'utf8'));
  edit(m);
  fs.writeFileSync(file, JSON.stringify(m));
}

const about = (problems: VerifyProblem[], file: string) => problems.filter((p) => p.file === file).map((p) => p.problem);

describe('verifyBackup', function () {
  this.timeout(30_000);
  let tmp: string;
  let dir: string;
  beforeEach(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-verify-'));
    dir = makeBackup(tmp);
  });
  afterEach(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('passes an intact backup, with every file hashed and the disk checked by qemu-img', async () => {
    const r = await verifyBackup(dir);
    assert.deepEqual(r.problems, []);
    assert.equal(r.ok, true);
    assert.deepEqual(r.warnings, []);
    assert.equal(r.manifest?.vm, 'vm-one');
    assert.deepEqual(
      r.files.map((f) => [f.name, f.contentOk]),
      [
        ['definition.json', true],
        ['disk-drive-virtio0.qcow2', true],
        ['state.vmstate', true],
      ],
    );
    if (HAVE_QEMU_IMG) assert.equal(r.files[1].imageCheck, 'ok');
  });

  it('a tampered file: one byte flipped fails on its sha256, naming the file', async () => {
    const state = path.join(dir, 'state.vmstate');
    flipByte(state, 4000);
    const r = await verifyBackup(dir, { skipImageCheck: true });
    assert.equal(r.ok, false);
    assert.equal(r.problems.length, 1, JSON.stringify(r.problems));
    assert.match(about(r.problems, state)[0], /^sha256 [0-9a-f]{64} does not match the manifest's [0-9a-f]{64}$/);
    assert.equal(r.files.find((f) => f.name === 'state.vmstate')?.contentOk, false);
  });

  it('a truncated file fails on its size', async () => {
    const def = path.join(dir, 'definition.json');
    fs.truncateSync(def, 5);
    const r = await verifyBackup(dir, { skipImageCheck: true });
    assert.equal(r.ok, false);
    assert.ok(
      about(r.problems, def).some((p) => /^is 5 bytes, manifest says \d+$/.test(p)),
      JSON.stringify(r.problems),
    );
  });

  (HAVE_QEMU_IMG ? it : it.skip)('a damaged qcow2 header fails qemu-img as well as its sha256', async () => {
    const disk = path.join(dir, 'disk-drive-virtio0.qcow2');
    flipByte(disk, 0); // the "QFI\xfb" magic
    const r = await verifyBackup(dir);
    const problems = about(r.problems, disk);
    assert.ok(
      problems.some((p) => /^sha256 /.test(p)),
      JSON.stringify(problems),
    );
    assert.ok(
      problems.some((p) => /^qemu-img check failed/.test(p)),
      JSON.stringify(problems),
    );
    assert.equal(r.files.find((f) => f.name === 'disk-drive-virtio0.qcow2')?.imageCheck, 'failed');
  });

  (HAVE_QEMU_IMG ? it : it.skip)('a disk with a backing file is not a standalone backup', async () => {
    const disk = path.join(dir, 'disk-drive-virtio0.qcow2');
    const base = path.join(tmp, 'base.qcow2');
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', base, '1M']).status, 0);
    fs.rmSync(disk);
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', disk]).status, 0);
    editManifest(dir, (m) => {
      const f = m.files.find((x: any) => x.name === 'disk-drive-virtio0.qcow2');
      f.bytes = fs.statSync(disk).size;
      f.sha256 = sha(disk);
      m.totalBytes = m.files.reduce((n: number, x: any) => n + x.bytes, 0);
    });
    const r = await verifyBackup(dir);
    assert.deepEqual(about(r.problems, disk), [`has a backing file (${base}); a backup disk must stand alone`]);
  });

  it('a missing file fails, naming it', async () => {
    const disk = path.join(dir, 'disk-drive-virtio0.qcow2');
    const bytes = fs.statSync(disk).size;
    fs.rmSync(disk);
    const r = await verifyBackup(dir);
    assert.equal(r.ok, false);
    assert.deepEqual(r.problems, [{ file: disk, problem: `missing (manifest lists disk, ${bytes} bytes)` }]);
    assert.equal(r.files.find((f) => f.name === 'disk-drive-virtio0.qcow2')?.contentOk, false);
  });

  it('an extra file (or directory) that the manifest does not list fails', async () => {
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'hello');
    fs.mkdirSync(path.join(dir, 'sub'));
    const r = await verifyBackup(dir, { skipImageCheck: true });
    assert.deepEqual(r.problems, [
      { file: path.join(dir, 'notes.txt'), problem: 'is not listed in manifest.json' },
      { file: path.join(dir, 'sub'), problem: 'is not listed in manifest.json' },
    ]);
  });

  it('a manifest that breaks the schema fails with the pointer and the rule', async () => {
    editManifest(dir, (m) => {
      m.method = 'teleport';
    });
    const r = await verifyBackup(dir);
    assert.equal(r.ok, false);
    assert.equal(r.problems.length, 1);
    assert.equal(r.problems[0].file, path.join(dir, 'manifest.json'));
    assert.match(r.problems[0].problem, /^invalid: manifest\.json: \/method must be equal to one of the allowed values \(enum: /);
    assert.equal(r.manifest, undefined);
    assert.equal(r.warnings.length, 3, 'the other files are named as unchecked');
  });

  it('a manifest that is not JSON, or missing, fails', async () => {
    const m = path.join(dir, 'manifest.json');
    fs.writeFileSync(m, '{"format": "vm-backup-manifest@1",');
    let r = await verifyBackup(dir);
    assert.match(about(r.problems, m)[0], /^not valid JSON/);
    fs.rmSync(m);
    r = await verifyBackup(dir);
    assert.deepEqual(about(r.problems, m), ['missing']);
  });

  it('a manifest listing a path that leaves the directory is refused by the schema', async () => {
    editManifest(dir, (m) => {
      m.files[0].name = '../../../etc/passwd';
    });
    const r = await verifyBackup(dir);
    assert.equal(r.ok, false);
    assert.match(r.problems[0].problem, /\/files\/0\/name must match pattern/);
  });

  it('a manifest whose totals or names disagree with its files fails', async () => {
    editManifest(dir, (m) => {
      m.totalBytes += 1;
    });
    const r = await verifyBackup(dir, { skipImageCheck: true });
    assert.match(about(r.problems, path.join(dir, 'manifest.json'))[0], /^totalBytes is \d+ but its files add up to \d+$/);
  });

  it('symbolic links are reported and never followed (a listed file, or the backup directory itself)', async () => {
    const outside = path.join(tmp, 'outside.vmstate');
    const state = path.join(dir, 'state.vmstate');
    fs.renameSync(state, outside);
    fs.symlinkSync(outside, state);
    let r = await verifyBackup(dir, { skipImageCheck: true });
    assert.deepEqual(about(r.problems, state), ['is a symbolic link (not followed)']);
    const link = path.join(tmp, 'link-to-backup');
    fs.symlinkSync(dir, link);
    r = await verifyBackup(link);
    assert.deepEqual(r.problems, [{ file: link, problem: 'is a symbolic link (not followed)' }]);
  });

  it('warns (does not fail) when a backup was moved away from <host>/<vm>/<backupId>', async () => {
    const moved = path.join(tmp, 'copy-of-backup');
    fs.cpSync(dir, moved, { recursive: true });
    const r = await verifyBackup(moved, { skipImageCheck: true });
    assert.equal(r.ok, true);
    assert.match(r.warnings[0].problem, /^describes lab\/vm-one\/20261122T101500Z-abc123 but lies in /);
  });
});

describe('verifyRepository and vm-backup-verify', function () {
  this.timeout(30_000);
  let tmp: string;
  let good: string;
  let bad: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-verify-repo-'));
    good = makeBackup(tmp, 'vm-one');
    bad = makeBackup(tmp, 'vm-two', '20261122T111500Z-def456');
    flipByte(path.join(bad, 'definition.json'), 3);
    fs.mkdirSync(path.join(tmp, 'lab', 'vm-one', '.partial-20261122T121500Z-ghi789'));
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('checks every backup under the root and names the damaged one', async () => {
    const r = await verifyRepository(tmp);
    assert.equal(r.ok, false);
    assert.deepEqual(
      r.backups.map((b) => [b.dir, b.ok]),
      [
        [good, true],
        [bad, false],
      ],
    );
    assert.deepEqual(
      r.warnings.map((w) => w.problem),
      ['an unpublished (partial) backup; not checked'],
    );
    const text = formatReport(r);
    assert.match(text, new RegExp(`FAIL ${path.join(bad, 'definition.json').replace(/[.]/g, '\\.')}: sha256 `));
    assert.match(text, /verified 2 backups: 1 failed/);
  });

  it('verifyPath takes a backup directory or a root; an empty root is a problem', async () => {
    assert.equal((await verifyPath(good)).backups.length, 1);
    assert.equal((await verifyPath(path.join(tmp, 'lab', 'vm-one'))).ok, true);
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-verify-empty-'));
    try {
      const r = await verifyPath(empty);
      assert.equal(r.ok, false);
      assert.match(r.problems[0].problem, /holds no backup/);
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });

  it('the CLI exits 0 on a good backup, 1 naming the file on a bad one, 2 on usage errors', () => {
    let r = spawnSync(process.execPath, [CLI, good], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^OK {3}/m);
    assert.match(r.stdout, /all OK$/m);
    r = spawnSync(process.execPath, [CLI, tmp], { encoding: 'utf8' });
    assert.equal(r.status, 1, r.stdout + r.stderr);
    assert.ok(r.stdout.includes(`FAIL ${path.join(bad, 'definition.json')}: sha256 `), r.stdout);
    r = spawnSync(process.execPath, [CLI, '--json', bad], { encoding: 'utf8' });
    assert.equal(r.status, 1);
    assert.equal(JSON.parse(r.stdout).backups[0].problems[0].file, path.join(bad, 'definition.json'));
    r = spawnSync(process.execPath, [CLI], { encoding: 'utf8' });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /no directory given/);
  });
});
