// The new VM's command line and domain XML, derived from what a backup recorded: nothing of the
// original (image, socket, pidfile, log, UUID, MAC, tap) is shared, the devices stay the same.
import * as assert from 'node:assert/strict';
import { formatKeyValues, parseKeyValues, rewriteCommandLine, splitOptions } from '../../../src/restore/qemu-argv';
import { rewriteDomainXml } from '../../../src/restore/libvirt-xml';
import { originalDisks } from '../../../src/restore/in-place';

const LAB = '/tmp/lab';
const original = [
  'qemu-system-x86_64',
  '-name',
  'guest=vm-agent',
  '-accel',
  'tcg,tb-size=128',
  '-machine',
  'pc',
  '-m',
  '256',
  '-nodefaults',
  '-daemonize',
  '-pidfile',
  `${LAB}/run/vm-agent.pid`,
  '-chardev',
  `socket,id=qmp,path=${LAB}/run/vm-agent.qmp,server=on,wait=off`,
  '-mon',
  'chardev=qmp,mode=control',
  '-serial',
  `file:${LAB}/run/vm-agent.log`,
  '-smbios',
  'type=1,uuid=11111111-2222-3333-4444-555555555555',
  '-drive',
  `file=${LAB}/images/vm-agent-data.qcow2,format=qcow2,if=none,id=drive-virtio0,cache=writeback,discard=unmap`,
  '-device',
  'virtio-blk-pci,drive=drive-virtio0,id=virtio0,serial=data,bootindex=100',
  '-drive',
  `file.driver=nbd,file.server.type=unix,file.server.path=${LAB}/run/nbd.sock,format=raw,if=none,id=drive-virtio1`,
  '-device',
  'virtio-blk-pci,drive=drive-virtio1,id=virtio1,serial=passthrough',
  '-drive',
  'file=/srv/iso/debian.iso,media=cdrom,if=ide,id=cd0',
  '-netdev',
  'tap,id=net0,ifname=tap100i0,script=no',
  '-device',
  'virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:cc,id=nic0',
  '-chardev',
  `socket,path=${LAB}/run/vm-agent.qga,server=on,wait=off,id=qga0`,
  '-device',
  'virtio-serial,id=qga-serial0',
  '-device',
  'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
];

