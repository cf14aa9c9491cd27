// Incrementals on the libvirt provider against the lab's real libvirtd and TCG domain: a full,
// a write in the guest (through its own agent), an incremental, another write, an incremental.
// Every point is flattened by src/chain and must hold the writes before its moment and not the
// one after; libvirt itself is asked afterwards (checkpoint-list, domjobinfo, domblklist).
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs, mkdtempSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { domainImage, LIBVIRT_DOMAINS, libvirtdUp, libvirtStart, libvirtStop } from '../../lab/libvirt-lab';
import { flattenDisk } from '../../src/chain/flatten';
import type { CopiedSet } from '../../src/contract/types';
import { Journal } from '../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { LibvirtProvider } from '../../src/providers/libvirt/libvirt-provider';
import { deleteCheckpoint } from '../../src/providers/libvirt/checkpoints';
import { VirshRunner } from '../../src/providers/libvirt/virsh';
import { parseJobInfo, parseTable } from '../../src/providers/libvirt/parse';
import { verifyBackup } from '../../src/verify';
import { fileInImage, inGuest as inGuestOf, markerScript, markerText, virsh, virshOk } from '../support/libvirt-view';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const AGENT = LIBVIRT_DOMAINS.find((d) => d.agent && d.running)!.name;
const OFF = LIBVIRT_DOMAINS.find((d) => !d.running)!.name;

const inGuest = (script: string) => inGuestOf(AGENT, script);

/** A marker file of 1 MiB of a known pattern plus its name, synced to the disk. */
const writeMarker = (name: string) => inGuest(markerScript(name));
/** this run's marker names: the files of an earlier run stay in the guest */
const RUN = `inc${process.pid}`;
const [M0, M1, M2] = ['m0', 'm1', 'm2'].map((m) => `${RUN}-${m}`);

