// The disks real libvirt hosts have, on the lab's real libvirtd: one guest whose six disks are a
// pool volume (qcow2 in a dir pool, the guest's ext4 data disk), a block device (a loop device:
// the same host_device driver as an LVM volume; this kernel has no device-mapper, so LVM itself
// cannot run here), an NBD export (qemu-nbd), an iSCSI LUN (tgtd, through QEMU's libiscsi), a
// raw file and a qcow2 image on a loop device (qcow2 on LVM); and a transient domain (virsh
// create). Each is backed up full, then incremental where the disk allows (the two qcow2 disks;
// the raw disks are copied whole again), compressed; every point
// is flattened and compared with what the disk held at its moment. libvirt's view afterwards, the
// virsh queries answered during a backup, and the refusal of a domain another job holds.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, promises as fs, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  domainConsole,
  guestDomainXml,
  libvirtDir,
  libvirtHost,
  makeDataImage,
  waitForDomainAgent,
  waitForDomainWorkload,
} from '../../lab/libvirt-lab';
import { flattenDisk } from '../../src/chain/flatten';
import type { CopiedSet, Disk, EnumeratedVm, FallbackPolicy } from '../../src/contract/types';
import { Journal } from '../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { parseCheckpointDisks } from '../../src/providers/libvirt/checkpoints';
import { enumerateDomains } from '../../src/providers/libvirt/enumerate';
import { LibvirtProvider } from '../../src/providers/libvirt/libvirt-provider';
import { VirshRunner, type Virsh } from '../../src/providers/libvirt/virsh';
import { parseBackupXml, parseJobInfo, parseTable } from '../../src/providers/libvirt/parse';
import { summarize } from '../../src/summary';
import { verifyBackup } from '../../src/verify';
import { dirPool, iscsiTarget, loopDevice, nbdServer, type Stoppable } from '../support/libvirt-storage';
import { fileInImage, inGuest, markerScript, markerText, virsh, virshOk } from '../support/libvirt-view';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const STOR = 'vmb-lv-stor';
const TRANS = 'vmb-lv-trans';
const POOL = 'vmb-lv-stor-pool';
/** tgtd: port 3261 and its own control port (another suite's tgtd may serve 3260 on control port 0) */
const ISCSI = { port: 3261, controlPort: 61, iqn: 'iqn.2026-12.invalid.vmbackup:lv-stor' };
/** the raw disks of STOR: target, virtio serial (how the guest finds it), libvirt type */
const RAW = [
  { dev: 'vdb', serial: 'blk', type: 'block' },
  { dev: 'vdc', serial: 'nbd', type: 'network' },
  { dev: 'vdd', serial: 'isc', type: 'network' },
  { dev: 'vde', serial: 'raw', type: 'file' },
] as const;
/** and a qcow2 image on a block device (a loop device holding it: qcow2 on LVM), which keeps bitmaps like a file */
const QBLK = { dev: 'vdf', serial: 'qbk', type: 'block' } as const;
const SECONDARY = [...RAW, QBLK];
const RAW_MIB = 32;

const sha256 = (file: string) =>
  new Promise<string>((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(file)
      .on('data', (d) => h.update(d))
      .on('end', () => resolve(h.digest('hex')))
      .on('error', reject);
  });

/** One marker of 64 KiB on a raw disk, at a place of its own per point, synced to the disk. */
const rawMarker = (point: number, serial: string) =>
  `d=; for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = "${serial}" ] && d=/dev/\${b##*/}; done; [ -n "$d" ] && ` +
  `yes "P${point}-${serial}-${process.pid}" | head -c 65536 | dd of=$d bs=65536 seek=${3 + point * 5} conv=fsync,notrunc 2>/dev/null`;

