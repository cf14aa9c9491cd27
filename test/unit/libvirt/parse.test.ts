// The libvirt parsers on virsh output recorded from libvirt 9.0 on this machine (fixtures/), and
// on hand-written XML for the disk kinds the lab has none of.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { classifyAll } from '../../../src/classify/classify';
import { backupXml, nbdUri, parseNbdUri } from '../../../src/providers/libvirt/backup-job';
import {
  definitionFrom,
  guestFrom,
  mapState,
  parseBackupXml,
  parseDomState,
  parseDomStats,
  parseJobInfo,
  parseKeyValues,
  parseNames,
  parseTable,
} from '../../../src/providers/libvirt/parse';
import { networkUrl, parseVolumeXml, resolvedVolume } from '../../../src/providers/libvirt/disks';
import { checkUri, virshErrorText } from '../../../src/providers/libvirt/virsh';
import { parseXml } from '../../../src/providers/libvirt/xml';

// dist/test/unit/libvirt -> the sources' fixtures
const FIXTURES = path.resolve(__dirname, '../../../../test/unit/libvirt/fixtures');
const fixture = (name: string) => readFileSync(path.join(FIXTURES, name), 'utf8');

describe('libvirt parse: recorded virsh output', () => {
  it('list --all --name and domstate --reason', () => {
    assert.deepEqual(parseNames(fixture('list-all-name.txt')), ['vmb-lv-agent', 'vmb-lv-noagent', 'vmb-lv-off']);
    assert.deepEqual(parseDomState(fixture('domstate-running.txt')), { state: 'running', reason: 'booted' });
    assert.deepEqual(parseDomState(fixture('domstate-off.txt')), { state: 'shut off', reason: 'failed' });
    assert.deepEqual(parseDomState('paused (migrating)\n'), { state: 'paused', reason: 'migrating' });
    assert.throws(() => parseDomState('???'), /domstate: cannot read/);
  });

  it('maps states onto the classification words: shut off is off, a managed save is not', () => {
    assert.equal(mapState('running', 'booted'), 'running');
    assert.equal(mapState('shut off', 'shutdown'), 'off');
    assert.equal(mapState('shut off', 'saved'), 'saved');
    assert.equal(mapState('paused', 'user'), 'paused');
    assert.equal(mapState('in shutdown', ''), 'shutting-down');
    assert.equal(mapState('pmsuspended', ''), 'suspended');
  });

  it('domblklist --details and domblkinfo --all tables', () => {
    assert.deepEqual(parseTable(fixture('domblklist.txt')), [
      { Type: 'file', Device: 'disk', Target: 'vda', Source: '/tmp/lab-h3-libvirt/libvirt/images/vmb-lv-agent-data.qcow2' },
    ]);
    const info = parseTable(fixture('domblkinfo.txt'));
    assert.equal(info[0].Target, 'vda');
    assert.equal(Number(info[0].Capacity), 128 << 20);
    assert.deepEqual(parseTable(''), []);
  });

  it("domstats --state --block: every domain's state and reason as domstate names them, and its disks' capacities", () => {
    // recorded: a running domain, a managed-saved one, a shut-off one whose third disk is a pool volume (no capacity)
    const stats = parseDomStats(fixture('domstats-state-block.txt'));
    assert.deepEqual([...stats.keys()], ['vmb-fl-000', 'vmb-fl-003', 'vmb-fl-005']);
    const run = stats.get('vmb-fl-000')!;
    assert.deepEqual([run.state, run.reason, mapState(run.state, run.reason)], ['running', 'booted', 'running']);
    assert.deepEqual(
      [...run.capacity],
      [
        ['vda', 16 << 20],
        ['vdb', 8 << 20],
      ],
    );
    const saved = stats.get('vmb-fl-003')!;
    assert.deepEqual([saved.state, saved.reason, mapState(saved.state, saved.reason)], ['shut off', 'saved', 'saved']);
    const off = stats.get('vmb-fl-005')!;
    assert.deepEqual([off.state, off.reason, mapState(off.state, off.reason)], ['shut off', 'unknown', 'off']);
    assert.deepEqual([...off.capacity.keys()], ['vda', 'vdb'], 'the volume disk libvirt cannot size is left without one');
    // names with quotes and spaces are taken whole; an unknown state is named, never dropped
    const odd = parseDomStats("Domain: 'it's a vm'\n  state.state=9\n  state.reason=0\n");
    assert.deepEqual(odd.get("it's a vm")?.state, 'state 9');
    assert.equal(parseDomStats('').size, 0);
  });

  it('guestinfo: OS and file systems with their disks', () => {
    const g = guestFrom(parseKeyValues(fixture('guestinfo.txt')));
    assert.deepEqual(g.filesystems, [{ mountpoint: '/data', type: 'ext4', device: 'vda', disks: ['vda'], dynamic: false }]);
    assert.equal(g.os?.kernel, '6.1.0-57-amd64');
  });

  it('guestinfo: a volume on device-mapper is dynamic', () => {
    const g = guestFrom(
      parseKeyValues(
        'fs.count : 1\nfs.0.name : dm-0\nfs.0.mountpoint : /\nfs.0.fstype : xfs\nfs.0.disk.count : 1\nfs.0.disk.0.alias : vda\n',
      ),
    );
    assert.equal(g.filesystems[0].dynamic, true);
  });

  it('dumpxml: the disk, its format, the agent channel', () => {
    const d = definitionFrom(fixture('dumpxml-agent.xml'));
    assert.equal(d.name, 'vmb-lv-agent');
    assert.match(d.uuid, /^[0-9a-f-]{36}$/);
    assert.equal(d.agentChannel, true);
    assert.deepEqual(d.disks, [
      {
        id: 'vda',
        node: 'vda',
        file: '/tmp/lab-h3-libvirt/libvirt/images/vmb-lv-agent-data.qcow2',
        format: 'qcow2',
        driver: 'file',
        included: true,
      },
    ]);
    assert.equal(definitionFrom(fixture('dumpxml-noagent-live.xml')).agentChannel, false);
  });

  it('dumpxml: every disk QEMU reads is included (file, block, network, volume, read-only); removable media, empty drives and pass-through LUNs are not', () => {
    const xml = `<domain type='kvm'><name>x &amp; y</name><uuid>0f0e0d0c-0000-4000-8000-000000000001</uuid><devices>
      <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/libvirt/images/a b.img'/><target dev='vda' bus='virtio'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg0/lv1'/><target dev='vdb' bus='virtio'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='iscsi' name='iqn.2024-01.x:t/1'><host name='10.0.0.1' port='3260'/></source><target dev='vdc' bus='virtio'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='qcow2'/><source protocol='nbd' name='exp'><host name='127.0.0.1' port='10810'/></source><target dev='vdd' bus='virtio'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/img'><host name='m1' port='6789'/><host name='m2'/><auth username='admin'><secret type='ceph' uuid='0f0e0d0c-0000-4000-8000-000000000002'/></auth></source><target dev='vde' bus='virtio'/></disk>
      <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='default' volume='v1.qcow2'/><target dev='vdf' bus='virtio'/></disk>
      <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/shared.raw'/><target dev='vdg' bus='virtio'/><readonly/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='nbd' name='e2'><host transport='unix' socket='/run/nbd.sock'/></source><target dev='vdh' bus='virtio'/></disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/d.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
      <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sdb' bus='sata'/><readonly/></disk>
      <disk type='block' device='lun'><driver name='qemu' type='raw'/><source dev='/dev/sdz'/><target dev='sdc' bus='scsi'/></disk>
      <disk type='vhostuser' device='disk'><driver name='qemu' type='raw'/><source type='unix' path='/run/vhost.sock'/><target dev='vdi' bus='virtio'/></disk>
      <!-- a comment --><channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    </devices></domain>`;
    const d = definitionFrom(xml);
    assert.equal(d.name, 'x & y');
    assert.deepEqual(
      d.disks.map((x) => [x.id, x.file, x.driver, x.included, x.excludedReason, x.excludedBy]),
      [
        ['vda', '/var/lib/libvirt/images/a b.img', 'file', true, undefined, undefined],
        ['vdb', '/dev/vg0/lv1', 'block', true, undefined, undefined],
        ['vdc', 'iscsi://10.0.0.1:3260/iqn.2024-01.x:t/1', 'iscsi', true, undefined, undefined],
        ['vdd', 'nbd://127.0.0.1:10810/exp', 'nbd', true, undefined, undefined],
        ['vde', 'rbd:pool/img:mon_host=m1\\:6789\\;m2', 'rbd', true, undefined, undefined],
        ['vdf', 'default/v1.qcow2', 'volume', true, undefined, undefined],
        ['vdg', '/img/shared.raw', 'file', true, undefined, undefined],
        ['vdh', 'nbd+unix:///e2?socket=/run/nbd.sock', 'nbd', true, undefined, undefined],
        ['sda', '/iso/d.iso', 'file', false, 'removable-media', 'host'],
        ['sdb', '', 'file', false, 'no-medium', 'host'],
        ['sdc', '/dev/sdz', 'block', false, 'not-supported', 'product'],
        ['vdi', '/run/vhost.sock', 'vhostuser', false, 'not-supported', 'product'],
      ],
    );
    // what an offline copy (qemu-img, without libvirt) cannot open: an authenticated network source
    assert.equal(d.sources.get('vdc')?.offlineUnreadable, undefined);
    assert.match(d.sources.get('vde')?.offlineUnreadable ?? '', /authenticates with a secret only libvirt holds/);
    assert.deepEqual([d.sources.get('vdf')?.pool, d.sources.get('vdf')?.volume], ['default', 'v1.qcow2']);
  });

  it('a volume disk resolves through its pool: a file or block volume by its path, a network volume only through libvirt', () => {
    const def = definitionFrom(
      `<domain><name>v</name><devices><disk type='volume' device='disk'><driver type='qcow2'/><source pool='p' volume='v'/><target dev='vda'/></disk></devices></domain>`,
    );
    const vol = { disk: def.disks[0], source: def.sources.get('vda')! };
    const file = resolvedVolume(
      vol,
      parseVolumeXml(
        parseXml(`<volume type='file'><name>v</name><target><path>/pool/v.qcow2</path><format type='qcow2'/></target></volume>`),
      ),
    );
    assert.deepEqual([file.disk.file, file.disk.driver, file.source.offlineUnreadable], ['/pool/v.qcow2', 'file', undefined]);
    const block = resolvedVolume(vol, parseVolumeXml(parseXml(`<volume type='block'><target><path>/dev/vg/v</path></target></volume>`)));
    assert.deepEqual([block.disk.file, block.disk.driver], ['/dev/vg/v', 'block']);
    const net = resolvedVolume(vol, parseVolumeXml(parseXml(`<volume type='network'><target><path>rbdpool/v</path></target></volume>`)));
    assert.equal(net.disk.included, true);
    assert.match(net.source.offlineUnreadable ?? '', /p\/v is a network volume, read only through libvirt/);
    assert.throws(() => parseVolumeXml(parseXml('<pool/>')), /root element is <pool>/);
  });

  it('network URLs qemu-img opens', () => {
    assert.equal(networkUrl('nbd', '', [{ name: 'h' }]), 'nbd://h:10809/');
    assert.equal(networkUrl('iscsi', 'iqn.x:t/0', [{ name: 'h', port: '3261' }]), 'iscsi://h:3261/iqn.x:t/0');
    assert.equal(networkUrl('gluster', 'vol/dir/img', [{ name: 'g1', port: '24007' }]), 'gluster://g1:24007/vol/dir/img');
    assert.equal(networkUrl('https', '/images/a.img', [{ name: 'w' }]), 'https://w/images/a.img');
  });

  it('domjobinfo and backup-dumpxml', () => {
    assert.deepEqual(parseJobInfo(fixture('domjobinfo-none.txt')), { type: 'None' });
    assert.deepEqual(parseJobInfo('Job type:         Unbounded   \nOperation:        Backup      \n'), {
      type: 'Unbounded',
      operation: 'Backup',
    });
    const desc = parseBackupXml(fixture('backup-dumpxml.xml'));
    assert.equal(desc.mode, 'pull');
    assert.equal(desc.socket, '/tmp/lab-h3-libvirt/exp/nbd.sock');
    assert.deepEqual(desc.disks, [
      { name: 'vda', backup: true, exportName: 'vda', scratch: '/tmp/lab-h3-libvirt/libvirt/images/vda.scratch' },
    ]);
  });

  it('virsh error text and URIs', () => {
    assert.equal(virshErrorText("error: failed to get domain 'x'\n"), "failed to get domain 'x'");
    assert.equal(
      virshErrorText('error: Unable to get filesystem information\nerror: argument unsupported: QEMU guest agent is not configured\n'),
      'Unable to get filesystem information: argument unsupported: QEMU guest agent is not configured',
    );
    assert.equal(checkUri('qemu:///system'), 'qemu:///system');
    assert.equal(checkUri('qemu+ssh://root@h1/system'), 'qemu+ssh://root@h1/system');
    assert.throws(() => checkUri('qemu:///system; rm -rf /'), /^Error: uri: .* is not a libvirt URI/);
    assert.throws(() => checkUri(''), /uri:/);
  });
});

