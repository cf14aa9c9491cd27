// The provider's decisions above virsh, with a scripted virsh standing in for libvirt: which
// job it ends, what it refuses, what it asks libvirt afterwards.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { classifyAll } from '../../../src/classify/classify';
import type { ClassifiedVm } from '../../../src/contract/types';
import { endBackup } from '../../../src/providers/libvirt/backup-job';
import { LibvirtProvider } from '../../../src/providers/libvirt/libvirt-provider';
import { VirshError, type Virsh } from '../../../src/providers/libvirt/virsh';

type Answer = string | { error: string };

/** Answers by the first two arguments ("domjobinfo --domain"), in order; records every call. */
class ScriptedVirsh implements Virsh {
  readonly uri = 'qemu:///system';
  readonly calls: string[][] = [];
  constructor(private readonly script: Record<string, Answer[]>) {}
  async run(args: readonly string[]): Promise<string> {
    this.calls.push([...args]);
    const queue = this.script[args[0]];
    const a = queue && (queue.length > 1 ? queue.shift()! : queue[0]);
    if (a === undefined) throw new Error(`unscripted virsh ${args.join(' ')}`);
    if (typeof a !== 'string') throw new VirshError(args, a.error, 1);
    return a;
  }
}

const BACKUP_JOB = 'Job type:         Unbounded\nOperation:        Backup\n';
const NO_JOB = 'Job type:         None\n';
const dumpxml = (scratch: string) =>
  `<domainbackup mode='pull'><server transport='unix' socket='/run/x/ab/nbd.sock'/><disks><disk name='vda' backup='yes' type='file' exportname='vda'><scratch file='${scratch}'/></disk></disks></domainbackup>`;
const overlay = {
  disk: 'vda',
  base: 'nbd+unix:///vda?socket=/tmp/vmb-run/ab/nbd.sock',
  baseFormat: 'raw',
  overlay: '/img/d.qcow2.vmbackup-20261201T000000Z-abcdef.qcow2',
  overlayNode: 'vda',
  baseNode: 'vda',
};

describe('libvirt provider: ending the backup job', () => {
  it('aborts our job and asks libvirt until it reports none', async () => {
    // the job still shows once after domjobabort: the provider asks again
    const virsh = new ScriptedVirsh({
      domjobinfo: [BACKUP_JOB, BACKUP_JOB, NO_JOB],
      'backup-dumpxml': [dumpxml(overlay.overlay)],
      domjobabort: [''],
    });
    await new LibvirtProvider({ virsh, runDir: '/tmp/vmb-run' }).merge('web', [overlay]);
    assert.deepEqual(
      virsh.calls.map((c) => c[0]),
      ['domjobinfo', 'backup-dumpxml', 'domjobabort', 'domjobinfo', 'domjobinfo'],
    );
    assert.deepEqual(virsh.calls[2], ['domjobabort', '--domain', 'web']);
  });

  it('leaves a backup job that is not ours alone; ours is then not running (libvirt runs one job a domain), so nothing of ours is left', async () => {
    const virsh = new ScriptedVirsh({ domjobinfo: [BACKUP_JOB], 'backup-dumpxml': [dumpxml('/img/someone-elses.scratch')] });
    assert.equal(await endBackup(virsh, 'web', [overlay.overlay], 1000), 'foreign');
    await new LibvirtProvider({ virsh }).merge('web', [overlay]);
    assert.ok(!virsh.calls.some((c) => c[0] === 'domjobabort'));
  });

  it('nothing to end when no job runs, the domain is shut off, or gone', async () => {
    for (const answer of [
      NO_JOB,
      { error: 'Requested operation is not valid: domain is not running' },
      // a transient domain stopped (or any domain undefined) meanwhile: gone, and its job with it
      { error: "failed to get domain 'web'" },
    ] as Answer[]) {
      const virsh = new ScriptedVirsh({ domjobinfo: [answer] });
      await new LibvirtProvider({ virsh }).merge('web', [overlay]);
      assert.deepEqual(
        virsh.calls.map((c) => c[0]),
        ['domjobinfo'],
      );
    }
  });
});