/** qcow2 data clusters with no host offset in `qemu-img map` are compressed ones. */
function compressedOnly(file: string): boolean {
  const map = JSON.parse(spawnSync('qemu-img', ['map', '--output=json', file], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout);
  const own = map.filter((e: any) => e.data && e.depth === 0);
  return own.length > 0 && own.every((e: any) => e.offset === undefined);
}

function missingTools(): string | undefined {
  for (const [tool, arg] of [
    ['virsh', '--version'],
    ['libvirtd', '--version'],
    ['tgtd', '--version'],
    ['qemu-nbd', '--version'],
    ['nbdcopy', '--version'],
    ['nbdkit', '--version'],
    ['losetup', '--version'],
  ]) {
    if (spawnSync(tool, [arg]).status !== 0) return tool;
  }
  if (!existsSync('/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so')) return "QEMU's iscsi driver (qemu-block-extra)";
  return undefined;
}

describe('libvirt provider: the disks real hosts have (block, NBD, iSCSI, pool volume, raw; two+ disks; transient; another job)', function () {
  this.timeout(1_200_000);
  const stops: Stoppable[] = [];
  let dir: string;
  let repository: string;
  let tmp: string;
  let provider: LibvirtProvider;
  let host: BackupHost;
  let loop: string;
  let sources: Record<string, string>;
  let blkListBefore: string;

  before(async function () {
    const missing = missingTools();
    if (missing) {
      console.log(
        `    libvirt storage skipped: ${missing} is not installed (Debian libvirt-daemon libvirt-clients tgt qemu-utils qemu-block-extra nbdkit libnbd-bin)`,
      );
      this.skip();
    }
    const guest = await libvirtHost({ labDir: LAB, install: false });
    for (const d of [STOR, TRANS]) {
      if (virsh('domstate', d).status === 0) virsh('destroy', d);
      virsh('undefine', d, '--checkpoints-metadata', '--managed-save');
    }
    dir = path.join(libvirtDir(LAB), 'storage');
    await fs.rm(dir, { recursive: true, force: true });
    mkdirSync(path.join(dir, 'pool'), { recursive: true });
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvst-repo-'));
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvst-'));

    // the storage: a qcow2 volume in a dir pool (v3: libvirt's own vol-create-as made v2 here, which holds no bitmap)
    await makeDataImage(path.join(dir, 'pool', 'stor-data.qcow2'), STOR);
    stops.push(dirPool(POOL, path.join(dir, 'pool')));
    const files: Record<string, string> = {};
    for (const r of RAW) {
      files[r.serial] = path.join(dir, `${r.serial}.raw`);
      writeFileSync(files[r.serial], '');
      await fs.truncate(files[r.serial], RAW_MIB << 20);
    }
    const blk = loopDevice(files.blk);
    stops.push(blk);
    loop = blk.dev;
    // the qcow2 on a block device: room past its end for its own metadata and bitmaps
    const qcowFile = path.join(dir, 'qbk.qcow2');
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcowFile, `${RAW_MIB}M`]).status, 0);
    await fs.truncate(qcowFile, (RAW_MIB + 16) << 20);
    const qblk = loopDevice(qcowFile);
    stops.push(qblk);
    const nbd = await nbdServer(files.nbd, 'vmbnbd');
    stops.push(nbd);
    const isc = await iscsiTarget(files.isc, ISCSI);
    stops.push(isc);
    // what each raw disk's content is read from on the host, to compare a backup with
    sources = { vdb: loop, vdc: files.nbd, vdd: files.isc, vde: files.raw, vdf: qblk.dev };

    const serial = (s: string) => `<target dev='${s}' bus='virtio'/>`;
    const disks =
      `    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='${POOL}' volume='stor-data.qcow2'/>${serial('vda')}<serial>data</serial></disk>\n` +
      `    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='${loop}'/>${serial('vdb')}<serial>blk</serial></disk>\n` +
      `    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='vmbnbd'><host name='127.0.0.1' port='${nbd.port}'/></source>${serial('vdc')}<serial>nbd</serial></disk>\n` +
      `    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='iscsi' name='${ISCSI.iqn}/1'><host name='127.0.0.1' port='${ISCSI.port}'/></source>${serial('vdd')}<serial>isc</serial></disk>\n` +
      `    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='${files.raw}'/>${serial('vde')}<serial>raw</serial></disk>\n` +
      `    <disk type='block' device='disk'><driver name='qemu' type='qcow2'/><source dev='${qblk.dev}'/>${serial('vdf')}<serial>qbk</serial></disk>\n`;
    const storXml = path.join(dir, `${STOR}.xml`);
    writeFileSync(storXml, guestDomainXml({ name: STOR, agent: true, guest, console: domainConsole(STOR, LAB), disks }));
    virshOk('define', storXml);
    await fs.rm(domainConsole(STOR, LAB), { force: true });
    virshOk('start', STOR);

    // the transient domain: virsh create, no agent, its data disk a qcow2 file
    const transImage = path.join(dir, 'trans-data.qcow2');
    await makeDataImage(transImage, TRANS);
    const transXml = path.join(dir, `${TRANS}.xml`);
    const transDisk = `    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${transImage}'/>${serial('vda')}<serial>data</serial></disk>\n`;
    writeFileSync(transXml, guestDomainXml({ name: TRANS, agent: false, guest, console: domainConsole(TRANS, LAB), disks: transDisk }));
    await fs.rm(domainConsole(TRANS, LAB), { force: true });
    virshOk('create', transXml);

    await Promise.all([waitForDomainWorkload(STOR, 300_000, LAB), waitForDomainWorkload(TRANS, 300_000, LAB)]);
    await waitForDomainAgent(STOR, 300_000);
    blkListBefore = virshOk('domblklist', '--domain', STOR, '--details');

    provider = new LibvirtProvider({ runDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-lvst-run-')) });
    host = new BackupHost(provider, new Journal(path.join(tmp, 'journal.jsonl')), {
      hostName: 'lvst',
      repositoryRoot: repository,
      timeouts: DEFAULT_TIMEOUTS,
    });
  });

  after(async () => {
    if (provider) {
      await provider.close();
      await fs.rm(provider.runDir, { recursive: true, force: true });
    }
    // our domains only (the lab's and other suites' stay); libvirtd stays running
    for (const d of [STOR, TRANS]) {
      virsh('destroy', d);
      virsh('undefine', d, '--checkpoints-metadata', '--managed-save');
    }
    for (const s of stops.reverse()) await s.stop().catch(() => undefined);
    for (const d of [repository, tmp, dir]) if (d) await fs.rm(d, { recursive: true, force: true });
  });

  /**
   * provider.enumerate() (one virsh session) against enumerate with a virsh process per query
   * and no domstats (what enumerate did before): the same facts, free space aside (it moves).
   * `sizeOnlyNow`: a disk the per-query way could not size, and the size the session gives it.
   */
  async function sameFactsBothWays(ids: string[], sizeOnlyNow?: (d: Disk) => number | undefined): Promise<void> {
    const runner = new VirshRunner('qemu:///system');
    const perQuery: Virsh = {
      uri: runner.uri,
      run: (args, call) => (args[0] === 'domstats' ? Promise.reject(new Error('not asked')) : runner.run(args, call)),
    };
    const facts = (vms: EnumeratedVm[]) =>
      vms.filter((v) => ids.includes(v.id)).map((v) => ({ ...v, snapshotLocation: { ...v.snapshotLocation, freeBytes: undefined } }));
    const before = facts((await enumerateDomains(perQuery, { timeoutMs: 30_000, localFiles: true })).vms);
    const now = facts(await provider.enumerate());
    if (sizeOnlyNow) {
      for (const vm of before)
        for (const d of vm.disks) {
          assert.equal(d.virtualSize, undefined, `${vm.id} ${d.id}: not sized per query`);
          const size = sizeOnlyNow(d);
          if (size !== undefined) d.virtualSize = size;
        }
    }
    assert.deepEqual(now, before);
  }

  async function backup(ids: string[], fallback: FallbackPolicy, compress: boolean): Promise<CopiedSet> {
    const enumerated = await host.enumerate();
    const set = { ...enumerated, vms: enumerated.vms.filter((vm) => ids.includes(vm.id)) };
    const prepared = await host.prepare(host.classify(set, fallback));
    return host.copy(await host.postSnapshot(await host.snapshot(prepared)), { concurrency: 2, compress });
  }

  const manifestOf = (set: CopiedSet, id: string) => {
    const vm = set.vms.find((v) => v.id === id)!;
    const backupDir = path.join(repository, vm.copy.path);
    return { vm, backupDir, manifest: JSON.parse(readFileSync(path.join(backupDir, 'manifest.json'), 'utf8')) };
  };

  /** sha256 of what a secondary disk holds now, as the guest sees it (the qcow2 on the loop device read through qemu-img) */
  async function contentNow(dev: string): Promise<string> {
    if (dev !== QBLK.dev) return sha256(sources[dev]);
    const out = path.join(tmp, `${dev}-now.raw`);
    assert.equal(spawnSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', sources[dev], out]).status, 0);
    try {
      return await sha256(out);
    } finally {
      await fs.rm(out, { force: true });
    }
  }

  async function flattened(backupDir: string, disk: string): Promise<string> {
    const out = path.join(tmp, `${path.basename(backupDir)}-${disk}.raw`);
    await flattenDisk({ backupDir, disk, out, format: 'raw', verify: (d) => verifyBackup(d) });
    return out;
  }

  it('enumerates every disk of every type as included, the volume resolved through its pool; only the qcow2 disks (the volume, the one on a block device) have change tracking', async () => {
    const vms = await provider.enumerate();
    const stor = vms.find((v) => v.id === STOR)!;
    assert.deepEqual(
      stor.disks.map((d) => [d.id, d.driver, d.format, d.included, d.tracking !== undefined]),
      [
        ['vda', 'file', 'qcow2', true, true],
        ['vdb', 'block', 'raw', true, false],
        ['vdc', 'nbd', 'raw', true, false],
        ['vdd', 'iscsi', 'raw', true, false],
        ['vde', 'file', 'raw', true, false],
        ['vdf', 'block', 'qcow2', true, true],
      ],
    );
    assert.equal(stor.disks[0].file, path.join(dir, 'pool', 'stor-data.qcow2'), 'the volume is resolved to its file');
    assert.equal(stor.disks[1].file, loop);
    assert.match(stor.disks[2].file, /^nbd:\/\/127\.0\.0\.1:\d+\/vmbnbd$/);
    assert.equal(stor.disks[3].file, `iscsi://127.0.0.1:${ISCSI.port}/${ISCSI.iqn}/1`);
    for (const d of stor.disks) assert.equal(d.virtualSize, d.id === 'vda' ? 128 << 20 : RAW_MIB << 20, `${d.id} size`);
    const trans = vms.find((v) => v.id === TRANS)!;
    assert.match(trans.savedStateRefused ?? '', /transient domain .* cannot be managed-saved/);
  });

  it('enumerate through one virsh session (host-wide domstats, then a dumpxml a domain) gives the facts one virsh process per query gave', async () => {
    await sameFactsBothWays([STOR, TRANS]);
  });

  it('six disks of five kinds: full then incremental (compressed), every point equal to each disk at its moment; virsh queries answered throughout; libvirt keeps only our newest checkpoint', async () => {
    const run = `st${process.pid}`;
    const sums: Record<string, string>[] = [];
    const sets: CopiedSet[] = [];
    const waits: { cmd: string; ms: number; ok: boolean }[] = [];
    for (const point of [0, 1]) {
      for (const r of SECONDARY) await inGuest(STOR, rawMarker(point, r.serial));
      await inGuest(STOR, markerScript(`${run}-m${point}`));
      // a user's virsh queries every 500 ms during the whole backup (item: live beside the host's tools)
      let polling = true;
      const poller = (async () => {
        while (polling) {
          for (const cmd of ['domstate', 'domblklist', 'dominfo']) {
            const t0 = Date.now();
            const r = spawnSync('virsh', ['-c', 'qemu:///system', cmd, STOR], { timeout: 5000 });
            waits.push({ cmd, ms: Date.now() - t0, ok: r.status === 0 });
          }
          await new Promise((r) => setTimeout(r, 500));
        }
      })();
      try {
        sets.push(await backup([STOR], 'checkpoint', true));
      } finally {
        polling = false;
        await poller;
      }
      // nothing writes the raw disks between two points: their content now is their content at the moment
      const s: Record<string, string> = {};
      for (const r of SECONDARY) s[r.dev] = await contentNow(r.dev);
      sums.push(s);
    }
    const answered = waits.filter((w) => w.ok && w.ms < 2000).length;
    console.log(
      `      virsh queries during two backups: ${answered}/${waits.length} answered within 2 s, slowest ${Math.max(...waits.map((w) => w.ms))} ms`,
    );
    assert.ok(waits.length >= 6, 'queries were made during the backups');
    assert.equal(
      answered,
      waits.length,
      `every domstate/domblklist/dominfo answered: ${JSON.stringify(waits.filter((w) => !w.ok || w.ms >= 2000))}`,
    );

    const [b0, b1] = sets.map((set) => manifestOf(set, STOR));
    // the scratch location beside the volume is set aside for the block and network disks: the guest is frozen
    assert.deepEqual([b0.vm.method, b0.vm.consistency], ['child-vm-snapshot', 'application'], JSON.stringify(b0.vm.reasons));
    const file = (b: typeof b0, disk: string) => b.manifest.files.find((f: any) => f.disk === disk);
    for (const b of [b0, b1])
      assert.equal(b.manifest.files.filter((f: any) => f.kind === 'disk').length, 6, 'all six disks are in the backup');
    assert.deepEqual(
      ['vda', ...SECONDARY.map((r) => r.dev)].map((d) => file(b0, d).chain.mode),
      ['full', 'full', 'full', 'full', 'full', 'full'],
    );
    assert.deepEqual(
      ['vda', ...SECONDARY.map((r) => r.dev)].map((d) => file(b1, d).chain.mode),
      ['incremental', 'full', 'full', 'full', 'full', 'incremental'],
      'the qcow2 disks incremental, the raw disks whole again',
    );
    assert.equal(file(b1, 'vda').chain.parent, sets[0].backupId);
    assert.equal(file(b1, 'vdf').chain.parent, sets[0].backupId);
    for (const b of [b0, b1]) {
      for (const f of b.manifest.files.filter((x: any) => x.kind === 'disk'))
        assert.ok(compressedOnly(path.join(b.backupDir, f.name)), `${b.backupDir} ${f.name}: compressed clusters only`);
    }
    assert.ok(sums[0].vdb !== sums[1].vdb, 'the raw disks changed between the points');
    const summary = summarize(sets[1], undefined, { left: [] });
    assert.deepEqual([summary.ok, summary.excluded], [true, []], summary.text);

    for (const [i, b] of [b0, b1].entries()) {
      for (const r of SECONDARY) {
        const raw = await flattened(b.backupDir, r.dev);
        assert.equal(await sha256(raw), sums[i][r.dev], `point ${i}, ${r.dev} (${r.type}): the copy is the disk at its moment`);
        await fs.rm(raw);
      }
      const data = await flattened(b.backupDir, 'vda');
      assert.equal(spawnSync('e2fsck', ['-fn', data]).status, 0, `point ${i}: the frozen ext4 is clean (e2fsck -fn)`);
      for (let m = 0; m <= 1; m++) {
        const got = fileInImage(data, `${run}-m${m}`);
        if (m <= i) assert.ok(got === markerText(`${run}-m${m}`), `point ${i} holds marker m${m} whole (${got.length} bytes)`);
        else assert.equal(got, '', `point ${i} does not hold m${m}, written after its moment`);
      }
      await fs.rm(data);
    }

    // libvirt's view: no job, our newest checkpoint only (a bitmap on the qcow2 volume alone), the disks as they were
    assert.equal(parseJobInfo(virshOk('domjobinfo', '--domain', STOR)).type, 'None');
    assert.deepEqual(virshOk('checkpoint-list', STOR, '--name').trim().split('\n'), [`vmbackup-${host.target}-${sets[1].backupId}`]);
    assert.deepEqual(
      parseCheckpointDisks(virshOk('checkpoint-dumpxml', STOR, `vmbackup-${host.target}-${sets[1].backupId}`)).map((d) => d.disk),
      ['vda', 'vdf'],
    );
    assert.equal(virshOk('domblklist', '--domain', STOR, '--details'), blkListBefore);
    assert.deepEqual(
      readdirSync(path.join(dir, 'pool')).filter((f) => f.includes('.vmbackup-')),
      [],
      'no scratch file left beside the volume',
    );
    console.log(
      `      ${STOR}: ${sets[0].vms[0].method}, ${sets[0].vms[0].consistency}; raw disks at the incremental: ${file(b1, 'vdb').chain.reason}`,
    );
    assert.equal(virshOk('domstate', STOR).trim(), 'running');
  });

  it('a transient domain under the saved-state policy gets a checkpoint (libvirt cannot managed-save it), full then incremental, and is still running', async () => {
    const sets: CopiedSet[] = [];
    for (let i = 0; i < 2; i++) {
      // crash-consistent points hold what the guest's ext4 wrote back (a commit every 5 s): two
      // backups inside one commit interval see the same records (enumerate takes milliseconds now)
      if (i > 0) await new Promise((r) => setTimeout(r, 6000));
      sets.push(await backup([TRANS], 'saved-state', false));
    }
    const [b0, b1] = sets.map((s) => manifestOf(s, TRANS));
    assert.deepEqual([b0.vm.method, b0.vm.consistency], ['checkpoint', 'crash']);
    assert.ok(b0.vm.warnings.some((w) => /saved-state not used: a transient domain/.test(w)));
    assert.deepEqual(
      [b0, b1].map((b) => b.manifest.files.find((f: any) => f.disk === 'vda').chain.mode),
      ['full', 'incremental'],
    );
    // the guest's records at each point (crash-consistent: whole records up to the moment)
    const counts: number[] = [];
    for (const b of [b0, b1]) {
      const raw = await flattened(b.backupDir, 'vda');
      const text = spawnSync('debugfs', ['-R', 'cat /records.log', raw], { encoding: 'utf8', maxBuffer: 256 << 20 }).stdout;
      const lines = text.split('\n').filter(Boolean);
      assert.ok(lines.length > 0, 'records at the point');
      counts.push(lines.length);
      await fs.rm(raw);
    }
    assert.ok(counts[1] > counts[0], `the later point holds more records (${counts.join(' < ')})`);
    assert.equal(virshOk('domstate', TRANS).trim(), 'running');
    assert.equal(parseJobInfo(virshOk('domjobinfo', '--domain', TRANS)).type, 'None');
  });

  it("a user's own backup job, then a block job, on the domain: refused at once with libvirt's words, nothing of ours made or left, the user's job untouched", async () => {
    const own = mkdtempSync(path.join(tmp, 'own-'));
    const image = path.join(dir, 'trans-data.qcow2');
    writeFileSync(
      path.join(own, 'b.xml'),
      `<domainbackup mode='pull'><server transport='unix' socket='${own}/s.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${own}/user.scratch'/></disk></disks></domainbackup>`,
    );
    virshOk('backup-begin', TRANS, path.join(own, 'b.xml'));
    try {
      const enumerated = await host.enumerate();
      const classified = host.classify({ ...enumerated, vms: enumerated.vms.filter((v) => v.id === TRANS) }, 'checkpoint');
      const t0 = Date.now();
      await assert.rejects(
        host.prepare(classified),
        /domain vmb-lv-trans: a Backup job runs .*"cannot acquire state change lock".*nothing was made/,
      );
      const ms = Date.now() - t0;
      assert.ok(ms < 10_000, `refused at once (${ms} ms), not after libvirt's 30 s lock wait`);
      console.log(`      a user's backup job: refused in ${ms} ms`);
      assert.deepEqual(host.leftovers(classified.backupId), [], 'vmState: nothing of ours is left');
      // the user's job runs on, untouched; no checkpoint of ours
      const desc = parseBackupXml(virshOk('backup-dumpxml', TRANS));
      assert.equal(desc.disks[0].scratch, `${own}/user.scratch`);
      assert.equal(
        virshOk('checkpoint-list', TRANS, '--name')
          .trim()
          .split('\n')
          .filter((n) => n.startsWith('vmbackup-')).length,
        1,
        'only the checkpoint of our last published backup',
      );
    } finally {
      virsh('domjobabort', TRANS);
    }

    // a block job (blockcopy, kept mirroring): "disk 'vda' has a blockjob assigned"
    virshOk('blockcopy', TRANS, 'vda', path.join(own, 'copy.qcow2'), '--transient-job', '--format', 'qcow2');
    try {
      const enumerated = await host.enumerate();
      const classified = host.classify({ ...enumerated, vms: enumerated.vms.filter((v) => v.id === TRANS) }, 'checkpoint');
      await assert.rejects(host.prepare(classified), /disk vda has a block job .*"disk 'vda' has a blockjob assigned"/);
      assert.deepEqual(host.leftovers(classified.backupId), []);
      assert.match(virshOk('blockjob', TRANS, 'vda', '--info', '--raw'), /type=Block Copy/, "the user's block job runs on");
    } finally {
      virsh('blockjob', TRANS, 'vda', '--abort');
    }
    assert.deepEqual(
      parseTable(virshOk('domblklist', '--domain', TRANS, '--details')).map((r) => r.Source),
      [image],
    );
    // and once the other jobs ended, the domain backs up again
    const set = await backup([TRANS], 'checkpoint', false);
    assert.equal(manifestOf(set, TRANS).manifest.files.filter((f: any) => f.kind === 'disk').length, 1);
  });

  it('shut off: each kind of disk copied by qemu-img itself (the loop device and the file under their image lock, NBD and iSCSI by URL, the volume by its path), equal to the disk', async () => {
    virshOk('destroy', STOR);
    // shut off, libvirt sizes no volume disk (domblkinfo --all fails for the whole domain):
    // host-wide domstats still gives the disks it can open (files, block devices) their sizes
    await sameFactsBothWays([STOR], (d) => (d.id !== 'vda' && (d.driver === 'file' || d.driver === 'block') ? RAW_MIB << 20 : undefined));
    const set = await backup([STOR], 'checkpoint', false);
    const b = manifestOf(set, STOR);
    assert.deepEqual([b.vm.method, b.vm.consistency], ['offline', 'offline']);
    for (const d of ['vda', ...SECONDARY.map((r) => r.dev)]) {
      const f = b.manifest.files.find((x: any) => x.disk === d);
      assert.deepEqual([f.chain.mode, f.chain.reason], ['full', 'offline'], d);
      const raw = await flattened(b.backupDir, d);
      let now: string;
      if (d === 'vda') {
        const source = path.join(tmp, 'vda-now.raw');
        assert.equal(spawnSync('qemu-img', ['convert', '-O', 'raw', path.join(dir, 'pool', 'stor-data.qcow2'), source]).status, 0);
        now = await sha256(source);
      } else now = await contentNow(d);
      assert.equal(await sha256(raw), now, `${d}: the offline copy is the disk`);
      await fs.rm(raw);
    }
    assert.equal(virshOk('domstate', STOR).trim(), 'shut off');
  });

  it('the transient domain stopped in the middle of its backup (it is gone from libvirt then): the set fails, nothing of ours is left, no retry forever', async () => {
    const enumerated = await host.enumerate();
    const classified = host.classify({ ...enumerated, vms: enumerated.vms.filter((v) => v.id === TRANS) }, 'checkpoint');
    const post = await host.postSnapshot(await host.snapshot(await host.prepare(classified)));
    virshOk('destroy', TRANS);
    assert.equal(virsh('domstate', TRANS).status === 0, false, 'a transient domain is gone once stopped');
    await assert.rejects(host.copy(post, { concurrency: 1, compress: false }));
    assert.deepEqual(host.leftovers(classified.backupId), [], 'vmState: nothing of ours left');
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes('.vmbackup-')),
      [],
      'no scratch file left',
    );
  });
});
