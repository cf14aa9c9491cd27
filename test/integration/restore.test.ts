// A backup that restores: the lab guests are backed up through the Node-RED pipeline, the backups
// are verified (vm-backup-verify's checks), and then started again in NEW QEMU processes (own
// sockets in a temporary directory, TCG, the lab's kernel and initramfs, the restored data disk):
//   - vm-agent (child-vm-snapshot, application-consistent): the restored guest boots, its agent
//     answers, and the records on its data disk are whole and carry on from the backup's last one;
//   - vm-noagent (saved-state): QEMU started with the VM's own command line and `-incoming defer`,
//     the saved memory fed in through QMP migrate-incoming (unix: socket), and the guest resumes
//     where it was saved (no new boot, its workload continues the same sequence on the restored disk).
// The procedure is the one docs/restore.md gives. Every QEMU started here is stopped in after hooks.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createReadStream, promises as fs, mkdtempSync, readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { verifyRecords } from '../../lab/guest-image';
import { qmpCommand, QgaSession } from '../../lab/jsonline';
import {
  labStatus,
  readDataFileOffline,
  readGuestFileViaAgent,
  startLab,
  vmPaths,
  waitForAgent,
  waitForWorkload,
  type LabVmPaths,
} from '../../lab/lab-vms';
import { pidAlive, readPidFile, run, sleep, tailFile, waitUntil } from '../../lab/util';
import { formatReport, verifyBackup, verifyRepository } from '../../src/verify';
import { inspectImage } from '../support/image-check';
import { helper } from '../nodes/flow-fixture';
import { backupOneVm } from '../support/lab-backup';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
/** the two lab VMs this suite backs up and restores (a shared lab may run more; they are left out) */
const NEEDED = ['vm-agent', 'vm-noagent'];
const CLI = path.resolve(__dirname, '../../src/cli/verify.js');

/** Run the pipeline node by node over a subset of the host's VMs (dropped between enumerate and classify). */
function backupThroughNodeRed(vm: string, fallback: string, repository: string, journalDir: string): Promise<any> {
  return backupOneVm(vm, fallback, { socketDir: path.join(LAB, 'run'), repository, journalDir });
}

/** A QEMU process this suite started (daemonized): its pidfile, sockets and console log. */
interface Restored {
  dir: string;
  paths: LabVmPaths;
}
const started: Restored[] = [];

/** Paths of a restored VM in its own directory; `name` also goes into -name guest=<name>. */
function restoredPaths(dir: string, name: string, dataImage: string): LabVmPaths {
  return {
    name,
    labDir: dir,
    dataImage,
    dataFormat: 'qcow2',
    qmpSocket: path.join(dir, `${name}.qmp`),
    qgaSocket: path.join(dir, `${name}.qga`),
    pidFile: path.join(dir, `${name}.pid`),
    logFile: path.join(dir, `${name}.log`),
    nbdImage: '',
    nbdSocket: '',
    nbdPidFile: '',
  };
}

/**
 * The VM's own command line from the backup's definition.json, pointed at the restored disk and at
 * new sockets, pidfile and console log (what docs/restore.md does by hand).
 */
function restoredCommandLine(definition: any, original: LabVmPaths, restored: LabVmPaths): string[] {
  const argv: string[] = definition.commandLine;
  assert.ok(Array.isArray(argv) && argv.length > 1, 'definition.json holds the command line');
  const swaps: [string, string][] = [
    [original.dataImage, restored.dataImage],
    [original.qmpSocket, restored.qmpSocket],
    [original.qgaSocket, restored.qgaSocket],
    [original.pidFile, restored.pidFile],
    [original.logFile, restored.logFile],
  ];
  return argv.slice(1).map((a) => {
    if (a === `guest=${original.name}`) return `guest=${restored.name}`;
    for (const [from, to] of swaps) a = a.split(from).join(to);
    return a;
  });
}

async function startQemu(r: Restored, args: string[]): Promise<number> {
  started.push(r);
  const res = await run('qemu-system-x86_64', args, { timeoutMs: 60_000 });
  assert.equal(res.code, 0, `qemu-system-x86_64 failed: ${res.stderr}`);
  const pid = readPidFile(r.paths.pidFile);
  assert.ok(pid && pidAlive(pid), `restored QEMU runs: ${res.stderr}`);
  return pid;
}

