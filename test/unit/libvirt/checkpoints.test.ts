// The libvirt incremental's pieces above virsh and nbdinfo: the XML it gives libvirt, what it
// reads back (checkpoint-dumpxml, nbdinfo --map), and what it does when libvirt refuses.
import assert from 'node:assert/strict';
import { backupXml } from '../../../src/providers/libvirt/backup-job';
import { checkpointRecords, checkpointXml, deleteCheckpoint, parseCheckpointDisks } from '../../../src/providers/libvirt/checkpoints';
import { clusterAligned, optsValue, parseDirtyMap } from '../../../src/providers/libvirt/incremental-copy';
import { VirshError, type Virsh } from '../../../src/providers/libvirt/virsh';

/** Answers by the command and its --size/--metadata flags; records every call. */
function scripted(answers: Record<string, string | { error: string }>): Virsh & { calls: string[][] } {
  const calls: string[][] = [];
  return {
    uri: 'qemu:///system',
    calls,
    async run(args) {
      calls.push([...args]);
      const key = [args[0], ...args.filter((a) => a === '--size' || a === '--metadata')].join(' ');
      const a = answers[key];
      if (a === undefined) throw new Error(`unscripted virsh ${args.join(' ')}`);
      if (typeof a !== 'string') throw new VirshError(args, a.error, 1);
      return a;
    },
  };
}

const CP = (size: string) =>
  `<domaincheckpoint><name>vmbackup-1</name><disks><disk name='vda' checkpoint='bitmap' bitmap='vmbackup-1'${size}/><disk name='sda' checkpoint='no'/></disks></domaincheckpoint>`;

describe('libvirt checkpoints and the incremental copy', () => {
  it('backup XML: an incremental disk names its parent checkpoint, a full one does not', () => {
    const xml = backupXml('/run/x/nbd.sock', [
      { name: 'vda', backup: true, scratch: '/img/s.qcow2', incremental: "vmbackup-a'b" },
      { name: 'vdb', backup: true, scratch: '/img/t.qcow2' },
    ]);
    assert.match(xml, /<disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='vmbackup-a&apos;b'>/);
    assert.match(xml, /<disk name='vdb' backup='yes' type='file'><scratch/);
  });

  it('checkpoint XML: a bitmap on the tracked disks only', () => {
    assert.equal(
      checkpointXml('vmbackup-x', [
        { name: 'vda', bitmap: true },
        { name: 'sda', bitmap: false },
      ]),
      "<domaincheckpoint>\n  <name>vmbackup-x</name>\n  <disks>\n    <disk name='vda' checkpoint='bitmap'/>\n    <disk name='sda' checkpoint='no'/>\n  </disks>\n</domaincheckpoint>\n",
    );
    assert.deepEqual(parseCheckpointDisks(CP(" size='393216'")), [{ disk: 'vda', bitmap: 'vmbackup-1', size: 393216 }]);
  });

  it('nbdinfo --map: only dirty extents, adjacent ones joined', () => {
    const out =
      '         0       65536    1  dirty\n     65536       65536    1  dirty\n    131072     1048576    0  clean\n   1179648       65536    1  dirty\n';
    assert.deepEqual(parseDirtyMap(out), [
      { offset: 0, length: 131072 },
      { offset: 1179648, length: 65536 },
    ]);
    assert.deepEqual(parseDirtyMap('         0   134217728    0  clean\n'), []);
  });

  it('records: ours only; a checkpoint QEMU cannot size is inconsistent (a full follows, not a failing backup-begin)', async () => {
    const ok = await checkpointRecords(
      scripted({ 'checkpoint-list': 'vmbackup-1\nsomeone-else\n', 'checkpoint-dumpxml --size': CP(" size='65536'") }),
      'd',
      1000,
    );
    assert.deepEqual(
      [...ok.entries()],
      [['vda', [{ name: 'vmbackup-1', recording: true, persistent: true, inconsistent: false, granularity: 65536 }]]],
    );
    const broken = scripted({
      'checkpoint-list': 'vmbackup-1\n',
      'checkpoint-dumpxml --size': { error: 'internal error: bitmap not found' },
      'checkpoint-dumpxml': CP(''),
    });
    assert.equal((await checkpointRecords(broken, 'd', 1000)).get('vda')?.[0].inconsistent, true);
  });

  it('delete: refuses names not ours; absent is done; a shut-off domain keeps it (libvirt cannot delete it then)', async () => {
    await assert.rejects(deleteCheckpoint(scripted({}), 'd', 'user-cp', 1000), /refusing to delete checkpoint user-cp/);
    assert.equal(await deleteCheckpoint(scripted({ 'checkpoint-delete': '' }), 'd', 'vmbackup-1', 1000), 'deleted');
    assert.equal(
      await deleteCheckpoint(
        scripted({ 'checkpoint-delete': { error: "Domain checkpoint not found: no domain checkpoint with matching name 'vmbackup-1'" } }),
        'd',
        'vmbackup-1',
        1000,
      ),
      'absent',
    );
    assert.equal(
      await deleteCheckpoint(
        scripted({ 'checkpoint-delete': { error: 'Operation not supported: cannot delete checkpoint for inactive domain' } }),
        'd',
        'vmbackup-1',
        1000,
      ),
      'left-inactive',
    );
    // the bitmap went from the image: only libvirt's metadata can go
    const gone = scripted({
      'checkpoint-delete': { error: "internal error: bitmap 'vmbackup-1' not found in backing chain of 'vda'" },
      'checkpoint-delete --metadata': '',
    });
    assert.equal(await deleteCheckpoint(gone, 'd', 'vmbackup-1', 1000), 'deleted');
    assert.deepEqual(gone.calls.at(-1), ['checkpoint-delete', '--domain', 'd', '--checkpointname', 'vmbackup-1', '--metadata']);
    await assert.rejects(
      deleteCheckpoint(scripted({ 'checkpoint-delete': { error: 'internal error: something else' } }), 'd', 'vmbackup-1', 1000),
      /something else/,
    );
  });

  it('compressed incrementals: the dirty extents grown to whole 64 KiB clusters (the compress filter writes whole clusters), merged, within the disk', () => {
    const K = 1024;
    assert.deepEqual(
      clusterAligned(
        [
          { offset: 4 * K, length: 4 * K },
          { offset: 60 * K, length: 8 * K },
          { offset: 256 * K, length: 64 * K },
          { offset: 1000 * K, length: 10 * K },
        ],
        1005 * K,
      ),
      [
        { offset: 0, length: 128 * K },
        { offset: 256 * K, length: 64 * K },
        { offset: 960 * K, length: 45 * K },
      ],
    );
    assert.equal(optsValue('/b/a,b.qcow2'), '/b/a,,b.qcow2');
  });
});
