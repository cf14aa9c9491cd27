import * as assert from 'node:assert/strict';
import { disksFrom } from '../../../src/providers/qemu/block-graph';
import { agentFrom, filesystemsFrom, osFrom } from '../../../src/providers/qemu/guest-facts';
import { convertArgs, parseProgress } from '../../../src/providers/qemu-img';
import { FLEECE_FILE, planView } from '../../../src/providers/qemu/view';

const entry = (device: string, file: string, drv = 'qcow2', extra: object = {}) => ({
  device,
  removable: false,
  inserted: { file, 'node-name': `#${device}`, drv, ro: false, image: { filename: file, format: drv, 'virtual-size': 1024 } },
  ...extra,
});

describe('QEMU answers mapped to the backup set', () => {
  it('backs up every disk QEMU reads (files, host block devices, protocol drivers); leaves out media, empty drives and what the host marks', () => {
    const disks = disksFrom(
      [
        entry('drive-virtio0', '/img/a.qcow2'),
        entry('drive-virtio1', 'nbd+unix://?socket=/run/x.sock', 'raw'),
        entry('drive-virtio2', '/dev/sdb', 'raw'),
        entry('drive-virtio3', 'json:{"driver": "raw", "file": {"driver": "iscsi", "portal": "10.0.0.1"}}', 'raw'),
        entry('drive-scsi0', '/dev/pve/vm-100-disk-1', 'raw'),
        entry('drive-scsi1', 'rbd:rbd/vm-100-disk-2', 'raw'),
        {
          ...entry('drive-ide2', '/iso/install.iso', 'raw'),
          removable: true,
          inserted: { ...entry('x', '/iso/install.iso', 'raw').inserted, ro: true },
        },
        { device: 'drive-ide3', removable: true },
      ],
      [{ 'node-name': 'proto-sdb', drv: 'host_device', file: '/dev/sdb' }],
      new Map([['drive-scsi1', 'backup=0 on scsi1 in /etc/pve/qemu-server/100.conf']]),
    );
    assert.deepEqual(
      disks.map((d) => [d.id, d.driver, d.included, d.excludedReason, d.excludedBy]),
      [
        ['drive-virtio0', 'file', true, undefined, undefined],
        ['drive-virtio1', 'nbd', true, undefined, undefined],
        ['drive-virtio2', 'host_device', true, undefined, undefined],
        ['drive-virtio3', 'iscsi', true, undefined, undefined],
        ['drive-scsi0', 'host_device', true, undefined, undefined],
        ['drive-scsi1', 'rbd', false, 'host-config', 'host'],
        ['drive-ide2', 'file', false, 'removable-media', 'host'],
        ['drive-ide3', '', false, 'no-medium', 'host'],
      ],
    );
    assert.match(disks[5].excludedDetail ?? '', /backup=0 on scsi1/);
  });

  it('reads the guest agent: freeze enabled, OS, file systems with dynamic volumes marked', () => {
    assert.deepEqual(agentFrom({ version: '8.0', supported_commands: [{ name: 'guest-fsfreeze-freeze', enabled: false }] }), {
      present: true,
      responding: true,
      freezeEnabled: false,
      version: '8.0',
    });
    assert.deepEqual(osFrom({ id: 'debian', 'pretty-name': 'Debian 12', 'version-id': '12', 'kernel-release': '6.1' }), {
      id: 'debian',
      name: 'Debian 12',
      version: '12',
      kernel: '6.1',
    });
    assert.deepEqual(filesystemsFrom([{ name: 'dm-0', mountpoint: '/', type: 'xfs', disk: [{ dev: '/dev/vda' }] }]), [
      { mountpoint: '/', type: 'xfs', device: 'dm-0', disks: ['/dev/vda'], dynamic: true },
    ]);
  });

  it('builds qemu-img argument vectors and parses its progress meter', () => {
    assert.deepEqual(convertArgs('/b.qcow2', '/out.qcow2', { sourceFormat: 'qcow2', compress: true, forceShare: true }), [
      'convert',
      '-p',
      '-f',
      'qcow2',
      '-O',
      'qcow2',
      '-U',
      '-c',
      '-m',
      '8',
      '-W',
      '/b.qcow2',
      '/out.qcow2',
    ]);
    assert.equal(parseProgress('    (0.00/100%)\r    (45.50/100%)\r'), 0.455);
    assert.equal(parseProgress('nothing'), undefined);
  });

  it('names every node of a view from the backup id and the disk index: unique, short, ours', () => {
    const vm = {
      id: 'web',
      disks: [
        {
          id: 'drive-virtio0-with-a-very-long-qdev-name-as-libvirt-makes-them',
          node: 'libvirt-1-format',
          qdev: '/machine/peripheral/virtio-disk0/virtio-backend',
          included: true,
          virtualSize: 1,
        },
        {
          id: 'drive-virtio0-with-a-very-long-qdev-name-as-libvirt-makes-them-2',
          node: 'libvirt-2-format',
          qdev: '/machine/peripheral/virtio-disk1/virtio-backend',
          included: true,
          virtualSize: 1,
        },
      ],
    };
    const plan = planView(vm, '20260101T000000Z-abcdef', '/img');
    const names = plan.disks.flatMap((d) => [d.fleeceNode, d.cbwNode, d.accessNode, d.targetNode, d.jobId]);
    assert.equal(new Set(names).size, names.length, 'no two names alike');
    assert.ok(
      names.every((n) => n.length <= 31 && n.startsWith('vmb-abcdef-')),
      names.join(' '),
    );
    assert.ok(
      plan.disks.every((d) => FLEECE_FILE.test(d.fleece)),
      'fleecing images carry our name',
    );
    assert.notEqual(plan.disks[0].fleece, plan.disks[1].fleece);
    assert.ok(!FLEECE_FILE.test('/img/disk.qcow2'));
    assert.throws(
      () =>
        planView({ id: 'x', disks: [{ id: 'd', node: 'vmb-zzzzzz-0-c', qdev: '/q', included: true }] }, '20260101T000000Z-abcdef', '/img'),
      /earlier backup/,
    );
  });
});
