/**
 * Lab host integration test: boots the three lab VMs (TCG) in a temporary lab
 * dir, talks to their QMP / guest-agent sockets and stops them again.
 * Needs root, qemu-system-x86, qemu-utils, qemu-guest-agent, busybox-static,
 * linux-image-amd64 (installed via apt-get if missing). ~1 minute.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { verifyRecords } from '../../lab/guest-image';
import { qgaPing, QgaSession, qmpCommand } from '../../lab/jsonline';
import { labStatus, readGuestFileViaAgent, startLab, stopLab, vmPaths } from '../../lab/lab-vms';

const VMS = ['vm-agent', 'vm-noagent', 'vm-passthrough'];

describe('lab host (integration)', function () {
  this.timeout(180000);
  let labDir = '';
  // A shared lab (VMBACKUP_LAB_DIR) that is already running is used and left running:
  // on 2 cores a second set of TCG guests would only slow every other suite down.
  let ownLab = true;

  before(async function () {
    this.timeout(150000);
    const shared = process.env.VMBACKUP_LAB_DIR;
    ownLab = !shared || !labStatus(shared).vms.some((vm) => vm.alive);
    labDir = shared && !ownLab ? shared : fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-lab-'));
    await startLab({ labDir, install: true, timeoutMs: 120000 });
  });

  after(async function () {
    this.timeout(60000);
    if (!labDir || !ownLab) return;
    await stopLab(labDir, { graceful: false });
    if (!process.env.VMBACKUP_LAB_KEEP) fs.rmSync(labDir, { recursive: true, force: true });
  });

  it('runs every VM process with its sockets', function () {
    const st = labStatus(labDir);
    for (const name of VMS) {
      const vm = st.vms.find((v) => v.name === name);
      assert.ok(vm, `${name} in status`);
      assert.equal(vm.alive, true, `${name} alive`);
      assert.equal(vm.qmpSocketExists, true, `${name} QMP socket`);
      assert.equal(vm.qgaSocketExists, true, `${name} QGA socket`);
    }
    const pt = st.vms.find((v) => v.name === 'vm-passthrough');
    assert.equal(pt?.nbd?.alive, true, 'qemu-nbd alive');
  });

  it('QMP answers query-status on every VM', async function () {
    for (const name of VMS) {
      const r = await qmpCommand(vmPaths(name, labDir).qmpSocket, 'query-status');
      assert.equal(r.status, 'running', name);
    }
  });

  it('vm-agent answers guest-sync and guest-info', async function () {
    const s = await QgaSession.open(vmPaths('vm-agent', labDir).qgaSocket, 10000);
    try {
      const info = await s.execute('guest-info');
      assert.equal(typeof info.version, 'string');
      const names = (info.supported_commands as Array<{ name: string }>).map((c) => c.name);
      assert.ok(names.includes('guest-fsfreeze-freeze'));
    } finally {
      s.close();
    }
  });

  it('vm-agent guest-get-fsinfo lists an ext4 mount on /data', async function () {
    const s = await QgaSession.open(vmPaths('vm-agent', labDir).qgaSocket, 10000);
    try {
      const fsinfo = (await s.execute('guest-get-fsinfo')) as Array<{ mountpoint: string; type: string }>;
      assert.ok(
        fsinfo.some((f) => f.mountpoint === '/data' && f.type === 'ext4'),
        JSON.stringify(fsinfo),
      );
    } finally {
      s.close();
    }
  });

  it('vm-agent freezes and thaws /data', async function () {
    const s = await QgaSession.open(vmPaths('vm-agent', labDir).qgaSocket, 10000);
    try {
      const n = await s.execute('guest-fsfreeze-freeze', undefined, 30000);
      try {
        assert.ok(n >= 1, `frozen ${n}`);
        assert.equal(await s.execute('guest-fsfreeze-status'), 'frozen');
      } finally {
        await s.execute('guest-fsfreeze-thaw', undefined, 30000);
      }
      assert.equal(await s.execute('guest-fsfreeze-status'), 'thawed');
    } finally {
      s.close();
    }
  });

  it('vm-agent workload writes whole, checksummed records', async function () {
    const a = verifyRecords(await readGuestFileViaAgent('vm-agent', '/data/records.log', labDir));
    await new Promise((r) => setTimeout(r, 2000));
    const b = verifyRecords(await readGuestFileViaAgent('vm-agent', '/data/records.log', labDir));
    assert.equal(a.ok, true, a.errors.join('; '));
    assert.equal(b.ok, true, b.errors.join('; '));
    assert.ok(b.lastSeq > a.lastSeq, `records grow (${a.lastSeq} -> ${b.lastSeq})`);
  });

  it('vm-noagent qga socket does not answer within 3 s', async function () {
    const t0 = Date.now();
    assert.equal(await qgaPing(vmPaths('vm-noagent', labDir).qgaSocket, 3000), false);
    assert.ok(Date.now() - t0 >= 2900);
  });

  it('vm-passthrough has an agent and an NBD disk', async function () {
    const p = vmPaths('vm-passthrough', labDir);
    assert.equal(await qgaPing(p.qgaSocket, 10000), true);
    const blocks = (await qmpCommand(p.qmpSocket, 'query-block')) as Array<{
      device: string;
      inserted?: { file: string };
    }>;
    const nbd = blocks.find((b) => b.device === 'drive-virtio1');
    assert.ok(nbd?.inserted?.file.startsWith('nbd'), JSON.stringify(nbd));
  });

  it('stops the lab', async function () {
    this.timeout(60000);
    await stopLab(labDir);
    const st = labStatus(labDir);
    for (const name of VMS) assert.equal(st.vms.find((v) => v.name === name)?.alive ?? false, false, name);
    assert.equal(st.vms.find((v) => v.name === 'vm-passthrough')?.nbd?.alive ?? false, false);
  });
});