describe('restore: a new VM from the recorded definition', () => {
  it('QEMU option strings: ,, is a comma inside a value, both ways', () => {
    const kv = parseKeyValues('file=/a,,b.qcow2,format=qcow2,readonly');
    assert.deepEqual(kv, [
      ['file', '/a,b.qcow2'],
      ['format', 'qcow2'],
      ['readonly', undefined],
    ]);
    assert.equal(formatKeyValues(kv), 'file=/a,,b.qcow2,format=qcow2,readonly');
  });

  it('QEMU: new disks, name, sockets, pidfile, log, UUID and MAC; a disk not restored goes with its device; media stay', () => {
    const drives = new Map([['drive-virtio0', { file: '/restore/vm/disk-drive-virtio0.qcow2', format: 'qcow2' as const }]]);
    const l = rewriteCommandLine(original, { name: 'vm-agent-copy', runDir: '/run/vms', drives, network: 'keep' });
    const text = l.args.join(' ');
    assert.equal(l.program, 'qemu-system-x86_64');
    assert.doesNotMatch(text, /\/tmp\/lab\//, 'nothing of the original lab VM is named');
    assert.match(text, /-name guest=vm-agent-copy/);
    assert.match(text, /-pidfile \/run\/vms\/vm-agent-copy\.pid/);
    assert.equal(l.qmpSocket, '/run/vms/vm-agent-copy.qmp');
    assert.equal(l.qgaSocket, '/run/vms/vm-agent-copy.qga');
    assert.match(text, /path=\/run\/vms\/vm-agent-copy\.qmp/);
    assert.match(text, /-serial file:\/run\/vms\/vm-agent-copy\.log/);
    assert.match(text, /file=\/restore\/vm\/disk-drive-virtio0\.qcow2,format=qcow2,if=none,id=drive-virtio0/);
    assert.doesNotMatch(text, /drive-virtio1|nbd/, 'the NBD pass-through disk and its device are left out');
    assert.deepEqual(l.dropped, ['drive-virtio1']);
    assert.match(text, /debian\.iso,media=cdrom/, 'read-only media stay');
    assert.doesNotMatch(text, /11111111-2222/);
    assert.match(text, new RegExp(`uuid=${l.uuid}`));
    assert.equal(l.macs.length, 1);
    assert.notEqual(l.macs[0], '52:54:00:aa:bb:cc');
    assert.match(text, new RegExp(`mac=${l.macs[0]}`));
    assert.doesNotMatch(text, /ifname=tap100i0/, "the original's tap name is not taken");
    // the rest of the machine is unchanged, option by option
    const kept = splitOptions(l.args).filter((o) => ['-m', '-machine', '-accel', '-nodefaults'].includes(o.name));
    assert.deepEqual(kept, [
      { name: '-accel', value: 'tcg,tb-size=128' },
      { name: '-machine', value: 'pc' },
      { name: '-m', value: '256' },
      { name: '-nodefaults' },
    ]);
  });

  it('QEMU: no network, another accelerator, a saved state to come in, a command line without QMP or pidfile', () => {
    const drives = new Map([['drive-virtio0', { file: '/r/d.qcow2', format: 'qcow2' as const, readOnly: true }]]);
    const l = rewriteCommandLine(original, { name: 't', runDir: '/r', drives, network: 'none', accel: 'kvm', incoming: true });
    const text = l.args.join(' ');
    assert.doesNotMatch(text, /netdev|virtio-net/);
    assert.match(text, /-nic none/);
    assert.match(text, /-accel kvm/);
    assert.doesNotMatch(text, /tcg/);
    assert.match(text, /-incoming defer/);
    assert.match(text, /readonly=on/);
    const bare = rewriteCommandLine(['qemu-system-x86_64', '-m', '128', '-drive', 'file=/a.raw,format=raw,id=d0'], {
      name: 'b',
      runDir: '/r',
      drives: new Map([['d0', { file: '/r/d0.raw', format: 'raw' as const }]]),
      network: 'keep',
    });
    assert.deepEqual(bare.args.slice(-7), [
      '-chardev',
      'socket,id=vmb-qmp,path=/r/b.qmp,server=on,wait=off',
      '-mon',
      'chardev=vmb-qmp,mode=control',
      '-pidfile',
      '/r/b.pid',
      '-daemonize',
    ]);
    assert.throws(() => rewriteCommandLine(null, { name: 'x', runDir: '/r', drives, network: 'keep' }), /^Error: commandLine: /);
  });

  it('libvirt: new name, UUID and MAC, the restored file as the source, the original console log and agent socket not named', () => {
    const xml = `<domain type='kvm'>
  <name>web</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source dev='/dev/vg0/web'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='rbd' name='pool/web-data'><host name='ceph1'/></source>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <interface type='network'><mac address='52:54:00:11:22:33'/><source network='default'/><target dev='vnet3'/><model type='virtio'/></interface>
    <serial type='file'><source path='/var/log/web.console' append='on'/><target port='0'/></serial>
    <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/web.agent'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'/>
  </devices>
</domain>`;
    const d = rewriteDomainXml(xml, {
      name: 'web-restored',
      disks: new Map([['vda', { file: '/restore/web/disk-vda.qcow2', format: 'qcow2' as const }]]),
      consoleLog: '/restore/web/console.log',
      network: 'keep',
    });
    assert.match(d.xml, /<name>web-restored<\/name>/);
    assert.match(d.xml, new RegExp(`<uuid>${d.uuid}</uuid>`));
    assert.doesNotMatch(d.xml, /4dea22b3|52:54:00:11:22:33|\/dev\/vg0|vnet3|web\.console|web\.agent|5901|rbd/);
    assert.match(
      d.xml,
      /<disk type='file' device='disk'>\s*<driver name='qemu' type='qcow2' cache='none'\/>\s*<source file='\/restore\/web\/disk-vda\.qcow2'\/>/,
    );
    assert.match(d.xml, /x\.iso/, 'the CD-ROM stays');
    assert.deepEqual(d.dropped, ['vdb']);
    assert.match(d.xml, new RegExp(`<mac address='${d.macs[0]}'/>`));
    assert.match(d.xml, /<source path='\/restore\/web\/console\.log'/);
    assert.match(d.xml, /autoport='yes'/);
  });

  it('in place: where each disk lives, from the command line, the inventory or the domain XML', () => {
    assert.deepEqual([...originalDisks({ commandLine: original })].slice(0, 1), [
      ['drive-virtio0', { file: `${LAB}/images/vm-agent-data.qcow2`, format: 'qcow2' }],
    ]);
    assert.deepEqual(
      [...originalDisks({ commandLine: null, inventory: { definition: { disks: [{ id: 'virtio0', file: '/v/a.raw', format: 'raw' }] } } })],
      [['virtio0', { file: '/v/a.raw', format: 'raw' }]],
    );
    assert.deepEqual(
      [
        ...originalDisks({
          domainXml:
            "<domain><devices><disk type='file'><driver name='qemu' type='qcow2'/><source file='/v/b.qcow2'/><target dev='vda'/></disk></devices></domain>",
        }),
      ],
      [['vda', { file: '/v/b.qcow2', format: 'qcow2' }]],
    );
  });
});
