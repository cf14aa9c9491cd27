import assert from 'node:assert/strict';
import { classifyAll } from '../../../src/classify/classify';
import { assertStage } from '../../../src/contract/validate';
import type { EnumeratedVm } from '../../../src/contract/types';
import { HyperVError } from '../../../src/providers/hyperv/errors';
import {
  isoDate,
  mapEnumeration,
  mapState,
  overlaysFromCheckpoint,
  parseGuestVolumes,
  parseKvpItems,
  snapshotNamesIn,
  toArray,
  volumeIdOf,
} from '../../../src/providers/hyperv/parse';
import { fixture } from './helpers';

const enumerated = () => mapEnumeration(fixture('enumerate-host.json').result);
const byName = (vms: EnumeratedVm[], name: string) => {
  const vm = vms.find((v) => v.name === name);
  assert.ok(vm, `VM ${name} in the fixture`);
  return vm;
};

describe('hyperv parse: Windows PowerShell 5.1 JSON quirks', () => {
  it('toArray: null, one object, arrays, and {"value":[...],"Count":n}', () => {
    assert.deepEqual(toArray(null), []);
    assert.deepEqual(toArray(undefined), []);
    assert.deepEqual(toArray({ a: 1 }), [{ a: 1 }]);
    assert.deepEqual(toArray([1, 2]), [1, 2]);
    assert.deepEqual(toArray({ value: [1, 2], Count: 2 }), [1, 2]);
    assert.deepEqual(toArray('x'), ['x']);
  });

  it('isoDate: ISO 8601 and "\\/Date(ms)\\/"', () => {
    assert.equal(isoDate('\\/Date(1710453612000)\\/'), '2024-03-14T22:00:12.000Z');
    assert.equal(isoDate('/Date(1710453612000)/'), '2024-03-14T22:00:12.000Z');
    assert.equal(isoDate('2024-03-15T02:15:04.1230000Z'), '2024-03-15T02:15:04.123Z');
    assert.equal(isoDate(''), undefined);
    assert.equal(isoDate('not a date'), undefined);
  });
});

describe('hyperv parse: VM state', () => {
  it('maps Get-VM State names onto the pipeline words', () => {
    assert.equal(mapState('Running'), 'running');
    assert.equal(mapState('Paused'), 'paused');
    assert.equal(mapState('Saved'), 'saved');
    assert.equal(mapState('Off'), 'off');
    assert.equal(mapState('FastSaved'), 'fast-saved');
    assert.equal(mapState('RunningCritical'), 'running-critical');
    assert.equal(mapState('Saving'), 'saving');
  });
  it('maps an enum that arrived as a number, and refuses free text', () => {
    assert.equal(mapState(2), 'running');
    assert.equal(mapState(3), 'off');
    assert.equal(mapState(6), 'saved');
    assert.equal(mapState(9), 'paused');
    assert.equal(mapState(32785), 'other');
    assert.equal(mapState('Running; rm -rf'), 'other');
    assert.equal(mapState(null), 'other');
  });
});

describe('hyperv parse: KVP (Msvm_KvpExchangeDataItem embedded instances)', () => {
  it('reads Name and Data of each item, unescaping XML', () => {
    const items = fixture('enumerate-host.json').result.Vms[0].KvpIntrinsic;
    const kvp = parseKvpItems(items);
    assert.equal(kvp.get('OSName'), 'Windows Server 2019 Datacenter');
    assert.equal(kvp.get('OSVersion'), '10.0.17763');
    assert.equal(kvp.get('OSPlatformId'), '2');
    assert.equal(kvp.get('CSDVersion'), '');
    const odd = parseKvpItems([
      '<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem"><PROPERTY NAME="Data" TYPE="string"><VALUE>a &amp; b &lt;c&gt; &#233;</VALUE></PROPERTY><PROPERTY NAME="Name" TYPE="string"><VALUE>K</VALUE></PROPERTY></INSTANCE>',
      42,
      '<INSTANCE><PROPERTY NAME="Data" TYPE="string"><VALUE>orphan</VALUE></PROPERTY></INSTANCE>',
    ]);
    assert.deepEqual([...odd], [['K', 'a & b <c> \u00e9']]);
  });

  it('parses the volumes a guest publishes, and ignores malformed values', () => {
    assert.deepEqual(parseGuestVolumes('C:|NTFS|0;D:\\mnt\\data|ReFS|1'), [
      { mountpoint: 'C:', type: 'NTFS', dynamic: false },
      { mountpoint: 'D:\\mnt\\data', type: 'ReFS', dynamic: true },
    ]);
    assert.equal(parseGuestVolumes(undefined), undefined);
    assert.equal(parseGuestVolumes('overflow'), undefined);
    assert.equal(parseGuestVolumes('C:|NTFS'), undefined);
    assert.equal(parseGuestVolumes('C:|NTFS|2'), undefined);
    assert.equal(parseGuestVolumes('C:|NTFS|0|extra'), undefined);
  });
});

