// In-place restore killed mid-write leaves the old disk or the new one, never a mix: an offline
// VM of the host's inventory (two raw disks, no boot needed) is backed up through Node-RED, its
// disks are changed, then `vm-backup-restore in-place` is killed (SIGKILL, with its qemu-img)
//   - while it writes the new image beside a file disk: recovery rolls back, the disks are as they
//     were before the restore, nothing is left beside them;
//   - while it writes a block device (a loop device), after the file disk was switched: recovery
//     finishes, both disks are the backup's point.
// A disk some process holds open is refused, naming the holder.
import * as assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, mkdtempSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { helper } from '../nodes/flow-fixture';
import { backupOneVm } from '../support/lab-backup';

const CLI = path.resolve(__dirname, '../../src/cli/restore.js');
const MiB = 1 << 20;

function sh(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
const shaOf = (file: string) => sh('sha256sum', [file]).split(' ')[0];

/** Random data over the whole disk (each call different). */
async function fill(file: string, mib: number): Promise<void> {
  const fh = await fs.open(file, 'r+');
  try {
    for (let i = 0; i < mib; i += 4) await fh.write(randomBytes(4 * MiB), 0, 4 * MiB, i * MiB);
  } finally {
    await fh.close();
  }
}

/** Run the CLI in its own process group; kill the group (CLI and qemu-img) when `when` says so. */
async function killedWhen(args: string[], when: () => Promise<boolean>, timeoutMs = 120_000): Promise<boolean> {
  const child = spawn(process.execPath, [CLI, ...args], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let done = false;
  void exited.then(() => (done = true));
  const end = Date.now() + timeoutMs;
  while (!done && Date.now() < end) {
    if (await when()) {
      process.kill(-child.pid!, 'SIGKILL');
      await exited;
      return true;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
  await exited;
  throw new Error(`the restore ended before the moment to kill it: ${out}`);
}

describe('in-place restore: crash-safe (old or new, never a mix), refused while a disk is held', function () {
  this.timeout(600_000);
  let tmp = '';
  let backupDir = '';
  let d1 = '';
  let d2 = '';
  let journal = '';
  let loop = '';
  let oldD1 = '';

  before(async function () {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-in-place-'));
    const runDir = path.join(tmp, 'run');
    const repository = path.join(tmp, 'repo');
    journal = path.join(tmp, 'journal');
    for (const d of [runDir, repository, journal, path.join(tmp, 'disks'), path.join(tmp, 'root')]) await fs.mkdir(d);
    d1 = path.join(tmp, 'disks', 'd1.raw');
    d2 = path.join(tmp, 'disks', 'd2.raw');
    for (const d of [d1, d2]) {
      sh('truncate', ['-s', '96M', d]);
      await fill(d, 96);
    }
    writeFileSync(
      path.join(runDir, 'vm-disks.vm.json'),
      JSON.stringify({
        disks: [
          { id: 'virtio0', file: d1, format: 'raw' },
          { id: 'virtio1', file: d2, format: 'raw' },
        ],
      }),
    );
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
    try {
      const vm = await backupOneVm('vm-disks', 'checkpoint', { socketDir: runDir, repository, journalDir: journal });
      backupDir = path.join(repository, vm.copy.path);
    } finally {
      await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    }
    // the VM's disks change after the backup: what an interrupted restore must not half-replace
    await fill(d1, 96);
    await fill(d2, 96);
    oldD1 = shaOf(d1);
  });
  after(async () => {
    if (loop) spawnSync('losetup', ['-d', loop]);
    if (tmp && !process.env.VMBACKUP_RESTORE_KEEP) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('a disk a process holds open is refused, naming the process; nothing is written', async () => {
    // a holder that does not name the file on its command line: found by its open file descriptors
    const holder = spawn(process.execPath, ['-e', "require('fs').openSync(process.env.F, 'r'); setTimeout(() => undefined, 60000)"], {
      stdio: 'ignore',
      env: { ...process.env, F: d1 },
    });
    try {
      const opened = () =>
        readdirSync(`/proc/${holder.pid}/fd`).some((fd) => {
          try {
            return readlinkSync(`/proc/${holder.pid}/fd/${fd}`) === d1;
          } catch {
            return false;
          }
        });
      for (let i = 0; i < 200 && !opened(); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(opened(), 'the holder has the disk open');
      const r = spawnSync(process.execPath, [CLI, 'in-place', backupDir, '--journal-dir', journal, '--root', path.join(tmp, 'root')], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`vm: its disks are in use: pid ${holder.pid} \\(open: `));
      assert.equal(shaOf(d1), oldD1);
      assert.deepEqual(readdirSync(path.dirname(d1)).sort(), ['d1.raw', 'd2.raw']);
    } finally {
      holder.kill('SIGKILL');
    }
  });

  it('killed while writing beside the file disk: recovery rolls back, the disks are as before', async () => {
    const oldD2 = shaOf(d2);
    const partial = () => readdirSync(path.dirname(d1)).some((n) => n.startsWith('.d1.raw.restoring-'));
    await killedWhen(['in-place', backupDir, '--journal-dir', journal, '--root', path.join(tmp, 'root')], async () => partial());
    assert.ok(partial(), 'killed with the new image half-written beside the disk');
    assert.equal(readdirSync(path.join(journal, 'restore')).filter((n) => n.endsWith('.json')).length, 1, 'the journal names it');
    const r = spawnSync(process.execPath, [CLI, 'recover', '--journal-dir', journal], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^OK {3}in-place: rolled back the in-place restore of vm-disks/m);
    assert.equal(shaOf(d1), oldD1, 'd1 is its old self');
    assert.equal(shaOf(d2), oldD2, 'd2 is its old self');
    assert.deepEqual(readdirSync(path.dirname(d1)).sort(), ['d1.raw', 'd2.raw'], 'nothing left beside the disks');
    assert.deepEqual(
      readdirSync(path.join(journal, 'restore')).filter((n) => n.endsWith('.json')),
      [],
    );
  });

  it("killed while writing the block device: recovery finishes, every disk is the backup's point", async () => {
    // d2 becomes a block device (a loop device over its current content), as an LVM volume would be
    const backing = path.join(tmp, 'disks', 'd2-device.img');
    await fs.rename(d2, backing);
    loop = sh('losetup', ['-f', '--show', backing]).trim();
    await fs.symlink(loop, d2);
    const entry = () => {
      const names = readdirSync(path.join(journal, 'restore')).filter((n) => n.endsWith('.json'));
      if (!names.length) return undefined;
      try {
        return JSON.parse(readFileSync(path.join(journal, 'restore', names[0]), 'utf8'));
      } catch {
        return undefined;
      }
    };
    let switchedAt = 0;
    await killedWhen(['in-place', backupDir, '--journal-dir', journal, '--root', path.join(tmp, 'root')], async () => {
      const e = entry();
      if (e?.phase !== 'switching' || !e.disks[0].done) return false;
      switchedAt ||= Date.now();
      return Date.now() - switchedAt > 150; // mid-write of the device
    });
    const e = entry();
    assert.equal(e.phase, 'switching');
    assert.equal(e.disks[1].done, undefined, 'killed before the device was written whole');
    const top = (id: string) =>
      path.join(
        backupDir,
        JSON.parse(readFileSync(path.join(backupDir, 'manifest.json'), 'utf8')).files.find((f: any) => f.disk === id).name,
      );
    const r = spawnSync(process.execPath, [CLI, 'recover', '--journal-dir', journal], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /finished the in-place restore of vm-disks/);
    sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top('virtio0'), d1]);
    sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', top('virtio1'), loop]);
    assert.deepEqual(readdirSync(path.join(tmp, 'root')), [], 'the old content saved aside is gone once the new one is whole');
    assert.deepEqual(
      readdirSync(path.join(journal, 'restore')).filter((n) => n.endsWith('.json')),
      [],
    );
  });
});
