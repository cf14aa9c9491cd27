// The QEMU provider's inventory of VMs whose QEMU is not running: <id>.vm.json files validated
// (ajv), Proxmox confs parsed, their volumes resolved by pvesm and the VM locked by qm, both on a
// fake runner (no Proxmox host here), and the chain/classification such a VM gets.
import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { classifyVm } from '../../../src/classify/classify';
import { planChain } from '../../../src/pipeline/chain-plan';
import { fromJson, hostExclusions, readInventory } from '../../../src/providers/qemu/inventory';
import { lockOffline, planOffline, unlockOffline, type OfflinePlan } from '../../../src/providers/qemu/offline';
import { lockSocket } from '../../../src/providers/offline-image';
import { parseProxmoxConf, type Runner } from '../../../src/providers/qemu/proxmox';
import { hostSettings } from '../../../src/host/settings';
import { onlineVm } from '../domain/fixtures';
import type { EnumeratedVm } from '../../../src/contract/types';

// dist/test/unit/qemu -> the sources' fixtures
const PVE = path.resolve(__dirname, '../../../../test/unit/qemu/fixtures/pve');

/** A runner that records every argument vector and answers from a table. */
function fakeRunner(answer: (file: string, args: readonly string[]) => string | Error): Runner & { calls: string[][] } {
  const calls: string[][] = [];
  const run = (async (file: string, args: readonly string[]) => {
    calls.push([file, ...args]);
    const a = answer(file, args);
    if (a instanceof Error) throw a;
    return { stdout: a };
  }) as Runner & { calls: string[][] };
  run.calls = calls;
  return run;
}

const pvesmPaths = (file: string, args: readonly string[]): string | Error => {
  if (file !== 'pvesm' || args[0] !== 'path') return new Error(`unexpected ${file} ${args.join(' ')}`);
  const v = args[1];
  if (v.startsWith('ceph-pool:')) return `rbd:rbd/${v.split(':')[1]}:conf=/etc/pve/ceph.conf\n`;
  if (v.startsWith('local-lvm:')) return `/dev/pve/${v.split(':')[1]}\n`;
  if (v.startsWith('nfs-store:')) return `/mnt/pve/nfs-store/images/${v.split(':')[1]}\n`;
  return new Error(`pvesm: storage '${v.split(':')[0]}' does not exist`);
};