describe('libvirt provider: undo', () => {
  it('thaw of a domain libvirt reports shut off is 0 (no guest runs); of a running one it fails', async () => {
    const stopped = new ScriptedVirsh({
      domfsthaw: [{ error: 'Requested operation is not valid: domain is not running' }],
      domstate: ['shut off (destroyed)\n'],
    });
    assert.equal(await new LibvirtProvider({ virsh: stopped }).thaw('web', 1000), 0);
    const running = new ScriptedVirsh({ domfsthaw: [{ error: 'Guest agent is not responding: QEMU guest agent is not connected' }] });
    await assert.rejects(new LibvirtProvider({ virsh: running }).thaw('web', 1000), /not responding/);
  });

  it('resume: a managed-saved domain is started, then proven running', async () => {
    const virsh = new ScriptedVirsh({ domstate: ['shut off (saved)\n', 'running (restored)\n'], start: [''] });
    await new LibvirtProvider({ virsh }).resume('web', 'running');
    assert.deepEqual(
      virsh.calls.map((c) => c.join(' ')),
      ['domstate --domain web --reason', 'start --domain web', 'domstate --domain web --reason'],
    );
  });

  it('resume: a paused domain is resumed; one that stays paused is an error', async () => {
    const ok = new ScriptedVirsh({ domstate: ['paused (user)\n', 'running (unpaused)\n'], resume: [''] });
    await new LibvirtProvider({ virsh: ok }).resume('web', 'running');
    const stuck = new ScriptedVirsh({ domstate: ['paused (user)\n'], resume: [''] });
    await assert.rejects(new LibvirtProvider({ virsh: stuck }).resume('web', 'running'), /is paused .* could not return it to running/);
  });
});

describe('libvirt provider: refusals before any side effect', () => {
  it('a VM id that is not a safe name', async () => {
    const virsh = new ScriptedVirsh({});
    await assert.rejects(new LibvirtProvider({ virsh }).thaw('../x', 1000), /not a valid VM id/);
    assert.deepEqual(virsh.calls, []);
  });

  it('exportDisk of a file no enumerated domain has, or of a socket outside runDir', async () => {
    const p = new LibvirtProvider({ virsh: new ScriptedVirsh({}), runDir: '/tmp/vmb-run' });
    await assert.rejects(
      p.exportDisk(
        { disks: [], ref: { overlays: [{ ...overlay, base: '/etc/shadow', baseFormat: 'raw' }] } },
        overlay.disk,
        '/tmp/x.qcow2',
      ),
      /overlay.base: \/etc\/shadow is not a disk image/,
    );
    await assert.rejects(
      p.exportDisk(
        { disks: [], ref: { overlays: [{ ...overlay, base: 'nbd+unix:///vda?socket=/elsewhere/ab/nbd.sock' }] } },
        overlay.disk,
        '/tmp/x.qcow2',
      ),
      /overlay.base: .* not an export of a backup job this provider started/,
    );
    // an incremental needs a view begun incremental from the very checkpoint the chain reads by
    const incremental = { mode: 'incremental' as const, backing: '../p/disk-vda.qcow2', since: 'vmbackup-p' };
    await assert.rejects(
      p.exportDisk({ disks: [], ref: { overlays: [overlay] } }, overlay.disk, '/tmp/x.qcow2', undefined, { copy: incremental }),
      /copy.since: disk vda: the view reads no changes since vmbackup-p \(begun as a full\)/,
    );
    await assert.rejects(
      p.exportDisk({ disks: [], ref: { overlays: [{ ...overlay, since: 'vmbackup-q' }] } }, overlay.disk, '/tmp/x.qcow2', undefined, {
        copy: incremental,
      }),
      /begun since vmbackup-q/,
    );
  });
});

describe('libvirt provider: freeze status without qemu-agent-command', () => {
  it('a frozen agent refuses guest-get-fsinfo: frozen; guestinfo answering: thawed; anything else is an error', async () => {
    const frozen = new ScriptedVirsh({
      guestinfo: [
        {
          error:
            "internal error: unable to execute QEMU agent command 'guest-get-fsinfo': Command guest-get-fsinfo has been disabled: the agent is in frozen state",
        },
      ],
    });
    assert.equal(await new LibvirtProvider({ virsh: frozen }).freezeStatus('web'), 'frozen');
    assert.equal(await new LibvirtProvider({ virsh: new ScriptedVirsh({ guestinfo: ['fs.count : 0\n'] }) }).freezeStatus('web'), 'thawed');
    await assert.rejects(
      new LibvirtProvider({ virsh: new ScriptedVirsh({ guestinfo: [{ error: 'Guest agent is not responding' }] }) }).freezeStatus('web'),
      /not responding/,
    );
  });

  it('a remote URI (qemu+ssh://) is refused at enumerate, naming the setting, before any virsh call', async () => {
    for (const uri of ['qemu+ssh://root@kvm1/system', 'qemu+tcp://kvm1/system', 'qemu+ssh://localhost/system']) {
      const virsh = new ScriptedVirsh({});
      Object.defineProperty(virsh, 'uri', { value: uri });
      await assert.rejects(new LibvirtProvider({ virsh }).enumerate(), /^Error: libvirtUri: ".+" names a libvirtd on another machine/);
      assert.deepEqual(virsh.calls, [], `${uri}: nothing asked of libvirt`);
    }
    // local ones go on to ask libvirt
    for (const uri of ['qemu:///system', 'qemu+unix:///system?socket=/run/x.sock', 'qemu:///session']) {
      const virsh = new ScriptedVirsh({ list: ['\n'] });
      Object.defineProperty(virsh, 'uri', { value: uri });
      await new LibvirtProvider({ virsh }).enumerate().catch(() => undefined);
      assert.equal(virsh.calls[0]?.[0], 'list', `${uri}: enumerated`);
    }
  });
});

