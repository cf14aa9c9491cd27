// Single-file restore through the vmbackup-file-restore node, against a backup taken through
// Node-RED of an offline VM (an inventory entry; no boot needed) whose disk holds four file
// systems (ext4, xfs, vfat, NTFS), each with a known tree: every one lists and extracts, to a
// directory and to a tar file, equal to what was put in; symbolic links are left out; paths that
// would leave the output are refused. A planted hostile image (a damaged ext4 whose manifest
// was made to match) fails cleanly in the appliance with nothing mounted or left on the host,
// and one whose backing file points at a host file is refused before anything reads it.
// Needs libguestfs-tools (skips saying so without it); every appliance runs under TCG.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { helper } from '../nodes/flow-fixture';
import { backupOneVm } from '../support/lab-backup';
import { actOn, loadActionNode, refused, serverPerCase } from '../support/restore-flow';

const FILESYSTEMS = [
  { dev: '/dev/sda1', type: 'ext4' },
  { dev: '/dev/sda2', type: 'xfs' },
  { dev: '/dev/sda3', type: 'vfat' },
  { dev: '/dev/sda4', type: 'ntfs' },
];
const GUESTFS_ENV = { ...process.env, LIBGUESTFS_BACKEND: 'direct', LIBGUESTFS_BACKEND_SETTINGS: 'force_tcg' };
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