/** QMP quit, then signals; never leaves a QEMU of ours behind. */
async function stopQemu(r: Restored): Promise<void> {
  const pid = readPidFile(r.paths.pidFile);
  if (pid === undefined || !pidAlive(pid)) return;
  await qmpCommand(r.paths.qmpSocket, 'quit', undefined, 5000).catch(() => undefined);
  if (await waitUntil(() => !pidAlive(pid), 10_000, 100)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
  await waitUntil(() => !pidAlive(pid), 5000, 100);
}

function qemuImg(args: string[]): void {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `qemu-img ${args.join(' ')}: ${r.stderr}`);
}

/** Power off the lab VMs this suite started (the shared lab's others are left alone). */
async function stopLabVms(names: string[]): Promise<void> {
  await Promise.all(
    names.map(async (name) => {
      const p = vmPaths(name, LAB);
      const pid = readPidFile(p.pidFile);
      if (pid === undefined || !pidAlive(pid)) return;
      await qmpCommand(p.qmpSocket, 'system_powerdown', undefined, 5000).catch(() => undefined);
      if (await waitUntil(() => !pidAlive(pid), 20_000, 200)) return;
      await stopQemu({ dir: '', paths: p });
    }),
  );
}

describe('restore: backups that verify and boot again', function () {
  this.timeout(600_000);
  let tmp: string;
  let repository: string;
  let journalDir: string;
  let guest: { kernel: string; initramfs: string };
  let startedHere: string[] = [];

  before(async function () {
    this.timeout(300_000);
    const alive = new Set(
      labStatus(LAB)
        .vms.filter((v) => v.alive)
        .map((v) => v.name),
    );
    startedHere = NEEDED.filter((n) => !alive.has(n));
    const lab = await startLab({ labDir: LAB, vms: NEEDED, install: false, timeoutMs: 180_000 });
    guest = lab.guest;
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-restore-'));
    repository = path.join(tmp, 'repo');
    journalDir = path.join(tmp, 'journal');
    await fs.mkdir(repository);
    await fs.mkdir(journalDir);
  });
  after(async function () {
    this.timeout(120_000);
    for (const r of started) await stopQemu(r).catch(() => undefined);
    if (startedHere.length && !process.env.VMBACKUP_KEEP_LAB) await stopLabVms(startedHere);
    if (tmp && !process.env.VMBACKUP_RESTORE_KEEP) await fs.rm(tmp, { recursive: true, force: true });
    else if (tmp) console.log(`kept ${tmp}`);
  });
  beforeEach((done) => {
    helper.startServer(done);
  });
  afterEach(async () => {
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
  });

  describe('vm-agent: application-consistent backup, booted again from its restored disk', () => {
    let backupDir = '';
    let manifest: any;

    it('backs up vm-agent through Node-RED with its guest agent', async () => {
      const vm = await backupThroughNodeRed('vm-agent', 'checkpoint', repository, journalDir);
      assert.equal(vm.method, 'child-vm-snapshot');
      assert.equal(vm.consistency, 'application');
      backupDir = path.join(repository, vm.copy.path);
      manifest = JSON.parse(readFileSync(path.join(backupDir, 'manifest.json'), 'utf8'));
    });

    it('(a) verifies the backup, and fails a copy with one byte flipped in its disk, naming the file', async () => {
      assert.ok(backupDir, 'backed up');
      const ok = await verifyBackup(backupDir);
      assert.equal(ok.ok, true, formatReport({ root: backupDir, ok: ok.ok, backups: [ok], problems: [], warnings: [], ms: 0 }));
      assert.deepEqual(ok.warnings, []);
      assert.ok(ok.files.some((f) => f.kind === 'disk' && f.imageCheck === 'ok'));

      // a copy of the backup under a second root, same <host>/<vm>/<backupId> layout
      const copyRoot = path.join(tmp, 'tampered');
      const copy = path.join(copyRoot, manifest.host, manifest.vm, manifest.backupId);
      await fs.cp(backupDir, copy, { recursive: true });
      const disk = manifest.files.find((f: any) => f.kind === 'disk');
      const diskCopy = path.join(copy, disk.name);
      const fh = await fs.open(diskCopy, 'r+');
      try {
        const at = Math.floor(disk.bytes / 2);
        const b = Buffer.alloc(1);
        await fh.read(b, 0, 1, at);
        b[0] ^= 0x01;
        await fh.write(b, 0, 1, at);
      } finally {
        await fh.close();
      }
      const bad = await verifyBackup(copy);
      assert.equal(bad.ok, false);
      assert.ok(bad.problems.length >= 1 && bad.problems.every((p) => p.file === diskCopy), JSON.stringify(bad.problems));
      assert.match(bad.problems[0].problem, /^sha256 [0-9a-f]{64} does not match the manifest's /);

      // the whole repository root: the CLI passes it; the tampered root makes it exit 1 naming the file
      const good = spawnSync(process.execPath, [CLI, repository], { encoding: 'utf8' });
      assert.equal(good.status, 0, good.stdout + good.stderr);
      const failed = spawnSync(process.execPath, [CLI, copyRoot], { encoding: 'utf8' });
      assert.equal(failed.status, 1, failed.stdout + failed.stderr);
      assert.ok(failed.stdout.includes(`FAIL ${diskCopy}: sha256 `), failed.stdout);
    });

    it('(b) a new QEMU boots from the restored disk: its agent answers, the records verify and carry on', async () => {
      assert.ok(backupDir, 'backed up');
      const disk = manifest.files.find((f: any) => f.kind === 'disk' && f.disk === 'drive-virtio0');
      const inBackup = inspectImage(path.join(backupDir, disk.name));
      assert.ok(inBackup.records.ok && inBackup.records.whole > 0, `records in the backup: ${inBackup.records.errors.join('; ')}`);

      // put the disk back: a copy of the backup's qcow2 (the backup itself stays untouched)
      const dir = mkdtempSync(path.join(tmp, 'agent-'));
      const image = path.join(dir, 'vm-agent-data.qcow2');
      qemuImg(['convert', '-p', '-f', 'qcow2', '-O', 'qcow2', path.join(backupDir, disk.name), image]);
      const r: Restored = { dir, paths: restoredPaths(dir, 'vm-agent-restored', image) };
      const definition = JSON.parse(readFileSync(path.join(backupDir, 'definition.json'), 'utf8'));
      const args = restoredCommandLine(definition, vmPaths('vm-agent', LAB), r.paths);
      assert.ok(args.includes(guest.kernel) && args.includes(guest.initramfs), 'the lab kernel and initramfs');
      assert.ok(
        args.some((a) => a.startsWith('tcg')),
        'TCG',
      );
      const shared = args.filter((a) => a.includes(path.join(LAB, 'run')) || a.includes(path.join(LAB, 'images')));
      assert.deepEqual(shared, [], 'no socket, pidfile, log or image of the lab VM is shared');
      const t0 = Date.now();
      await startQemu(r, args);

      await waitForWorkload(r.paths, 180_000);
      await waitForAgent(r.paths, 180_000);
      const bootMs = Date.now() - t0;
      const s = await QgaSession.open(r.paths.qgaSocket, 10_000);
      try {
        assert.equal((await s.execute('guest-get-host-name'))['host-name'], 'vm-agent', 'the guest answers as itself');
        const fsinfo = (await s.execute('guest-get-fsinfo')) as { mountpoint: string; type: string }[];
        assert.ok(
          fsinfo.some((f) => f.mountpoint === '/data' && f.type === 'ext4'),
          JSON.stringify(fsinfo),
        );
      } finally {
        s.close();
      }
      // through the agent: the file on the restored disk holds the backup's records and new ones after them
      await sleep(2000);
      const live = verifyRecords(await readGuestFileViaAgent(r.paths, '/data/records.log', undefined, 20_000));
      assert.equal(live.ok, true, live.errors.join('; '));
      assert.equal(live.firstSeq, inBackup.records.firstSeq, 'the restored file starts where the original did');
      assert.ok(live.lastSeq > inBackup.records.lastSeq, `the restored guest writes on (${inBackup.records.lastSeq} -> ${live.lastSeq})`);
      // and offline, from the restored image, with the lab's record check
      const offline = verifyRecords(await readDataFileOffline(r.paths));
      assert.equal(offline.ok, true, offline.errors.join('; '));
      assert.ok(offline.lastSeq >= inBackup.records.lastSeq);
      console.log(
        `      restored vm-agent: agent and workload after ${bootMs} ms; records ${inBackup.records.lastSeq} in the backup -> ${live.lastSeq}`,
      );
      await stopQemu(r);
    });
  });

  describe('vm-noagent: saved-state backup, resumed from its saved memory', () => {
    let backupDir = '';
    let manifest: any;

    it('backs up vm-noagent with the saved-state policy', async () => {
      const vm = await backupThroughNodeRed('vm-noagent', 'saved-state', repository, journalDir);
      assert.equal(vm.method, 'saved-state');
      backupDir = path.join(repository, vm.copy.path);
      manifest = JSON.parse(readFileSync(path.join(backupDir, 'manifest.json'), 'utf8'));
      assert.ok(manifest.files.some((f: any) => f.kind === 'saved-state'));
      const report = await verifyBackup(backupDir);
      assert.equal(report.ok, true, JSON.stringify(report.problems));
    });

    it('(c) QEMU with -incoming defer + migrate-incoming from the state file resumes the guest on the restored disk', async () => {
      assert.ok(backupDir, 'backed up');
      const disk = manifest.files.find((f: any) => f.kind === 'disk' && f.disk === 'drive-virtio0');
      const state = manifest.files.find((f: any) => f.kind === 'saved-state');
      const inBackup = inspectImage(path.join(backupDir, disk.name));
      assert.ok(inBackup.records.ok, inBackup.records.errors.join('; '));

      const dir = mkdtempSync(path.join(tmp, 'saved-'));
      const image = path.join(dir, 'vm-noagent-data.qcow2');
      qemuImg(['convert', '-f', 'qcow2', '-O', 'qcow2', path.join(backupDir, disk.name), image]);
      const r: Restored = { dir, paths: restoredPaths(dir, 'vm-noagent-restored', image) };
      const definition = JSON.parse(readFileSync(path.join(backupDir, 'definition.json'), 'utf8'));
      const args = [...restoredCommandLine(definition, vmPaths('vm-noagent', LAB), r.paths), '-incoming', 'defer'];
      await startQemu(r, args);
      assert.equal((await qmpCommand(r.paths.qmpSocket, 'query-status')).status, 'inmigrate');

      // QEMU listens on a unix socket; the state file is streamed into it (no shell anywhere)
      const sock = path.join(dir, 'incoming.sock');
      await qmpCommand(r.paths.qmpSocket, 'migrate-incoming', { uri: `unix:${sock}` });
      const t0 = Date.now();
      const streamed = await new Promise<Error | undefined>((resolve) => {
        const c = net.connect(sock);
        c.once('connect', () => pipeline(createReadStream(path.join(backupDir, state.name)), c).then(() => resolve(undefined), resolve));
        c.once('error', resolve);
      });
      // QEMU closes the socket as soon as it has read the stream's end marker, which may be before
      // this side saw its write finish ("premature close"): whether the state loaded is QEMU's to say
      // (query-migrate below), not the socket's
      const streamError = streamed ? ` (the stream ended with ${streamed.message})` : '';
      let status = '';
      assert.ok(
        await waitUntil(
          async () => {
            const m = await qmpCommand(r.paths.qmpSocket, 'query-migrate');
            if (m.status === 'failed')
              throw new Error(`incoming migration failed${streamError}: ${m['error-desc'] ?? ''}; ${tailFile(r.paths.logFile, 800)}`);
            status = (await qmpCommand(r.paths.qmpSocket, 'query-status')).status;
            return m.status === 'completed' && status !== 'inmigrate';
          },
          120_000,
          200,
        ),
        `incoming migration completes (status ${status})`,
      );
      // saved with its vCPUs stopped, so it arrives paused: cont, as post-snapshot did on the original
      if (status === 'paused') await qmpCommand(r.paths.qmpSocket, 'cont');
      const st = await qmpCommand(r.paths.qmpSocket, 'query-status');
      assert.equal(st.status, 'running');
      assert.equal(st.running, true);
      const loadMs = Date.now() - t0;

      // it resumed, it did not boot: the workload goes on with the same sequence on the restored disk
      let after = inBackup.records;
      assert.ok(
        await waitUntil(
          async () => {
            after = verifyRecords(await readDataFileOffline(r.paths));
            return after.lastSeq > inBackup.records.lastSeq + 20;
          },
          90_000,
          2000,
        ),
        `records grow after the resume (${inBackup.records.lastSeq} -> ${after.lastSeq})`,
      );
      assert.equal(after.ok, true, after.errors.join('; '));
      assert.equal(after.firstSeq, inBackup.records.firstSeq);
      const console_ = readFileSync(r.paths.logFile, 'latin1');
      assert.doesNotMatch(console_, /LAB-BOOT|LAB-WORKLOAD-STARTED/, 'no new boot: the guest resumed from its memory');
      console.log(
        `      resumed vm-noagent: state ${state.bytes} bytes loaded and running after ${loadMs} ms; records ${inBackup.records.lastSeq} -> ${after.lastSeq}`,
      );
      await stopQemu(r);
    });
  });

  describe('the repository', () => {
    it('every backup of this suite verifies, the root given once', async () => {
      const r = await verifyRepository(repository);
      assert.equal(r.ok, true, formatReport(r));
      assert.equal(r.backups.length, 2);
    });
  });
});