/** A running domain with a qcow2 disk that has change tracking and a raw one (none). */
function twoDiskVm(over: Partial<ClassifiedVm> = {}): ClassifiedVm {
  const disk = (id: string, format: string) => ({ id, node: id, file: `/img/${id}.${format}`, format, driver: 'file', included: true });
  return {
    id: 'web',
    name: 'web',
    state: 'running',
    agent: { present: false, responding: false, freezeEnabled: false },
    guest: { filesystems: [] },
    disks: [{ ...disk('vda', 'qcow2'), tracking: { persistent: true, records: [] } }, disk('vdb', 'raw')],
    snapshotLocation: { path: os.tmpdir() },
    method: 'checkpoint',
    consistency: 'crash',
    reasons: [],
    warnings: [],
    ...over,
  };
}

describe('libvirt provider: another job on the domain', () => {
  const NONE = '\n';
  it("a user's own backup job: refused at armView (before any freeze or job of ours) with libvirt's words, only queries asked", async () => {
    const virsh = new ScriptedVirsh({ domjobinfo: [BACKUP_JOB], blockjob: [NONE] });
    await assert.rejects(
      new LibvirtProvider({ virsh }).armView(twoDiskVm()),
      (err: Error) =>
        err.name === 'OtherJobError' &&
        /domain web: a Backup job runs \(domjobinfo: Unbounded, Backup\).*"cannot acquire state change lock".*nothing was made/.test(
          err.message,
        ),
    );
    assert.deepEqual(
      virsh.calls.map((c) => c[0]),
      ['domjobinfo', 'blockjob', 'blockjob'],
    );
  });

  it('a block job on one disk (blockcopy): refused naming the disk', async () => {
    const virsh = new ScriptedVirsh({
      domjobinfo: [NO_JOB],
      blockjob: [' type=Block Copy\n bandwidth=0\n cur=67108864\n end=67108864\n', '\n'],
    });
    await assert.rejects(
      new LibvirtProvider({ virsh }).armView(twoDiskVm()),
      /disk vda has a block job \(blockjob --info: Block Copy\).*"disk 'vda' has a blockjob assigned"/,
    );
  });

  it('saved state: refused before managedsave, which would wait 30 s for the lock', async () => {
    const virsh = new ScriptedVirsh({ domjobinfo: [BACKUP_JOB], blockjob: [NONE] });
    await assert.rejects(
      new LibvirtProvider({ virsh }).saveState(twoDiskVm({ method: 'saved-state' }), '/tmp/x'),
      /cannot acquire state change lock/,
    );
    assert.ok(!virsh.calls.some((c) => c[0] === 'managedsave'));
  });

  it('no other job: armView asks and goes on; a scratch location without the room the view needs is refused, with the figures', async () => {
    const virsh = new ScriptedVirsh({ domjobinfo: [NO_JOB], blockjob: [NONE] });
    await new LibvirtProvider({ virsh }).armView(twoDiskVm());
    const huge = twoDiskVm();
    huge.disks[0].virtualSize = 2 ** 52;
    await assert.rejects(
      new LibvirtProvider({ virsh }).armView(huge),
      /scratch location .* free; libvirt's scratch files for this VM need at least/,
    );
  });
});