describe('QEMU inventory: <id>.vm.json', () => {
  const good = { name: 'web', disks: [{ id: 'virtio0', file: '/var/lib/vms/web.qcow2', format: 'qcow2' }] };

  it('a disk with "backup": false is left out by the host', () => {
    const doc = { disks: [...good.disks, { id: 'virtio1', file: '/var/lib/vms/scratch.raw', format: 'raw', backup: false }] };
    const vm = fromJson('web', '/run/q/web.vm.json', JSON.stringify(doc));
    assert.deepEqual(vm.disks[1], {
      id: 'virtio1',
      file: '/var/lib/vms/scratch.raw',
      format: 'raw',
      hostExcluded: '"backup": false in /run/q/web.vm.json',
    });
    assert.equal(hostExclusions(vm).get('drive-virtio1'), '"backup": false in /run/q/web.vm.json');
  });

  it('reads a valid entry', () => {
    const vm = fromJson('web', '/run/q/web.vm.json', JSON.stringify(good));
    assert.equal(vm.name, 'web');
    assert.deepEqual(vm.disks, [{ id: 'virtio0', file: '/var/lib/vms/web.qcow2', format: 'qcow2' }]);
  });

  const bad: [string, unknown, RegExp][] = [
    [
      'an unknown format',
      { disks: [{ id: 'virtio0', file: '/a.img', format: 'vmdk' }] },
      /\/run\/q\/x\.vm\.json: \/disks\/0\/format must be equal to one of the allowed values/,
    ],
    ['a relative path', { disks: [{ id: 'virtio0', file: 'images/a.qcow2', format: 'qcow2' }] }, /\/disks\/0\/file must match pattern/],
    [
      'a .. segment',
      { disks: [{ id: 'virtio0', file: '/var/lib/../../etc/shadow', format: 'raw' }] },
      /\/disks\/0\/file must match pattern/,
    ],
    ['no disks', { name: 'x', disks: [] }, /\/disks must NOT have fewer than 1 items/],
    [
      'a field it does not know',
      { disks: [{ id: 'virtio0', file: '/a.qcow2', format: 'qcow2' }], cmd: 'rm -rf /' },
      /additionalProperties: cmd/,
    ],
    ['a disk id that is no name', { disks: [{ id: '../x', file: '/a.qcow2', format: 'qcow2' }] }, /\/disks\/0\/id must match pattern/],
    [
      'two disks with one id',
      {
        disks: [
          { id: 'd', file: '/a.qcow2', format: 'qcow2' },
          { id: 'd', file: '/b.qcow2', format: 'qcow2' },
        ],
      },
      /\/disks\/1\/id "d" names two disks/,
    ],
  ];
  for (const [what, doc, re] of bad) {
    it(`refuses ${what}, naming the file and the field`, () => {
      assert.throws(() => fromJson('x', '/run/q/x.vm.json', JSON.stringify(doc)), re);
    });
  }
  it('refuses a file that is not JSON, naming the file', () => {
    assert.throws(() => fromJson('x', '/run/q/x.vm.json', '{ name: web'), /\/run\/q\/x\.vm\.json: not JSON/);
  });

  it('lists every entry of the socket dir, the bad ones with why; other files and kind none are ignored', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-inv-'));
    try {
      await fs.writeFile(path.join(dir, 'web.vm.json'), JSON.stringify(good));
      await fs.writeFile(path.join(dir, 'db.vm.json'), '[]');
      await fs.writeFile(path.join(dir, 'web.qmp.json'), '{}');
      await fs.mkdir(path.join(dir, 'dir.vm.json'));
      await fs.writeFile(path.join(dir, 'a b.vm.json'), JSON.stringify(good));
      const run = fakeRunner(() => new Error('no program may run for json'));
      const skipped: string[] = [];
      const inv = await readInventory({ kind: 'json', socketDir: dir, run }, skipped);
      assert.deepEqual([...inv.keys()], ['db', 'dir', 'web']);
      assert.deepEqual(skipped, [path.join(dir, 'a b.vm.json')], 'a file no VM id can be made of is reported, not silently dropped');
      assert.equal(inv.get('web')!.ok, true);
      const db = inv.get('db')!;
      assert.ok(!db.ok && /db\.vm\.json: \/ must be object/.test(db.reason), JSON.stringify(db));
      const d = inv.get('dir')!;
      assert.ok(!d.ok && /not a regular file/.test(d.reason));
      assert.deepEqual(run.calls, []);
      assert.equal((await readInventory({ kind: 'none', socketDir: dir, run })).size, 0);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

/** an enumerated stopped VM with these included disks (id, file, driver) */
function onlineVmForPlan(disks: [string, string, string][]): EnumeratedVm {
  return {
    id: '100',
    name: 'web01',
    state: 'off',
    agent: { present: false, responding: false, freezeEnabled: false },
    guest: { filesystems: [] },
    disks: disks.map(([id, file, driver]) => ({ id, node: id, file, format: 'raw', driver, included: true, virtualSize: 1 << 20 })),
    snapshotLocation: { path: '/var/tmp' },
  };
}

describe('QEMU inventory: Proxmox confs (not run on a Proxmox host: fixtures and a fake runner)', () => {
  it('parses the disk keys of the current config only: no cdrom, none, unused or snapshot section', async () => {
    const conf = parseProxmoxConf(await fs.readFile(path.join(PVE, '100.conf'), 'utf8'));
    assert.equal(conf.name, 'web01');
    assert.equal(conf.lock, undefined);
    assert.deepEqual(conf.disks, [
      { id: 'efidisk0', volume: 'local-lvm:vm-100-disk-0' },
      { id: 'scsi0', volume: 'local-lvm:vm-100-disk-1' },
      { id: 'scsi1', volume: '/mnt/images/100/data.qcow2' },
      { id: 'virtio2', volume: 'nfs-store:100/vm-100-disk-2.qcow2', format: 'qcow2' },
      { id: 'tpmstate0', volume: 'local-lvm:vm-100-disk-3' },
      { id: 'virtio3', volume: 'local-lvm:vm-100-disk-4', noBackup: true },
    ]);
    assert.equal(parseProxmoxConf('lock: migrate\nvirtio0: file=local:1/a.raw,size=1G\n').lock, 'migrate');
    assert.deepEqual(parseProxmoxConf('virtio0: file=local:1/a.raw,size=1G\n').disks, [{ id: 'virtio0', volume: 'local:1/a.raw' }]);
  });

  it('resolves volumes with `pvesm path <volid>` (argument vectors), absolute paths as they are, network storage as its URI; backup=0 left out by the host', async () => {
    const run = fakeRunner(pvesmPaths);
    const inv = await readInventory({ kind: 'proxmox', socketDir: '/nonexistent', proxmoxConfDir: PVE, run });
    assert.deepEqual([...inv.keys()], ['100', '101', '102', '103']);
    const web = inv.get('100')!;
    assert.ok(web.ok);
    assert.equal(web.vm.name, 'web01');
    assert.deepEqual(web.vm.disks, [
      { id: 'efidisk0', file: '/dev/pve/vm-100-disk-0', format: 'raw' },
      { id: 'scsi0', file: '/dev/pve/vm-100-disk-1', format: 'raw' },
      { id: 'scsi1', file: '/mnt/images/100/data.qcow2', format: 'qcow2' },
      { id: 'virtio2', file: '/mnt/pve/nfs-store/images/100/vm-100-disk-2.qcow2', format: 'qcow2' },
      { id: 'tpmstate0', file: '/dev/pve/vm-100-disk-3', format: 'raw' },
      {
        id: 'virtio3',
        file: 'local-lvm:vm-100-disk-4',
        format: 'raw',
        hostExcluded: `backup=0 on virtio3 in ${path.join(PVE, '100.conf')}`,
      },
    ]);
    assert.ok(!run.calls.some((c) => c.includes('local-lvm:vm-100-disk-4')), 'a disk left out is not even resolved');
    assert.deepEqual(
      [...hostExclusions(web.vm).keys()],
      ['virtio3', 'drive-virtio3'],
      "a running Proxmox VM shows the disk as drive-<key>: both ids are the host's exclusion",
    );
    assert.ok(run.calls.some((c) => c.join(' ') === 'pvesm path local-lvm:vm-100-disk-1'));
    assert.ok(!run.calls.some((c) => c.includes('/mnt/images/100/data.qcow2')), 'an absolute path is not asked of pvesm');
    const ceph = inv.get('102')!;
    assert.ok(ceph.ok);
    assert.deepEqual(ceph.vm.disks, [{ id: 'scsi0', file: 'rbd:rbd/vm-102-disk-0:conf=/etc/pve/ceph.conf', format: 'raw', network: true }]);
  });

  it('a volume pvesm cannot resolve makes that VM a bad entry, with the conf and the disk', async () => {
    const run = fakeRunner((file, args) =>
      args[1].startsWith('local-lvm:vm-101') ? new Error("pvesm: storage 'local-lvm' is not online") : pvesmPaths(file, args),
    );
    const inv = await readInventory({ kind: 'proxmox', socketDir: '/x', proxmoxConfDir: PVE, run });
    const db = inv.get('101')!;
    assert.ok(!db.ok);
    assert.match(db.reason, /101\.conf: virtio0: pvesm: storage 'local-lvm' is not online/);
  });

  const plan = (id: string, confDir: string): OfflinePlan => ({
    offline: true,
    backupId: '20261201T120000Z-abcdef',
    vm: id,
    disks: [],
    proxmox: { id, confDir },
  });

  it('locks with `qm set <id> --lock backup` and unlocks with `qm unlock <id>`, checking the conf after', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-pve-'));
    try {
      const conf = path.join(dir, '100.conf');
      await fs.copyFile(path.join(PVE, '100.conf'), conf);
      // the fake qm does to the conf what qm does
      const run = fakeRunner((file) => {
        if (file !== '/usr/sbin/qm') return new Error('not qm');
        return '';
      });
      const qmDoes: Runner = async (file, args, o) => {
        const r = await run(file, args, o);
        const text = await fs.readFile(conf, 'utf8');
        if (args[0] === 'set') await fs.writeFile(conf, `lock: backup\n${text}`);
        if (args[0] === 'unlock') await fs.writeFile(conf, text.replace(/^lock: .*\n/m, ''));
        return r;
      };
      const tools = { qemuNbd: 'qemu-nbd', qm: '/usr/sbin/qm', run: qmDoes };
      await lockOffline(plan('100', dir), tools);
      assert.equal(parseProxmoxConf(await fs.readFile(conf, 'utf8')).lock, 'backup');
      await unlockOffline(plan('100', dir), tools);
      assert.deepEqual(run.calls, [
        ['/usr/sbin/qm', 'set', '100', '--lock', 'backup'],
        ['/usr/sbin/qm', 'unlock', '100'],
      ]);
      assert.equal(parseProxmoxConf(await fs.readFile(conf, 'utf8')).lock, undefined);
      // repeated: nothing more to do
      await unlockOffline(plan('100', dir), tools);
      assert.equal(run.calls.length, 2);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("a stopped VM's LVM volume or Ceph image has no image lock: planned without a holder, locked by qm alone, refused without qm", async () => {
    const inv = {
      id: '100',
      source: path.join(PVE, '100.conf'),
      kind: 'proxmox' as const,
      definition: {},
      disks: [
        { id: 'scsi0', file: '/dev/pve/vm-100-disk-1', format: 'raw' },
        { id: 'scsi1', file: 'rbd:rbd/vm-100-disk-2:conf=/etc/pve/ceph.conf', format: 'raw', network: true as const },
      ],
    };
    const vm = onlineVmForPlan([
      ['scsi0', '/dev/pve/vm-100-disk-1', 'host_device'],
      ['scsi1', 'rbd:rbd/vm-100-disk-2:conf=/etc/pve/ceph.conf', 'rbd'],
    ]);
    const p = planOffline(vm, inv, '20261201T120000Z-abcdef', PVE);
    assert.deepEqual(
      p.disks.map((d) => [d.disk, d.lock]),
      [
        ['scsi0', undefined],
        ['scsi1', undefined],
      ],
      'no qemu-nbd holder: QEMU honours no lock on a block device or network volume',
    );
    const run = fakeRunner(() => '');
    await assert.rejects(lockOffline({ ...p, proxmox: undefined }, { qemuNbd: 'qemu-nbd', run }), /no image lock QEMU honours/);
    assert.deepEqual(run.calls, [], 'refused before anything is done');
  });

  it('a VM locked by something else is refused before any call, and its lock is never undone by us', async () => {
    const run = fakeRunner(() => '');
    const tools = { qemuNbd: 'qemu-nbd', qm: '/usr/sbin/qm', run };
    await assert.rejects(lockOffline(plan('101', PVE), tools), /Proxmox VM 101 is locked \(migrate\); not backed up now/);
    await unlockOffline(plan('101', PVE), tools);
    // a lock "backup" that this process found, not took (vzdump's): left alone
    await assert.rejects(lockOffline(plan('103', PVE), tools), /locked \(backup\)/);
    await unlockOffline(plan('103', PVE), tools);
    assert.deepEqual(run.calls, []);
  });

  it('after a restart (no memory of the lock) recovery unlocks a conf locked "backup" and nothing else', async () => {
    const run = fakeRunner(() => '');
    const tools = { qemuNbd: 'qemu-nbd', qm: '/usr/sbin/qm', run };
    await unlockOffline({ ...plan('103', PVE), backupId: '20261201T120000Z-zzzzzz' }, tools).catch(() => undefined);
    await unlockOffline({ ...plan('101', PVE), backupId: '20261201T120000Z-zzzzzz' }, tools);
    assert.deepEqual(run.calls, [['/usr/sbin/qm', 'unlock', '103']]);
  });

  it('without qm (not a Proxmox host) no config lock is taken', async () => {
    const run = fakeRunner(() => '');
    await lockOffline(plan('100', PVE), { qemuNbd: 'qemu-nbd', run });
    await unlockOffline(plan('100', PVE), { qemuNbd: 'qemu-nbd', run });
    assert.deepEqual(run.calls, []);
  });
});

describe('a stopped VM: classification, chain and settings', () => {
  const off = () =>
    onlineVm({ state: 'off', agent: { present: false, responding: false, freezeEnabled: false }, guest: { filesystems: [] } });

  it('is classified offline, with the vm-running reason', () => {
    const vm = classifyVm(off(), 'checkpoint');
    assert.equal(vm.method, 'offline');
    assert.equal(vm.consistency, 'offline');
    assert.equal(vm.reasons.find((r) => r.rule === 'vm-running')!.detail, 'VM is off, not running');
    assert.equal(classifyVm(off(), 'saved-state').method, 'offline');
  });

  it('is copied whole with the chain reason "offline", and starts no change tracking', async () => {
    const root = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-chain-'));
    try {
      const vm = classifyVm(off(), 'checkpoint');
      const disk = vm.disks.find((d) => d.included)!;
      delete disk.tracking;
      const view = { disks: [{ disk: disk.id, artifact: 'disk-x.qcow2', format: 'qcow2' }], ref: {} };
      const { plans, track } = await planChain({ root } as never, 'h', vm, view, '20261201T120000Z-abcdef', true);
      assert.equal(plans[0].mode, 'full');
      assert.equal(plans[0].reason, 'offline');
      assert.equal(plans[0].record, undefined);
      assert.deepEqual(track.records, []);
    } finally {
      await fs.rm(root, { recursive: true, force: true });
    }
  });

  it('lock sockets are short, private and named from the plan alone', () => {
    const s = lockSocket('20261201T120000Z-abcdef', 'a'.repeat(64), 3);
    assert.equal(s, lockSocket('20261201T120000Z-abcdef', 'a'.repeat(64), 3));
    assert.ok(s.length < 108);
    assert.match(path.basename(s), /^abcdef-[0-9a-f]{10}-3\.lock$/);
    // another backup with the same last six characters (another Node-RED) gets another socket
    assert.notEqual(s, lockSocket('20261202T120000Z-abcdef', 'a'.repeat(64), 3));
  });

  it('host setting inventory: json by default, proxmox or none, anything else refused naming the field', () => {
    const base = { provider: 'qemu', socketDir: '/run/qemu-server', repository: '/backup' };
    assert.equal(hostSettings(base).provider.qemu!.inventory, 'json');
    assert.equal(hostSettings({ ...base, inventory: 'proxmox' }).provider.qemu!.inventory, 'proxmox');
    assert.equal(hostSettings({ ...base, inventory: 'none' }).provider.qemu!.inventory, 'none');
    assert.throws(() => hostSettings({ ...base, inventory: 'libvirt' }), /^Error: inventory: "libvirt" is not one of json, proxmox, none$/);
  });
});