function sh(file: string, args: string[], env = process.env): string {
  const r = spawnSync(file, args, { encoding: 'utf8', env, maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

function mounts(): string {
  return readFileSync('/proc/mounts', 'utf8');
}

describe('file restore: single files out of a backup, read by a throwaway appliance', function () {
  this.timeout(3_600_000);
  let tmp = '';
  let repository = '';
  let root = '';
  let runDir = '';
  let backupId = '';
  const blob = randomBytes(300_000);
  const flow = () => ({ socketDir: runDir, repository, journalDir: path.join(tmp, 'journal') });

  before(async function () {
    if (spawnSync('guestfish', ['--version']).status !== 0) {
      console.log('    file restore skipped: guestfish is not installed (Debian libguestfs-tools)');
      this.skip();
    }
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-file-restore-'));
    repository = path.join(tmp, 'repo');
    root = path.join(tmp, 'restored');
    runDir = path.join(tmp, 'run');
    for (const d of [repository, root, runDir, path.join(tmp, 'journal')]) await fs.mkdir(d);
    // the disk: four partitions, each file system with the same tree (made by libguestfs too)
    const disk = path.join(tmp, 'vm-files.raw');
    sh('truncate', ['-s', '480M', disk]);
    writeFileSync(path.join(tmp, 'blob.bin'), blob);
    const script = [
      'run',
      'part-init /dev/sda mbr',
      'part-add /dev/sda p 2048 83967',
      'part-add /dev/sda p 83968 733183',
      'part-add /dev/sda p 733184 815103',
      'part-add /dev/sda p 815104 -2048',
    ];
    for (const f of FILESYSTEMS) {
      script.push(
        `mkfs ${f.type} ${f.dev}`,
        `mount ${f.dev} /`,
        'mkdir-p /etc/app/conf.d',
        `write /etc/app/app.conf "fs=${f.type}"`,
        `upload ${path.join(tmp, 'blob.bin')} /etc/app/conf.d/blob.bin`,
        'write /etc/hostname "vm-files"',
        ...(f.type === 'vfat' ? [] : ['ln-s /etc/hostname /etc/app/link']),
        'umount /',
      );
    }
    await fs.writeFile(path.join(tmp, 'make.gf'), script.join('\n') + '\n');
    sh('guestfish', ['--format=raw', '-a', disk, '-f', path.join(tmp, 'make.gf')], GUESTFS_ENV);
    // an offline VM of the host's inventory, backed up through Node-RED
    writeFileSync(
      path.join(runDir, 'vm-files.vm.json'),
      JSON.stringify({ name: 'vm-files', disks: [{ id: 'virtio0', file: disk, format: 'raw' }] }),
    );
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
    try {
      const vm = await backupOneVm('vm-files', 'checkpoint', { socketDir: runDir, repository, journalDir: path.join(tmp, 'journal') });
      assert.equal(vm.method, 'offline');
      backupId = path.basename(vm.copy.path);
    } finally {
      await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    }
  });
  after(async () => {
    if (tmp && !process.env.VMBACKUP_RESTORE_KEEP) await fs.rm(tmp, { recursive: true, force: true });
  });
  serverPerCase();

  it('lists a directory (the file system found by itself)', async () => {
    await loadActionNode('vmbackup-file-restore', { vm: 'vm-files', root, action: 'list', paths: '/etc/app' }, flow());
    const r = (await actOn({}, 900_000)).payload;
    assert.equal(r.backupId, backupId);
    assert.equal(r.filesystem, '/dev/sda1');
    assert.deepEqual(
      r.filesystems.map((f: any) => f.type),
      ['ext4', 'xfs', 'vfat', 'ntfs'],
    );
    const byName = Object.fromEntries(r.entries.map((e: any) => [e.name, e]));
    assert.equal(byName['app.conf'].type, 'file');
    assert.equal(byName['app.conf'].size, 'fs=ext4'.length);
    assert.equal(byName['conf.d'].type, 'directory');
    assert.equal(byName.link.type, 'symlink');
    assert.equal(byName.link.target, '/etc/hostname');
  });

  for (const f of FILESYSTEMS) {
    it(`${f.type}: a directory and a file out, equal to what was put in; a symbolic link left out`, async () => {
      await loadActionNode('vmbackup-file-restore', { vm: 'vm-files', root, filesystem: f.dev }, flow());
      const target = path.join(root, `files-${f.type}`);
      const before = mounts();
      const msg = await actOn({ paths: ['/etc/app', '/etc/hostname'], target }, 900_000);
      const r = msg.payload;
      assert.equal(r.filesystem, f.dev);
      assert.deepEqual(readdirSync(target).sort(), ['app', 'hostname']);
      assert.equal(readFileSync(path.join(target, 'app', 'app.conf'), 'utf8'), `fs=${f.type}`);
      assert.equal(sha(readFileSync(path.join(target, 'app', 'conf.d', 'blob.bin'))), sha(blob));
      assert.equal(readFileSync(path.join(target, 'hostname'), 'utf8'), 'vm-files');
      if (f.type !== 'vfat') {
        assert.ok(!readdirSync(path.join(target, 'app')).includes('link'), 'the symbolic link is not made on the host');
        assert.ok(
          r.skipped.some((s: string) => s.includes('/etc/app/link') && s.includes('symbolic link')),
          JSON.stringify(r.skipped),
        );
      }
      assert.equal(mounts(), before, 'nothing mounted on the host');
      assert.deepEqual(
        readdirSync(root).filter((n) => n.startsWith('.')),
        [],
        'no scratch left',
      );
      assert.match(msg.summary.text, /^OK extracted \/etc\/app/);
    });
  }

  it('to one tar file; bad paths and targets refused naming the field', async () => {
    await loadActionNode('vmbackup-file-restore', { vm: 'vm-files', root, filesystem: '/dev/sda1' }, flow());
    const target = path.join(root, 'files.tar');
    const r = (await actOn({ paths: ['/etc/app/conf.d'], output: 'tar', target }, 900_000)).payload;
    assert.equal(r.output.kind, 'tar');
    const listed = sh('tar', ['-tf', target]).split('\n').filter(Boolean).sort();
    assert.deepEqual(listed, ['conf.d/', 'conf.d/blob.bin']);
    const out = path.join(tmp, 'untar');
    await fs.mkdir(out);
    sh('tar', ['-xf', target, '-C', out]);
    assert.equal(sha(readFileSync(path.join(out, 'conf.d', 'blob.bin'))), sha(blob));
    for (const [payload, field] of [
      [{ paths: ['etc/hostname'], target: path.join(root, 'r1') }, 'paths'],
      [{ paths: ['/etc/../etc/hostname'], target: path.join(root, 'r2') }, 'paths'],
      [{ paths: ['/etc/hostname'], target: '/etc/vmb-out' }, 'target'],
      [{ paths: ['/etc/hostname'], target }, 'target'],
      [{ paths: ['/etc/hostname', '/hostname'], target: path.join(root, 'r3') }, 'paths'],
      [{ paths: ['/etc/hostname'], target: path.join(root, 'r4'), filesystem: 'sda1;reboot' }, 'filesystem'],
      [{ paths: ['/etc/hostname'], target: path.join(root, 'r5'), disk: 'virtio9' }, 'disk'],
    ] as [Record<string, unknown>, string][]) {
      const m = await refused(payload);
      assert.match(m.error.message, new RegExp(`^(Error: )?${field}: `), `${JSON.stringify(payload)}: ${m.error.message}`);
    }
    const missing = await refused({ paths: ['/etc/nosuch'], target: path.join(root, 'r6') }, 900_000);
    assert.match(missing.error.message, /paths: \/etc\/nosuch/);
    assert.ok(!readdirSync(root).some((n) => /^r[0-9]$/.test(n) || n.startsWith('.')), 'nothing written for a refusal');
  });

  it('a planted hostile image fails cleanly: a damaged file system in the appliance, a backing file on the host refused', async () => {
    // a copy of the backup whose disk is replaced by a damaged ext4, its manifest made to match
    const hostile = path.join(tmp, 'hostile');
    const dir = path.join(hostile, 'lab', 'vm-files', backupId);
    await fs.mkdir(path.dirname(dir), { recursive: true });
    await fs.cp(path.join(repository, 'lab', 'vm-files', backupId), dir, { recursive: true });
    const raw = path.join(tmp, 'bad.raw');
    sh('truncate', ['-s', '64M', raw]);
    sh('mkfs.ext4', ['-q', '-F', raw]);
    const fh = await fs.open(raw, 'r+');
    await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, 4096); // group descriptors and inode tables garbage
    await fh.write(Buffer.from([0xff, 0xff, 0xff, 0x7f]), 0, 4, 1024); // s_inodes_count absurd
    await fh.close();
    const manifestFile = path.join(dir, 'manifest.json');
    const manifest = JSON.parse(readFileSync(manifestFile, 'utf8'));
    const entry = manifest.files.find((x: any) => x.kind === 'disk');
    const image = path.join(dir, entry.name);
    const plant = async (source: string, extra: string[] = []) => {
      await fs.rm(image, { force: true });
      sh('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', ...extra, source, image]);
      const bytes = readFileSync(image);
      Object.assign(entry, { bytes: bytes.length, sha256: sha(bytes), virtualSize: 64 << 20 });
      manifest.totalBytes = manifest.files.reduce((n: number, x: any) => n + x.bytes, 0);
      writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
    };
    await plant(raw);
    await loadActionNode('vmbackup-file-restore', { vm: 'vm-files', root, filesystem: '/dev/sda' }, { ...flow(), repository: hostile });
    const before = mounts();
    const m = await refused({ paths: ['/'], target: path.join(root, 'h1') }, 900_000);
    assert.match(m.error.message, /appliance failed|mount/i, m.error.message);
    assert.equal(mounts(), before, 'nothing mounted on the host');
    assert.equal(spawnSync('pgrep', ['-f', 'guestfs']).status, 1, 'no appliance left running');
    // a qcow2 whose backing file is a host file: never opened (verify refuses the link first)
    await fs.rm(image);
    sh('qemu-img', ['create', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', image, '64M']);
    const b = readFileSync(image);
    Object.assign(entry, { bytes: b.length, sha256: sha(b) });
    manifest.totalBytes = manifest.files.reduce((n: number, x: any) => n + x.bytes, 0);
    writeFileSync(manifestFile, JSON.stringify(manifest, null, 2));
    const m2 = await refused({ paths: ['/'], target: path.join(root, 'h2') });
    assert.match(m2.error.message, /backup: .* does not verify/, m2.error.message);
    assert.ok(!readdirSync(root).some((n) => n === 'h1' || n === 'h2' || n.startsWith('.')), 'nothing written');
  });
});
