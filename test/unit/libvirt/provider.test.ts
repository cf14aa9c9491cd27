// The provider's decisions above virsh, with a scripted virsh standing in for libvirt: which
// job it ends, what it refuses, what it asks libvirt afterwards.
import assert from 'node:assert/strict';
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

  it('leaves a backup job that is not ours alone, and says so', async () => {
    const virsh = new ScriptedVirsh({ domjobinfo: [BACKUP_JOB], 'backup-dumpxml': [dumpxml('/img/someone-elses.scratch')] });
    await assert.rejects(new LibvirtProvider({ virsh }).merge('web', [overlay]), /not ours.*left alone/);
    assert.ok(!virsh.calls.some((c) => c[0] === 'domjobabort'));
  });

  it('nothing to end when no job runs, or the domain is shut off', async () => {
    for (const answer of [NO_JOB, { error: 'Requested operation is not valid: domain is not running' }] as Answer[]) {
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