describe('hyperv parse: volume ids', () => {
  const vols = new Map([['d:\\vm\\a.vhdx', { Path: 'D:\\vm\\a.vhdx', UniqueId: '\\\\?\\Volume{ABC}\\', Root: 'D:\\' }]]);
  it('prefers the volume GUID path, then CSV folder, SMB share, drive root', () => {
    assert.equal(volumeIdOf('D:\\VM\\A.vhdx', vols), '\\\\?\\volume{abc}\\');
    assert.equal(volumeIdOf('C:\\ClusterStorage\\Volume2\\x\\a.vhdx', vols), 'csv:c:\\clusterstorage\\volume2');
    assert.equal(volumeIdOf('\\\\FS01\\VMs$\\x\\a.vhdx', vols), 'smb:\\\\fs01\\vms$');
    assert.equal(volumeIdOf('F:\\x\\a.vhdx', vols), 'root:f:\\');
    assert.equal(volumeIdOf('', vols), undefined);
  });
  it('keeps ids within the schema limit of 64 characters', () => {
    const long = `\\\\${'s'.repeat(70)}\\share\\a.vhdx`;
    const id = volumeIdOf(long, new Map());
    assert.ok(id && id.startsWith('sha256:') && id.length <= 64);
    assert.equal(volumeIdOf(long, new Map()), id, 'stable');
  });
});