describe('libvirt provider: a raw disk is copied whole, never given a bitmap', () => {
  /** backup-begin's checkpoint XML as written when virsh was called */
  async function checkpointOf(vm: ClassifiedVm, tracked: string[]): Promise<string | undefined> {
    let xml: string | undefined;
    let called = false;
    const virsh = {
      uri: 'qemu:///system',
      run: async (args: readonly string[]) => {
        if (args[0] !== 'backup-begin') throw new Error(`unscripted ${args[0]}`);
        called = true;
        const at = args.indexOf('--checkpointxml');
        if (at > 0) xml = readFileSync(args[at + 1], 'utf8');
        return 'Backup started\n';
      },
    };
    const p = new LibvirtProvider({ virsh, runDir: path.join(os.tmpdir(), `vmb-unit-run-${process.pid}`) });
    const backupId = '20261201T000000Z-abcdef';
    await p.tracking.start(
      vm.id,
      tracked.map((disk) => ({ disk, name: `vmbackup-${backupId}` })),
    );
    const overlays = await p.snapshot(vm, backupId);
    assert.ok(called);
    assert.deepEqual(
      overlays.map((o) => o.disk),
      vm.disks.filter((d) => d.included).map((d) => d.id),
    );
    return xml;
  }

  it('qcow2 + raw: the raw disk is listed checkpoint=\'no\' (libvirt: "unsupported for storage type raw")', async () => {
    const xml = await checkpointOf(twoDiskVm(), ['vda', 'vdb']);
    assert.match(xml ?? '', /<disk name='vda' checkpoint='bitmap'\/>/);
    assert.match(xml ?? '', /<disk name='vdb' checkpoint='no'\/>/);
  });

  it('raw only: no checkpoint at all (a checkpoint without a bitmap records nothing)', async () => {
    const vm = twoDiskVm();
    vm.disks = vm.disks.filter((d) => d.id === 'vdb');
    assert.equal(await checkpointOf(vm, ['vdb']), undefined);
  });
});

