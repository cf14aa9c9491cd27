import { excluded } from '../../../src/contract/exclusion';
import * as assert from 'node:assert/strict';
import { classifyAll, classifyVm } from '../../../src/classify/classify';
import { fitVm } from '../../../src/contract/limits';
import { vmError } from '../../../src/contract/validate';
import { onlineVm } from './fixtures';

const failed = (vm: ReturnType<typeof classifyVm>) => vm.reasons.filter((r) => !r.ok).map((r) => r.rule);

describe('classification', () => {
  it('gives the online method when every condition holds, with six named reasons', () => {
    const vm = classifyVm(onlineVm(), 'checkpoint');
    assert.equal(vm.method, 'child-vm-snapshot');
    assert.equal(vm.consistency, 'application');
    assert.deepEqual(
      vm.reasons.map((r) => r.rule),
      ['integration-service', 'vm-running', 'snapshot-location-same-volume', 'basic-disks', 'freezable-filesystems', 'supported-guest-os'],
    );
    assert.deepEqual(failed(vm), []);
  });

  const cases: [string, Parameters<typeof onlineVm>[0], string][] = [
    ['agent absent', { agent: { present: false, responding: false, freezeEnabled: false } }, 'integration-service'],
    ['agent silent', { agent: { present: true, responding: false, freezeEnabled: false, error: 'timeout' } }, 'integration-service'],
    ['freeze disabled', { agent: { present: true, responding: true, freezeEnabled: false } }, 'integration-service'],
    ['VM paused', { state: 'paused' }, 'vm-running'],
    ['overlay on another volume', { snapshotLocation: { path: '/mnt/other', volumeId: '2050' } }, 'snapshot-location-same-volume'],
    ['overlay volume unknown', { snapshotLocation: { path: '/gone' } }, 'snapshot-location-same-volume'],
    ['LVM volume', { guest: { filesystems: [{ mountpoint: '/', type: 'ext4', device: 'dm-0' }], os: { name: 'Debian' } } }, 'basic-disks'],
    [
      'md RAID volume',
      { guest: { filesystems: [{ mountpoint: '/srv', type: 'xfs', device: 'md127' }], os: { name: 'Debian' } } },
      'basic-disks',
    ],
    [
      'FAT file system',
      { guest: { filesystems: [{ mountpoint: '/boot/efi', type: 'vfat', device: 'vda1' }], os: { name: 'Debian' } } },
      'freezable-filesystems',
    ],
    ['no file system reported', { guest: { filesystems: [], os: { name: 'Debian' } } }, 'freezable-filesystems'],
    [
      'Windows 2000',
      {
        guest: {
          filesystems: [{ mountpoint: 'C:\\', type: 'NTFS', device: 'Volume{1}' }],
          os: { name: 'Microsoft Windows 2000', version: '5.0' },
        },
      },
      'supported-guest-os',
    ],
    ['OS unknown', { guest: { filesystems: [{ mountpoint: '/', type: 'ext4', device: 'vda' }] } }, 'supported-guest-os'],
  ];
  for (const [what, over, rule] of cases) {
    it(`falls back when ${what} (${rule}), by policy`, () => {
      const checkpoint = classifyVm(onlineVm(over), 'checkpoint');
      assert.ok((failed(checkpoint) as string[]).includes(rule), `${rule} fails: ${JSON.stringify(checkpoint.reasons)}`);
      if (over?.state === 'paused')
        assert.equal(checkpoint.reasons.find((r) => r.rule === 'vm-running')?.detail, 'VM is paused, not running');
      assert.equal(checkpoint.method, 'checkpoint');
      assert.equal(checkpoint.consistency, 'crash');
      // a VM that is not running is never saved (QEMU would leave its images inactive): checkpoint
      assert.equal(classifyVm(onlineVm(over), 'saved-state').method, over?.state === 'paused' ? 'checkpoint' : 'saved-state');
      assert.throws(() => classifyAll([onlineVm(over)], 'fail'), new RegExp(`web1 \\(.*${rule}`));
    });
  }

  it('gives a paused VM the checkpoint method, not saved-state, with the reason (issue 11 mechanism 7)', () => {
    for (const state of ['paused', 'suspended', 'inmigrate']) {
      const vm = classifyVm(onlineVm({ state }), 'saved-state');
      assert.deepEqual([vm.method, vm.consistency], ['checkpoint', 'crash'], state);
      assert.match(
        vm.warnings.join('\n'),
        new RegExp(`saved-state not used: the VM is ${state}, not running; its disks do not change while its vCPUs are stopped`),
      );
    }
    const running = classifyVm(onlineVm({ agent: { present: false, responding: false, freezeEnabled: false } }), 'saved-state');
    assert.equal(running.method, 'saved-state', 'a running VM still gets saved-state by policy');
    assert.deepEqual(running.warnings, []);
  });

  it('a guest listing more file systems than the schema holds is clamped with a warning and is not application-consistent', () => {
    const many = Array.from({ length: 300 }, (_, i) => ({ mountpoint: `/m${i}`, type: 'ext4', device: `vd${i}` }));
    const fitted = fitVm(onlineVm({ guest: { filesystems: many, os: { name: 'Debian' } } }));
    assert.equal(fitted.unreachable, undefined);
    assert.equal(fitted.guest.filesystems.length, 256);
    assert.equal(fitted.guest.filesystemsListed, 300);
    assert.match(fitted.warnings!.join('\n'), /the guest lists 300 file systems; only the first 256 are kept/);
    assert.equal(vmError('enumerated', fitted), null);
    const vm = classifyVm(fitted, 'checkpoint');
    assert.deepEqual([vm.method, vm.consistency], ['checkpoint', 'crash']);
    assert.match(vm.reasons.find((r) => r.rule === 'freezable-filesystems')!.detail, /lists 300 file systems, more than the 256/);
  });

  it('a VM past a limit that cannot be clamped (too many disks) is refused alone, with the reason', () => {
    const disk = onlineVm().disks[0];
    const vm = fitVm(onlineVm({ disks: Array.from({ length: 65 }, (_, i) => ({ ...disk, id: `d${i}` })) }));
    assert.equal(vm.state, 'unreachable');
    assert.match(vm.unreachable!.reason, /does not fit the backup set: \/disks must NOT have more than 64 items/);
    assert.deepEqual(vm.disks, []);
    assert.equal(vmError('enumerated', vm), null);
    const good = fitVm(onlineVm());
    assert.deepEqual(good, onlineVm(), 'a VM within the limits is unchanged');
  });

  it('copies a shut-down VM as it is, whatever the policy', () => {
    for (const policy of ['checkpoint', 'saved-state', 'fail'] as const) {
      const [vm] = classifyAll(
        [onlineVm({ state: 'shutdown', agent: { present: false, responding: false, freezeEnabled: false } })],
        policy,
      );
      assert.deepEqual([vm.method, vm.consistency], ['offline', 'offline']);
    }
  });

  it('warns about every excluded disk, naming who left it out, and keeps the rest', () => {
    const vm = classifyVm(
      onlineVm({
        disks: [
          onlineVm().disks[0],
          {
            id: 'drive-scsi1',
            node: '#b2',
            file: '/dev/pve/vm-100-disk-1',
            format: 'raw',
            driver: 'host_device',
            ...excluded('host-config', 'backup=0 in /etc/pve/qemu-server/100.conf'),
          },
          {
            id: 'SCSI0:1',
            node: 'disk2',
            file: '',
            format: 'raw',
            driver: 'host_device',
            ...excluded('hyperv-pass-through', "Hyper-V's VSS writer cannot see it"),
          },
        ],
      }),
      'checkpoint',
    );
    assert.equal(vm.method, 'child-vm-snapshot', 'excluded disks do not change the method');
    assert.equal(vm.warnings.length, 2);
    assert.match(vm.warnings[0], /drive-scsi1 .*NOT backed up, left out by the host's configuration \(host-config: backup=0/);
    assert.doesNotMatch(vm.warnings[0], /not a choice/);
    assert.match(
      vm.warnings[1],
      /SCSI0:1 .*NOT backed up, left out by the hypervisor \(hyperv-pass-through.*not a choice of yours or the host/,
    );
  });

  it('trusts a guest whose volumes the host cannot see only when its agent answers (Hyper-V)', () => {
    const hidden = { guest: { filesystems: [], filesystemsVisible: false, os: { name: 'Windows Server 2022' } } };
    assert.deepEqual(failed(classifyVm(onlineVm(hidden), 'checkpoint')), []);
    assert.ok(
      failed(classifyVm(onlineVm({ ...hidden, agent: { present: true, responding: false, freezeEnabled: false } }), 'checkpoint')).includes(
        'freezable-filesystems',
      ),
    );
  });
});
