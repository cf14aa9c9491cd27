// The restore nodes against backups of the lab guests taken through Node-RED (three backups of
// vm-agent: a full and two incrementals; one saved-state backup of vm-noagent), shared by every
// case: a middle point restored to a directory (records whole, ext4 clean, equal to its chain),
// bad input refused naming the field with nothing written, a new QEMU VM that boots and whose
// agent answers, a saved-state backup resumed from its memory as a new VM, and a restore in place
// over the lab VM's own disk (refused while it runs). Every QEMU started here is stopped after.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs, mkdtempSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { verifyRecords } from '../../lab/guest-image';
import { qmpCommand } from '../../lab/jsonline';
import { labStatus, startLab, vmPaths } from '../../lab/lab-vms';
import { pidAlive, readPidFile, sleep, waitUntil } from '../../lab/util';
import { stopQemu, waitForAgent } from '../../src/restore/qemu-process';
import { verifyBackup } from '../../src/verify';
import { helper } from '../nodes/flow-fixture';
import { inspectImage } from '../support/image-check';
import { backupOneVm } from '../support/lab-backup';
import { actOn, loadActionNode, refused, serverPerCase } from '../support/restore-flow';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const NEEDED = ['vm-agent', 'vm-noagent'];

function sh(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

describe('restore nodes: lab backups restored to a directory, as new VMs, in place', function () {
  this.timeout(900_000);
  let tmp = '';
  let repository = '';
  let journalDir = '';
  let root = '';
  let runDir = '';
  let startedHere: string[] = [];
  const agentIds: string[] = [];
  let savedId = '';
  const pids: { pid: number; qmp: string }[] = [];
  const flow = () => ({ socketDir: runDir, repository, journalDir });

  before(async function () {
    this.timeout(600_000);
    const alive = new Set(
      labStatus(LAB)
        .vms.filter((v) => v.alive)
        .map((v) => v.name),
    );
    startedHere = NEEDED.filter((n) => !alive.has(n));
    await startLab({ labDir: LAB, vms: NEEDED, install: false, timeoutMs: 180_000 });
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-restore-nodes-'));
    repository = path.join(tmp, 'repo');
    journalDir = path.join(tmp, 'journal');
    root = path.join(tmp, 'restored');
    runDir = path.join(tmp, 'run');
    for (const d of [repository, journalDir, root, runDir]) await fs.mkdir(d);
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
    const o = { socketDir: path.join(LAB, 'run'), repository, journalDir };
    try {
      for (let i = 0; i < 3; i++) {
        const vm = await backupOneVm('vm-agent', 'checkpoint', o);
        assert.equal(vm.consistency, 'application');
        agentIds.push(path.basename(vm.copy.path));
        await sleep(1500); // the guest writes on between the points
      }
      savedId = path.basename((await backupOneVm('vm-noagent', 'saved-state', o)).copy.path);
    } finally {
      await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
    }
  });
  after(async function () {
    this.timeout(180_000);
    for (const p of pids) await stopQemu(p.pid, p.qmp).catch(() => undefined);
    const running = new Set(
      labStatus(LAB)
        .vms.filter((v) => v.alive)
        .map((v) => v.name),
    );
    if (startedHere.length && !process.env.VMBACKUP_KEEP_LAB) {
      for (const name of startedHere.filter((n) => running.has(n))) {
        const p = vmPaths(name, LAB);
        const pid = readPidFile(p.pidFile);
        await qmpCommand(p.qmpSocket, 'quit', undefined, 5000).catch(() => undefined);
        if (pid) await waitUntil(() => !pidAlive(pid), 15_000, 200);
      }
    } else if (!running.has('vm-agent')) await startLab({ labDir: LAB, vms: ['vm-agent'], install: false, timeoutMs: 180_000 });
    if (tmp && !process.env.VMBACKUP_RESTORE_KEEP) await fs.rm(tmp, { recursive: true, force: true });
  });
  serverPerCase();

  it('a middle point of a chain to a directory: standalone, equal to its chain, records whole, ext4 clean', async () => {
    assert.equal(agentIds.length, 3, 'three backups of vm-agent');
    await loadActionNode('vmbackup-restore', { mode: 'directory', root, target: path.join(root, '{vm}-{backupId}') }, flow());
    const progress: any[] = [];
    helper.getNode('progress').on('input', (m: any) => progress.push(m));
    const msg = await actOn({ vm: 'vm-agent', backupId: agentIds[1] });
    const r = msg.payload;
    assert.equal(r.backupId, agentIds[1]);
    assert.deepEqual(r.chain, [agentIds[1], agentIds[0]], 'read through its parent down to the full');
    assert.equal(r.target, path.join(root, `vm-agent-${agentIds[1]}`));
    assert.deepEqual(readdirSync(r.target).sort(), ['definition.json', 'disk-drive-virtio0.qcow2', 'restore.json']);
    const image = r.disks[0].file;
    assert.doesNotMatch(sh('qemu-img', ['info', image]), /backing file/, 'no backing file');
    const top = path.join(repository, 'lab', 'vm-agent', agentIds[1], 'disk-drive-virtio0.qcow2');
    sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', top, image]);
    const facts = inspectImage(image);
    assert.equal(facts.records.ok, true, facts.records.errors.join('; '));
    assert.equal(facts.e2fsckExit, 0, 'ext4 clean (an application-consistent point)');
    assert.equal(facts.needsRecovery, false);
    const older = inspectImage(path.join(repository, 'lab', 'vm-agent', agentIds[0], 'disk-drive-virtio0.qcow2')).records;
    assert.ok(
      facts.records.lastSeq > older.lastSeq,
      `the middle point holds more than the full (${older.lastSeq} -> ${facts.records.lastSeq})`,
    );
    assert.equal(msg.summary.ok, true);
    assert.match(msg.summary.text, /^OK restored vm-agent from backup .* through 1 parent/);
    assert.ok(
      progress.length >= 2 && progress.every((p) => p.topic === 'vm-backup/lab/restore'),
      `progress on output 2 (${progress.length})`,
    );
  });

  it('one file out of the middle point (no disk restored, nothing mounted on the host): equal to the guest file at that point', async function () {
    if (spawnSync('guestfish', ['--version']).status !== 0) {
      console.log('      skipped: guestfish is not installed (Debian libguestfs-tools)');
      this.skip();
    }
    await loadActionNode('vmbackup-file-restore', { vm: 'vm-agent', root, filesystem: '/dev/sda' }, flow());
    const target = path.join(root, 'records-middle');
    const r = (await actOn({ backupId: agentIds[1], paths: ['/records.log'], target }, 900_000)).payload;
    assert.equal(r.backupId, agentIds[1]);
    const got = readFileSync(path.join(target, 'records.log'));
    // the same file read another way: debugfs on the flattened point (restored to a directory above)
    const flattened = path.join(root, `vm-agent-${agentIds[1]}`, 'disk-drive-virtio0.qcow2');
    const expected = Buffer.from(sh('debugfs', ['-R', 'cat /records.log', rawOf(flattened)]), 'latin1');
    assert.equal(got.length, expected.length);
    assert.ok(got.equals(expected), 'byte for byte the file of the middle point');
    const records = verifyRecords(got);
    assert.equal(records.ok, true, records.errors.join('; '));
  });

  it('bad input is refused before anything is written, naming the field', async () => {
    await loadActionNode('vmbackup-restore', { mode: 'directory', root }, flow());
    const before = readdirSync(root).sort();
    const cases: [Record<string, unknown>, string][] = [
      [{ vm: 'vm-nosuch', target: path.join(root, 'x1') }, 'vm'],
      [{ vm: 'vm-agent', backupId: '20200101T000000Z-aaaaaa', target: path.join(root, 'x2') }, 'backupId'],
      [{ vm: 'vm-agent', disks: ['drive-nosuch'], target: path.join(root, 'x3') }, 'disks'],
      [{ vm: 'vm-agent', target: path.join(tmp, 'outside') }, 'target'],
      [{ vm: 'vm-agent', target: '/etc/vmb-restore-test' }, 'target'],
      [{ vm: 'vm-agent', target: path.join(root, '..', 'repo', 'x') }, 'target'],
      [{ vm: 'vm-agent', target: before.length ? path.join(root, before[0]) : root }, 'target'],
      [{ vm: 'vm-agent', target: path.join(root, 'x4'), colour: 'blue' }, 'colour'],
      [{ vm: '../vm-agent', target: path.join(root, 'x5') }, 'vm'],
    ];
    for (const [payload, field] of cases) {
      const m = await refused(payload);
      assert.match(m.error.message, new RegExp(`^(Error: )?${field}: `), `${JSON.stringify(payload)} -> ${m.error.message}`);
      assert.equal(m.summary.ok, false);
      assert.equal(m.summary.field, field);
    }
    assert.deepEqual(readdirSync(root).sort(), before, 'nothing written');
    assert.deepEqual(
      readdirSync(path.join(journalDir, 'restore')).filter((n) => n.endsWith('.json')),
      [],
      'no journal entry left',
    );
  });

  it('as a new QEMU VM, instant: it runs at once on the backup, its disk streamed into place; it boots, its agent answers, its records carry on', async () => {
    await loadActionNode('vmbackup-restore', { mode: 'new-vm', root, start: true }, flow());
    const t0 = Date.now();
    // instant: it runs at once on the backup while its disk is streamed into place
    const msg = await actOn({ vm: 'vm-agent', target: path.join(root, 'new-agent'), name: 'rs-agent', instant: true });
    const vm = msg.payload.newVm;
    assert.equal(vm.hypervisor, 'qemu');
    assert.equal(vm.started, true);
    assert.ok(vm.instant && vm.instant.upMs > 0 && vm.instant.streamMs > 0, JSON.stringify(vm.instant));
    assert.doesNotMatch(sh('qemu-img', ['info', '-U', msg.payload.disks[0].file]), /backing file/, 'the new disk stands alone');
    const open = readdirSync(`/proc/${vm.pid}/fd`).map((fd) => {
      try {
        return readlinkSync(`/proc/${vm.pid}/fd/${fd}`);
      } catch {
        return '';
      }
    });
    assert.deepEqual(
      open.filter((f) => f.startsWith(repository)),
      [],
      'nothing of the backup is open',
    );
    pids.push({ pid: vm.pid, qmp: vm.qmpSocket });
    assert.equal(vm.qmpSocket, path.join(runDir, 'rs-agent.qmp'));
    const argv = JSON.parse(readFileSync(vm.commandFile, 'utf8')).args.join(' ');
    assert.doesNotMatch(argv, new RegExp(`${LAB}/(run|images)/`), 'nothing of the lab VM is shared');
    const inventory = JSON.parse(readFileSync(path.join(runDir, 'rs-agent.vm.json'), 'utf8'));
    assert.deepEqual(inventory.disks, [{ id: 'drive-virtio0', file: msg.payload.disks[0].file, format: 'qcow2' }]);
    const agent = await waitForAgent(vm.qgaSocket, Date.now() + 240_000, () => pidAlive(vm.pid));
    try {
      assert.equal((await agent.execute('guest-get-host-name'))['host-name'], 'vm-agent');
    } finally {
      await agent.close();
    }
    const bootMs = Date.now() - t0;
    await sleep(3000);
    const inBackup = inspectImage(path.join(repository, 'lab', 'vm-agent', agentIds[2], 'disk-drive-virtio0.qcow2')).records;
    await stopQemu(vm.pid, vm.qmpSocket);
    const after = verifyRecords(sh('debugfs', ['-R', 'cat /records.log', rawOf(msg.payload.disks[0].file)]));
    assert.equal(after.ok, true, after.errors.join('; '));
    assert.ok(after.lastSeq > inBackup.lastSeq, `the restored guest wrote on (${inBackup.lastSeq} -> ${after.lastSeq})`);
    console.log(`      new VM rs-agent: restored, booted and agent answering after ${bootMs} ms`);
  });

  it('a saved-state backup as a new QEMU VM resumes from its saved memory: no boot, its workload goes on', async () => {
    await loadActionNode('vmbackup-restore', { mode: 'new-vm', root, start: true }, flow());
    const msg = await actOn({ vm: 'vm-noagent', backupId: savedId, target: path.join(root, 'new-saved'), name: 'rs-saved' });
    const vm = msg.payload.newVm;
    pids.push({ pid: vm.pid, qmp: vm.qmpSocket });
    assert.equal(vm.resumed, true);
    assert.equal((await qmpCommand(vm.qmpSocket, 'query-status')).status, 'running');
    assert.ok(readdirSync(msg.payload.target).includes('state.vmstate'));
    const inBackup = inspectImage(path.join(repository, 'lab', 'vm-noagent', savedId, 'disk-drive-virtio0.qcow2')).records;
    await sleep(5000);
    await stopQemu(vm.pid, vm.qmpSocket);
    const after = verifyRecords(sh('debugfs', ['-R', 'cat /records.log', rawOf(msg.payload.disks[0].file)]));
    assert.equal(after.ok, true, after.errors.join('; '));
    assert.ok(after.lastSeq > inBackup.lastSeq + 10, `records grow after the resume (${inBackup.lastSeq} -> ${after.lastSeq})`);
    assert.doesNotMatch(readFileSync(path.join(runDir, 'rs-saved.log'), 'latin1'), /LAB-BOOT|LAB-WORKLOAD-STARTED/, 'no new boot');
  });

  it('boot test of the latest backup: the guest agent answers and a check command in the guest reads the data disk; all torn down', async () => {
    const work = path.join(tmp, 'boot-work');
    await fs.mkdir(work);
    // the data disk is mounted (from the backup, not an empty folder) and its last record is whole
    const check = { command: '/bin/sh' };
    const args = ['-c', 'grep " /data " /proc/mounts && tail -n1 /data/records.log'];
    await loadActionNode(
      'vmbackup-boot-test',
      {
        vm: 'vm-agent',
        workDir: work,
        timeout: 240,
        ...check,
        expect: '^/dev/vda /data ext4[\\s\\S]*^[0-9]+ [0-9]+ [0-9a-f]{64} [0-9a-f]{8}$',
      },
      flow(),
    );
    const msg = await actOn({ args });
    const r = msg.payload;
    assert.equal(r.ok, true, `${r.reason}; console: ${r.consoleTail.slice(-500)}`);
    assert.equal(r.backupId, agentIds[2]);
    assert.equal(r.step, 'done');
    assert.equal(r.accel, 'tcg');
    assert.equal(r.command.exitcode, 0);
    assert.equal(r.command.matched, true);
    assert.ok(r.osinfo && typeof r.osinfo === 'object', 'guest-get-osinfo answered');
    assert.ok(r.timings.upMs > 0 && r.timings.totalMs >= r.timings.upMs);
    assert.match(msg.summary.text, /^PASSED boot test of vm-agent/);
    assert.deepEqual(readdirSync(work), [], 'overlays and sockets removed');
    assert.equal(r.record, path.join(repository, 'lab', 'vm-agent', `${agentIds[2]}.boot-test.json`));
    assert.equal(JSON.parse(readFileSync(r.record, 'utf8')).ok, true);
    assert.equal(spawnSync('pgrep', ['-f', 'guest=boot-test-vm-agent']).status, 1, 'no throwaway VM left');
    // the backup itself is untouched: it still verifies (the record lies beside it, not in it)
    assert.equal((await verifyBackup(path.join(repository, 'lab', 'vm-agent', agentIds[2]))).ok, true);
    console.log(`      boot test passed: up after ${r.timings.upMs} ms, ${r.timings.totalMs} ms in all`);
  });

  it('boot test of a damaged backup fails within its timeout: by verify, and (verify off) by the check command', async () => {
    // a copy of the full with the start of its guest disk zeroed (the ext4 superblock gone)
    const damaged = path.join(tmp, 'damaged');
    const copy = path.join(damaged, 'lab', 'vm-agent', agentIds[0]);
    await fs.mkdir(path.dirname(copy), { recursive: true });
    await fs.cp(path.join(repository, 'lab', 'vm-agent', agentIds[0]), copy, { recursive: true });
    sh('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0 0 1M', path.join(copy, 'disk-drive-virtio0.qcow2')]);
    const work = path.join(tmp, 'boot-work2');
    await fs.mkdir(work);
    const settings = {
      vm: 'vm-agent',
      backupId: agentIds[0],
      workDir: work,
      timeout: 120,
      command: '/bin/sh',
      expect: '^/dev/vda /data ext4',
    };
    const args = ['-c', 'grep " /data " /proc/mounts && tail -n1 /data/records.log'];
    await loadActionNode('vmbackup-boot-test', settings, { ...flow(), repository: damaged });
    const byVerify = (await actOn({ args })).payload;
    assert.equal(byVerify.ok, false);
    assert.equal(byVerify.step, 'verify');
    assert.match(byVerify.reason, /does not verify.*sha256/);
    const t0 = Date.now();
    const msg = await actOn({ verify: false, args });
    const r = msg.payload;
    assert.equal(r.ok, false, 'a guest whose data disk is gone does not pass');
    assert.ok(Date.now() - t0 < 120_000 + 15_000, `ended within its timeout (${Date.now() - t0} ms)`);
    assert.match(msg.summary.text, /^FAILED boot test of vm-agent/);
    assert.deepEqual(readdirSync(work), [], 'torn down');
    assert.equal(spawnSync('pgrep', ['-f', 'guest=boot-test-vm-agent']).status, 1, 'no throwaway VM left');
    console.log(`      damaged backup: ${r.reason} (${r.timings.totalMs} ms)`);
  });

  it("in place over the lab VM's own disk: refused while it runs; once it is off, the disk is the point", async () => {
    await loadActionNode('vmbackup-restore', { mode: 'in-place', root }, { ...flow(), socketDir: path.join(LAB, 'run') });
    const p = vmPaths('vm-agent', LAB);
    const m = await refused({ vm: 'vm-agent', backupId: agentIds[1] });
    assert.match(m.error.message, /^(Error: )?vm: VM vm-agent is running/);
    assert.deepEqual(
      readdirSync(path.dirname(p.dataImage)).filter((n) => n.startsWith('.')),
      [],
      "nothing written beside the running VM's disk",
    );
    const pid = readPidFile(p.pidFile)!;
    await qmpCommand(p.qmpSocket, 'system_powerdown', undefined, 5000);
    assert.ok(await waitUntil(() => !pidAlive(pid), 60_000, 200), 'vm-agent powered off');
    const msg = await actOn({ vm: 'vm-agent', backupId: agentIds[1] });
    assert.equal(msg.payload.mode, 'in-place');
    assert.equal(msg.payload.disks[0].file, p.dataImage);
    const top = path.join(repository, 'lab', 'vm-agent', agentIds[1], 'disk-drive-virtio0.qcow2');
    sh('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', top, p.dataImage]);
    assert.deepEqual(
      readdirSync(path.dirname(p.dataImage)).filter((n) => n.includes('.restoring-')),
      [],
      'nothing left beside it',
    );
    assert.equal(inspectImage(p.dataImage).e2fsckExit, 0);
  });
});

/** A raw copy of a qcow2 image (debugfs reads raw), replayed journal; beside the image. */
function rawOf(image: string): string {
  const raw = `${image}.raw`;
  sh('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
  spawnSync('e2fsck', ['-E', 'journal_only', '-y', raw]);
  return raw;
}