describe('libvirt provider: incrementals by checkpoints (real libvirtd)', function () {
  this.timeout(900_000);
  let startedHere = false;
  let repository: string;
  let tmp: string;
  let host: BackupHost;
  let provider: LibvirtProvider;

  before(async function () {
    if (
      spawnSync('virsh', ['--version']).status !== 0 ||
      spawnSync('nbdcopy', ['--version']).status !== 0 ||
      spawnSync('nbdkit', ['--version']).status !== 0
    ) {
      console.log('    libvirt incremental skipped: virsh, nbdcopy or nbdkit is not installed (Debian libvirt-clients libnbd-bin nbdkit)');
      this.skip();
    }
    startedHere = !(await libvirtdUp()) || virsh('domstate', AGENT).stdout.trim() !== 'running';
    await libvirtStart({ labDir: LAB, install: false, log: () => undefined });
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvinc-repo-'));
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvinc-'));
    provider = new LibvirtProvider({ runDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-lvinc-run-')) });
    host = new BackupHost(provider, new Journal(path.join(tmp, 'journal.jsonl')), {
      hostName: 'lvinc',
      repositoryRoot: repository,
      timeouts: DEFAULT_TIMEOUTS,
    });
  });
  after(async () => {
    if (repository) await fs.rm(repository, { recursive: true, force: true });
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
    if (provider) {
      await provider.close();
      await fs.rm(provider.runDir, { recursive: true, force: true });
    }
    // our checkpoints go with the test (the other libvirt tests start from none)
    for (const name of virsh('checkpoint-list', AGENT, '--name')
      .stdout.split('\n')
      .map((l) => l.trim())
      .filter((n) => n.startsWith('vmbackup-'))) {
      virsh('checkpoint-delete', AGENT, name);
    }
    if (startedHere && !process.env.VMBACKUP_KEEP_LAB) await libvirtStop({ labDir: LAB });
  });

  /** the checkpoints of this test's chain (its repository and host name): the other libvirt
   * tests back the same domain up into repositories of their own, each its own chain */
  const ours = () =>
    virshOk('checkpoint-list', AGENT, '--name')
      .trim()
      .split('\n')
      .filter((n) => n.startsWith(`vmbackup-${host.target}-`));

  async function backup(): Promise<{ set: CopiedSet; dir: string; file: any }> {
    const enumerated = await host.enumerate();
    const set = { ...enumerated, vms: enumerated.vms.filter((vm) => vm.id === AGENT) };
    const prepared = await host.prepare(host.classify(set, 'checkpoint'));
    const copied = await host.copy(await host.postSnapshot(await host.snapshot(prepared)), { concurrency: 1, compress: false });
    const vm = copied.vms[0];
    const dir = path.join(repository, vm.copy.path);
    const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    return { set: copied, dir, file: manifest.files.find((f: any) => f.disk === 'vda') };
  }

  async function flattened(dir: string, name: string): Promise<string> {
    const out = path.join(tmp, `${name}.raw`);
    await flattenDisk({ backupDir: dir, disk: 'vda', out, format: 'raw', verify: (d) => verifyBackup(d) });
    return out;
  }

  it('full, incremental, incremental: each point flattens to its moment; the incrementals are small; libvirt keeps only the newest checkpoint', async () => {
    // 16 MiB the full holds and no incremental copies again
    await inGuest('dd if=/dev/urandom of=/data/base bs=1048576 count=16 2>/dev/null && sync');
    await writeMarker(M0);
    const b0 = await backup();
    assert.equal(b0.file.chain.mode, 'full');
    assert.equal(b0.file.chain.bitmap.name, `vmbackup-${host.target}-${b0.set.backupId}`);
    assert.deepEqual(ours(), [`vmbackup-${host.target}-${b0.set.backupId}`]);

    await writeMarker(M1);
    const b1 = await backup();
    assert.equal(b1.file.chain.mode, 'incremental', JSON.stringify(b1.file.chain));
    assert.equal(b1.file.chain.parent, b0.set.backupId);
    assert.equal(b1.file.chain.backing, `../${b0.set.backupId}/${b0.file.name}`);
    assert.ok(b1.file.chain.bytesChanged >= 1 << 20, `at least the 1 MiB marker changed: ${b1.file.chain.bytesChanged}`);
    assert.deepEqual(ours(), [`vmbackup-${host.target}-${b1.set.backupId}`], "the parent's checkpoint went once b1 was published");

    await writeMarker(M2);
    const b2 = await backup();
    assert.equal(b2.file.chain.mode, 'incremental');
    assert.equal(b2.file.chain.parent, b1.set.backupId);
    assert.equal(b2.file.chain.depth, 2);

    const size = (b: { dir: string; file: any }) => readFileSync(path.join(b.dir, b.file.name)).length;
    for (const b of [b1, b2]) assert.ok(size(b) * 4 < size(b0), `incremental ${size(b)} bytes much smaller than the full ${size(b0)}`);
    const info = JSON.parse(spawnSync('qemu-img', ['info', '--output=json', path.join(b2.dir, b2.file.name)], { encoding: 'utf8' }).stdout);
    assert.equal(info['backing-filename'], `../${b1.set.backupId}/${b1.file.name}`);

    const marker = markerText;
    const points: [string, string[], string[]][] = [
      [b0.dir, [M0], [M1, M2]],
      [b1.dir, [M0, M1], [M2]],
      [b2.dir, [M0, M1, M2], []],
    ];
    for (const [dir, has, hasNot] of points) {
      const raw = await flattened(dir, path.basename(dir));
      for (const m of has) {
        const got = fileInImage(raw, m);
        assert.ok(
          got === marker(m),
          `${path.basename(dir)} holds ${m} whole (got ${got.length} bytes, ${got.split('\n').filter((l) => !l.startsWith(`${m}-line-`)).length} foreign lines)`,
        );
      }
      for (const m of hasNot) assert.ok(fileInImage(raw, m) === '', `${path.basename(dir)} does not hold ${m} (written after its moment)`);
      assert.equal(spawnSync('e2fsck', ['-fn', raw]).status, 0, `${path.basename(dir)}: e2fsck -fn clean`);
      await fs.rm(raw);
    }

    assert.deepEqual(ours(), [`vmbackup-${host.target}-${b2.set.backupId}`]);
    assert.equal(parseJobInfo(virshOk('domjobinfo', '--domain', AGENT)).type, 'None');
    const rows = parseTable(virshOk('domblklist', '--domain', AGENT, '--details')).filter((r) => r.Device === 'disk');
    assert.deepEqual(
      rows.map((r) => r.Source),
      [domainImage(AGENT, LAB)],
    );
  });

  it("the parent's checkpoint deleted behind our back: a full (bitmap-missing), and the chain goes on from it", async () => {
    const [before, ...more] = ours();
    assert.equal(more.length, 0);
    assert.match(before, /^vmbackup-/);
    virshOk('checkpoint-delete', AGENT, before);
    const full = await backup();
    assert.deepEqual([full.file.chain.mode, full.file.chain.reason], ['full', 'bitmap-missing'], JSON.stringify(full.file.chain));
    await writeMarker(`${RUN}-m3`);
    const inc = await backup();
    assert.deepEqual([inc.file.chain.mode, inc.file.chain.parent], ['incremental', full.set.backupId]);
    assert.deepEqual(ours(), [`vmbackup-${host.target}-${inc.set.backupId}`]);
    assert.equal(parseJobInfo(virshOk('domjobinfo', '--domain', AGENT)).type, 'None');
  });

  it('a shut-off domain: a full with reason offline and no checkpoint; a checkpoint due for removal while it is off stays (libvirt refuses), and goes once it runs', async () => {
    const enumerated = await host.enumerate();
    const set = { ...enumerated, vms: enumerated.vms.filter((vm) => vm.id === OFF) };
    const copied = await host.copy(await host.postSnapshot(await host.snapshot(await host.prepare(host.classify(set, 'checkpoint')))), {
      concurrency: 1,
      compress: false,
    });
    const manifest = JSON.parse(readFileSync(path.join(repository, copied.vms[0].copy.path, 'manifest.json'), 'utf8'));
    const f = manifest.files.find((x: any) => x.disk === 'vda');
    assert.deepEqual([f.chain.mode, f.chain.reason, f.chain.bitmap], ['full', 'offline', undefined]);
    assert.equal(virshOk('checkpoint-list', OFF, '--name').trim(), '');

    // a checkpoint on the domain while it is off: made with QEMU started paused (no guest runs)
    const dir = mkdtempSync(path.join(tmp, 'cp-'));
    const name = 'vmbackup-20000101T000000Z-offtst';
    await fs.writeFile(
      path.join(dir, 'b.xml'),
      `<domainbackup mode='pull'><server transport='unix' socket='${dir}/s.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${path.dirname(domainImage(OFF, LAB))}/.vmbackup-offtst.qcow2'/></disk></disks></domainbackup>`,
    );
    await fs.writeFile(
      path.join(dir, 'c.xml'),
      `<domaincheckpoint><name>${name}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`,
    );
    const v = new VirshRunner('qemu:///system', 'virsh', 60_000);
    try {
      virshOk('start', OFF, '--paused');
      virshOk('backup-begin', OFF, path.join(dir, 'b.xml'), '--checkpointxml', path.join(dir, 'c.xml'));
      virshOk('domjobabort', OFF);
      virshOk('destroy', OFF);
      assert.equal(await deleteCheckpoint(v, OFF, name, 60_000), 'left-inactive');
      assert.equal(virshOk('checkpoint-list', OFF, '--name').trim(), name, 'libvirt keeps it while the domain is off');
      virshOk('start', OFF, '--paused');
      assert.equal(await deleteCheckpoint(v, OFF, name, 60_000), 'deleted');
      assert.equal(virshOk('checkpoint-list', OFF, '--name').trim(), '');
    } finally {
      if (virsh('domstate', OFF).stdout.trim() !== 'shut off') virsh('destroy', OFF);
      if (virsh('checkpoint-list', OFF, '--name').stdout.includes(name)) {
        virsh('start', OFF, '--paused');
        virsh('checkpoint-delete', OFF, name);
        virsh('destroy', OFF);
      }
    }
    assert.equal(virshOk('domstate', OFF).trim(), 'shut off');
  });
});