describe('libvirt backup job XML', () => {
  it('pull mode over a unix socket, a scratch file per included disk, excluded disks off', () => {
    const xml = backupXml('/run/vmb/ab/nbd.sock', [
      { name: 'vda', backup: true, scratch: "/img/a'b.vmbackup-x.qcow2" },
      { name: 'sda', backup: false },
    ]);
    const root = parseXml(xml);
    assert.equal(root.attrs.mode, 'pull');
    const desc = parseBackupXml(xml);
    assert.equal(desc.socket, '/run/vmb/ab/nbd.sock');
    assert.deepEqual(desc.disks, [
      { name: 'vda', backup: true, scratch: "/img/a'b.vmbackup-x.qcow2" },
      { name: 'sda', backup: false },
    ]);
  });

  it('NBD URIs round-trip; anything else is not one', () => {
    const u = nbdUri('/run/vmb/ab/nbd.sock', 'vda');
    assert.equal(u, 'nbd+unix:///vda?socket=/run/vmb/ab/nbd.sock');
    assert.deepEqual(parseNbdUri(u), { exportName: 'vda', socket: '/run/vmb/ab/nbd.sock' });
    assert.equal(parseNbdUri('/var/lib/libvirt/images/a.qcow2'), undefined);
    assert.equal(parseNbdUri('nbd://host:10809/vda'), undefined);
  });
});