describe('libvirt provider: enumerate', () => {
  const domxml = (name: string, disks: string) =>
    `<domain type='qemu'><name>${name}</name><uuid>0f0e0d0c-0000-4000-8000-00000000000${name.length}</uuid><devices>${disks}</devices></domain>`;
  const raw = (dev: string) =>
    `<disk type='file' device='disk'><driver type='raw'/><source file='/img/${dev}.raw'/><target dev='${dev}'/></disk>`;

  it('a transient domain (virsh create) cannot be managed-saved: saved-state policy gives it a checkpoint and says why', async () => {
    const virsh = new ScriptedVirsh({
      list: ['tr\npers\n', 'tr\n'],
      domstate: ['running (booted)\n'],
      dumpxml: [domxml('tr', raw('vda')), domxml('pers', raw('vda'))],
      domblkinfo: [''],
      'checkpoint-list': [''],
    });
    const vms = await new LibvirtProvider({ virsh }).enumerate();
    assert.deepEqual(
      vms.map((v) => [v.id, v.savedStateRefused]),
      [
        ['pers', undefined],
        ['tr', 'a transient domain (made by virsh create) cannot be managed-saved by libvirt'],
      ],
    );
    const classified = classifyAll(vms, 'saved-state');
    assert.deepEqual(
      classified.map((v) => [v.id, v.method]),
      [
        ['pers', 'saved-state'],
        ['tr', 'checkpoint'],
      ],
    );
    assert.ok(classified[1].warnings.some((w) => /saved-state not used: a transient domain .* gets a checkpoint instead/.test(w)));
  });

  it('scratch files: beside the first disk that is a file, set aside (dedicated) when a disk is a block device or network drive; a domain of those only gets libvirt state dir', async () => {
    const blk = `<disk type='block' device='disk'><driver type='raw'/><source dev='/dev/loop7'/><target dev='vda'/></disk>`;
    const virsh = new ScriptedVirsh({
      list: ['b\nf\nr\n', ''],
      domstate: ['running (booted)\n'],
      dumpxml: [domxml('b', blk), domxml('f', blk + raw('vdb')), domxml('r', raw('vda'))],
      domblkinfo: [''],
      'checkpoint-list': [''],
    });
    const vms = await new LibvirtProvider({ virsh }).enumerate();
    assert.deepEqual(
      vms.map((v) => [v.id, v.snapshotLocation.path, v.snapshotLocation.dedicated]),
      [
        ['b', '/var/lib/libvirt/qemu', true],
        ['f', '/img', true],
        ['r', '/img', undefined],
      ],
    );
  });

  it('asks the host once for every state and disk size (domstats), then one dumpxml a domain; a qcow2 v2 image gets no tracking', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-enum-'));
    try {
      // qcow2 headers: magic, version (v2 = compat 0.10 holds no bitmap; v3 does)
      const header = (v: number) => Buffer.concat([Buffer.from([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, v]), Buffer.alloc(64)]);
      writeFileSync(path.join(dir, 'v2.qcow2'), header(2));
      writeFileSync(path.join(dir, 'v3.qcow2'), header(3));
      const q = (dev: string, f: string) =>
        `<disk type='file' device='disk'><driver type='qcow2'/><source file='${path.join(dir, f)}'/><target dev='${dev}'/></disk>`;
      const stats =
        "Domain: 'run'\n  state.state=1\n  state.reason=1\n  block.count=2\n  block.0.name=vda\n  block.0.capacity=1048576\n  block.1.name=vdb\n  block.1.capacity=2097152\n\n" +
        "Domain: 'saved'\n  state.state=5\n  state.reason=5\n  block.count=1\n  block.0.name=vda\n  block.0.capacity=4194304\n\n";
      const virsh = new ScriptedVirsh({
        list: ['run\nsaved\n', ''],
        domstats: [stats],
        dumpxml: [domxml('run', q('vda', 'v3.qcow2') + q('vdb', 'v2.qcow2')), domxml('saved', raw('vda'))],
        'checkpoint-list': [''],
      });
      const vms = await new LibvirtProvider({ virsh }).enumerate();
      assert.deepEqual(
        virsh.calls.map((c) => c.join(' ')),
        [
          'list --all --name',
          'list --transient --name',
          'domstats --state --block',
          'dumpxml --domain run',
          'dumpxml --domain saved',
          'checkpoint-list --domain run --name',
        ],
      );
      assert.deepEqual(
        vms.map((v) => [v.id, v.state, v.disks.map((d) => [d.id, d.virtualSize, d.tracking?.persistent])]),
        [
          [
            'run',
            'running',
            [
              ['vda', 1048576, true],
              ['vdb', 2097152, undefined],
            ],
          ],
          ['saved', 'saved', [['vda', 4194304, undefined]]],
        ],
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without domstats (refused), each domain is asked its state and sizes as before', async () => {
    const virsh = new ScriptedVirsh({
      list: ['off\n', ''],
      domstats: [{ error: "unknown command: 'domstats'" }],
      domstate: ['shut off (shutdown)\n'],
      dumpxml: [domxml('off', raw('vda'))],
      domblkinfo: [
        ' Target   Capacity    Allocation   Physical\n---------------------------------------------\n vda      134217728   1974272      2031616\n',
      ],
    });
    const [vm] = await new LibvirtProvider({ virsh }).enumerate();
    assert.deepEqual([vm.state, vm.disks[0].virtualSize], ['off', 134217728]);
    assert.deepEqual(
      virsh.calls.map((c) => c[0]),
      ['list', 'list', 'domstats', 'domstate', 'dumpxml', 'domblkinfo'],
    );
  });

  it("a volume whose pool is not started: the domain is unreachable with libvirt's words, never left out of an ok set", async () => {
    const vol = `<disk type='volume' device='disk'><driver type='qcow2'/><source pool='images' volume='v.qcow2'/><target dev='vda'/></disk>`;
    const virsh = new ScriptedVirsh({
      list: ['web\n', ''],
      domstate: ['shut off (shutdown)\n'],
      dumpxml: [domxml('web', vol)],
      'vol-dumpxml': [{ error: "Requested operation is not valid: storage pool 'images' is not active" }],
    });
    const [vm] = await new LibvirtProvider({ virsh }).enumerate();
    assert.equal(vm.state, 'unreachable');
    assert.match(
      vm.unreachable?.reason ?? '',
      /disk vda: volume v.qcow2 of pool images cannot be resolved: .*storage pool 'images' is not active/,
    );
  });

  it('a volume disk is resolved through its pool; a shut-off domain whose disk qemu-img cannot open alone is unreachable, with why', async () => {
    const auth = `<disk type='network' device='disk'><driver type='raw'/><source protocol='iscsi' name='iqn.x:t/1'><host name='h'/><auth username='u'><secret type='iscsi' usage='x'/></auth></source><target dev='vdb'/></disk>`;
    const vol = `<disk type='volume' device='disk'><driver type='raw'/><source pool='p' volume='v.raw'/><target dev='vda'/></disk>`;
    const virsh = new ScriptedVirsh({
      list: ['off\n', ''],
      domstate: ['shut off (shutdown)\n'],
      dumpxml: [domxml('off', vol + auth)],
      'vol-dumpxml': [`<volume type='file'><target><path>/pool/v.raw</path><format type='raw'/></target></volume>`],
      domblkinfo: [''],
    });
    const [vm] = await new LibvirtProvider({ virsh }).enumerate();
    assert.equal(vm.state, 'unreachable');
    assert.match(
      vm.unreachable?.reason ?? '',
      /disk vdb \(iscsi:\/\/h:3260\/iqn.x:t\/1\): its iscsi source authenticates with a secret only libvirt holds/,
    );
    assert.deepEqual(
      virsh.calls.find((c) => c[0] === 'vol-dumpxml'),
      ['vol-dumpxml', '--pool', 'p', 'v.raw'],
    );
  });
});