describe('hyperv parse: enumerate.ps1 output -> enumerated VMs', () => {
  it('maps all seven VMs of the recorded host, and the set passes the enumerated schema', () => {
    const vms = enumerated();
    assert.equal(vms.length, 7);
    const doc = {
      stage: 'enumerated',
      backupId: '20240315T021500Z-a1b2c3',
      host: { name: 'HV01', provider: 'hyperv' },
      writer: { name: 'Hyper-V', components: vms.length },
      createdAt: '2024-03-15T02:15:00.000Z',
      vms,
      timings: {},
      warnings: [],
    };
    assertStage('enumerated', doc);
  });

  it('SQL01 (running, VSS OK, same volume, KVP): every online fact', () => {
    const vm = byName(enumerated(), 'SQL01');
    assert.equal(vm.id, '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11');
    assert.equal(vm.state, 'running');
    assert.deepEqual(vm.agent, { present: true, responding: true, freezeEnabled: true });
    assert.deepEqual(vm.guest.os, { id: 'windows', name: 'Windows Server 2019 Datacenter', version: '10.0.17763' });
    assert.deepEqual(vm.guest.filesystems, [
      { mountpoint: 'C:', type: 'NTFS', dynamic: false },
      { mountpoint: 'E:', type: 'NTFS', dynamic: false },
    ]);
    assert.deepEqual(vm.disks, [
      {
        id: 'SCSI0:0',
        node: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx',
        file: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx',
        format: 'vhdx',
        driver: 'vhdx',
        included: true,
        virtualSize: 127 * 2 ** 30,
        volumeId: '\\\\?\\volume{6a1c3f55-0000-0000-0000-100000000000}\\',
        tracking: {
          persistent: true,
          records: [{ name: 'vmbackup-20240314T021500Z-z9y8x7', recording: true, persistent: true, inconsistent: false, granularity: 0 }],
        },
      },
      {
        id: 'SCSI0:1',
        node: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx',
        file: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx',
        format: 'vhdx',
        driver: 'vhdx',
        included: true,
        virtualSize: 512 * 2 ** 30,
        volumeId: '\\\\?\\volume{6a1c3f55-0000-0000-0000-100000000000}\\',
        tracking: {
          persistent: true,
          records: [{ name: 'vmbackup-20240314T021500Z-z9y8x7', recording: true, persistent: true, inconsistent: false, granularity: 0 }],
        },
      },
    ]);
    // .avhdx files are made beside their parents: the view's location is the disks' own folder
    assert.deepEqual(vm.snapshotLocation, {
      path: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks',
      volumeId: '\\\\?\\volume{6a1c3f55-0000-0000-0000-100000000000}\\',
    });
    assert.equal(vm.warnings, undefined);
  });

  it('APP02 (paused): a lone hard drive serialised as an object and a {value,Count} array still map', () => {
    const vm = byName(enumerated(), 'APP02');
    assert.equal(vm.state, 'paused');
    assert.equal(vm.disks.length, 1);
    assert.equal(vm.disks[0]!.id, 'SCSI0:0');
    assert.equal(vm.agent.responding, true);
  });

  it('LEGACY2008 (saved, IDE .vhd, configuration 5.0, SnapshotFileLocation on another volume, VSS without status)', () => {
    const vm = byName(enumerated(), 'LEGACY2008');
    assert.equal(vm.state, 'saved');
    assert.equal(vm.disks[0]!.id, 'IDE0:0');
    assert.equal(vm.disks[0]!.format, 'vhd');
    assert.equal(vm.disks[0]!.driver, 'vhd');
    // SnapshotFileLocation holds the snapshot's configuration only: the .avhdx goes beside the .vhd
    assert.equal(vm.snapshotLocation.volumeId, vm.disks[0]!.volumeId);
    assert.equal(vm.agent.present, true);
    assert.equal(vm.agent.responding, false);
    assert.equal(vm.agent.freezeEnabled, true);
    assert.match(vm.agent.error ?? '', /configuration version 5\.0: application-consistent .* need 6\.2/);
    assert.equal(vm.guest.os, undefined);
  });

  it('FILESRV: integration service disabled, pass-through disk excluded, a dynamic guest volume', () => {
    const vm = byName(enumerated(), 'FILESRV');
    assert.deepEqual(
      { present: vm.agent.present, responding: vm.agent.responding, freezeEnabled: vm.agent.freezeEnabled },
      { present: true, responding: false, freezeEnabled: false },
    );
    assert.match(vm.agent.error ?? '', /disabled/);
    assert.deepEqual(vm.disks[1], {
      id: 'SCSI0:1',
      node: 'disk3',
      file: 'Disk 3 500.00 GB Bus 0 Lun 1 Target 0',
      format: 'raw',
      driver: 'host_device',
      included: false,
      excludedReason: 'hyperv-pass-through',
      excludedBy: 'hypervisor',
      excludedDetail:
        "a pass-through disk (host disk 3): Hyper-V's VSS writer cannot see it; back it up from inside the guest, or name it in the host's exclude setting to mark it as deliberate",
    });
    assert.equal(vm.disks[0]!.included, true);
    assert.deepEqual(vm.guest.filesystems[1], { mountpoint: 'F:', type: 'NTFS', dynamic: true });
  });

  it('WEB03: merge pending, differencing disk, protocol mismatch, leftover backup checkpoint: all warned', () => {
    const vm = byName(enumerated(), 'WEB03');
    assert.equal(vm.state, 'running');
    assert.equal(vm.agent.responding, true);
    assert.match(vm.agent.error ?? '', /protocol version/);
    const w = (vm.warnings ?? []).join('\n');
    assert.match(w, /differencing disk/);
    assert.match(w, /merging this VM's disks \(Merging disks \(37%\)\)/);
    assert.match(w, /leftover backup checkpoint vmbackup-20240301T020000Z-k3j9x2/);
    assert.equal(vm.disks[0]!.format, 'vhdx');
  });

  it('LNX01: Linux guest whose VSS daemon gives No Contact; CSV paths keep one volume id', () => {
    const vm = byName(enumerated(), 'LNX01');
    assert.equal(vm.agent.responding, false);
    assert.match(vm.agent.error ?? '', /No Contact/);
    assert.equal(vm.agent.version, undefined);
    assert.deepEqual(vm.guest.os, { name: 'Ubuntu', version: '22.04.4 LTS (Jammy Jellyfish)' });
    assert.equal(vm.disks[0]!.volumeId, 'csv:c:\\clusterstorage\\volume1');
    assert.equal(vm.snapshotLocation.volumeId, 'csv:c:\\clusterstorage\\volume1');
  });

  it('B\u00fcro-DC: non-ASCII name (\\u escaped on the wire), off, empty drive slot, KVP error as a warning', () => {
    const vm = byName(enumerated(), 'B\u00fcro-DC');
    assert.equal(vm.state, 'off');
    assert.deepEqual(vm.disks[1], {
      id: 'SCSI0:2',
      node: 'SCSI0:2',
      file: '',
      format: 'none',
      driver: 'none',
      included: false,
      excludedReason: 'no-medium',
      excludedBy: 'host',
      excludedDetail: 'a removable drive with no medium',
    });
    assert.match((vm.warnings ?? []).join('\n'), /Msvm_KvpExchangeComponent: Invalid class/);
  });

  it('refuses a VM without a GUID id', () => {
    assert.throws(() => mapEnumeration({ Vms: [{ VM: { Id: 'SQL01', Name: 'SQL01' } }] }), HyperVError);
    assert.throws(() => mapEnumeration(null), /not an object/);
  });

  it('the classification rules give SQL01 the online method and FILESRV a fallback', () => {
    const classified = classifyAll(enumerated(), 'checkpoint');
    const method = (name: string) => classified.find((v) => v.name === name)!.method;
    assert.equal(method('SQL01'), 'child-vm-snapshot');
    assert.equal(method('FILESRV'), 'checkpoint');
    assert.equal(method('LEGACY2008'), 'checkpoint');
    assert.equal(method('B\u00fcro-DC'), 'offline');
  });
});

describe('hyperv parse: checkpoint.ps1 output -> overlays', () => {
  it('base = the parent the VM used before, overlay = the new .avhdx, overlayNode = the checkpoint Id', () => {
    const { overlays, checkpointId } = overlaysFromCheckpoint(['SCSI0:0', 'SCSI0:1'], fixture('checkpoint-production.json').result);
    assert.equal(checkpointId, '9c8b7a65-4321-4fed-8cba-0123456789ab');
    assert.deepEqual(overlays, [
      {
        disk: 'SCSI0:0',
        base: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx',
        baseFormat: 'vhdx',
        overlay: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os_BECAA6A2-DEC7-473A-9EFB-EC9F2E51C194.avhdx',
        overlayNode: '9c8b7a65-4321-4fed-8cba-0123456789ab',
      },
      {
        disk: 'SCSI0:1',
        base: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx',
        baseFormat: 'vhdx',
        overlay: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data_8D1FAAC8-C253-4C43-836A-18EEB4B04496.avhdx',
        overlayNode: '9c8b7a65-4321-4fed-8cba-0123456789ab',
      },
    ]);
  });

  it('refuses a disk that still writes to its parent, a missing disk, a parent mismatch, no Id', () => {
    assert.throws(
      () => overlaysFromCheckpoint(['SCSI0:0', 'SCSI0:1'], fixture('checkpoint-no-differencing.json').result),
      /SCSI0:1 still writes to/,
    );
    assert.throws(() => overlaysFromCheckpoint(['SCSI0:5'], fixture('checkpoint-production.json').result), /SCSI0:5 is missing/);
    const r = fixture('checkpoint-production.json').result;
    r.AfterVhds[0].ParentPath = 'D:\\elsewhere.vhdx';
    assert.throws(() => overlaysFromCheckpoint(['SCSI0:0'], r), /has parent D:\\elsewhere.vhdx/);
    const r2 = fixture('checkpoint-production.json').result;
    r2.Checkpoint.HardDrives[0].Path = 'D:\\other.vhdx';
    assert.throws(() => overlaysFromCheckpoint(['SCSI0:0'], r2), /the checkpoint holds/);
    assert.throws(() => overlaysFromCheckpoint(['SCSI0:0'], {}), /no checkpoint Id/);
  });

  it('finds our checkpoint name in overlays that were only planned', () => {
    const planned = [
      {
        disk: 'SCSI0:0',
        base: 'D:\\x.vhdx',
        baseFormat: 'vhdx',
        overlay: 'D:\\snap/D:\\x.vhdx.vmbackup-20240315T021500Z-a1b2c3.qcow2',
        overlayNode: 'vmb-a1b2c3-SCSI0_0',
      },
    ];
    assert.deepEqual(snapshotNamesIn(planned), ['vmbackup-20240315T021500Z-a1b2c3']);
    assert.deepEqual(snapshotNamesIn([{ ...planned[0]!, overlay: 'D:\\x.avhdx' }]), []);
  });
});
