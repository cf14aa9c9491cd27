import type { EnumeratedVm } from '../../../src/contract/types';

/** A VM for which every online condition holds; tests change one thing at a time. */
export function onlineVm(over: Partial<EnumeratedVm> = {}): EnumeratedVm {
  return {
    id: 'web1',
    name: 'web1',
    state: 'running',
    agent: { present: true, responding: true, freezeEnabled: true, version: '7.2.22' },
    guest: {
      os: { id: 'debian', name: 'Debian GNU/Linux 12', version: '12' },
      filesystems: [{ mountpoint: '/', type: 'ext4', device: 'vda1', disks: ['/dev/vda'], dynamic: false }],
    },
    disks: [
      {
        id: 'drive-virtio0',
        node: '#block1',
        file: '/var/lib/vz/web1.qcow2',
        format: 'qcow2',
        driver: 'file',
        included: true,
        virtualSize: 1 << 30,
        volumeId: '2049',
      },
    ],
    snapshotLocation: { path: '/var/lib/vz', volumeId: '2049' },
    ...over,
  };
}