describe('libvirt XML reader', () => {
  it('refuses broken markup, naming where', () => {
    assert.throws(() => parseXml('<a><b></a>'), /closes <b>/);
    assert.throws(() => parseXml('<a>'), /<a> is not closed/);
    assert.throws(() => parseXml('<a/><b/>'), /2 root elements/);
  });
});

describe('libvirt enumerate output classifies like QEMU', () => {
  it('a shut-off domain is offline, a running one without agent falls back', () => {
    const base = { guest: { filesystems: [] }, disks: [], snapshotLocation: { path: '/img', volumeId: '1' } };
    const vms = classifyAll(
      [
        {
          ...base,
          id: 'off',
          name: 'off',
          state: mapState('shut off', 'shutdown'),
          agent: { present: true, responding: false, freezeEnabled: false },
        },
        {
          ...base,
          id: 'run',
          name: 'run',
          state: mapState('running', 'booted'),
          agent: { present: false, responding: false, freezeEnabled: false },
        },
        {
          ...base,
          id: 'saved',
          name: 'saved',
          state: mapState('shut off', 'saved'),
          agent: { present: false, responding: false, freezeEnabled: false },
        },
      ],
      'checkpoint',
    );
    assert.deepEqual(
      vms.map((v) => [v.id, v.method]),
      [
        ['off', 'offline'],
        ['run', 'checkpoint'],
        ['saved', 'checkpoint'],
      ],
    );
  });
});
