// Fault case: libvirtd restarted mid-backup (a package upgrade or an admin does it). The lab's
// libvirtd is stopped and started again the way the lab started it (lab/libvirt-lab.ts
// libvirtdRestart) at two moments of a real backup of the agent domain: during the copy, and while
// the guest is frozen (before backup-begin: libvirtd back in time, and still down when
// backup-begin is sent). Each time the backup completes and its image is checked (or fails naming
// the cause), the guest is thawed, and libvirt's own view is asked of libvirt afterwards.
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { promises as fs, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { domainImage, LIBVIRT_DOMAINS, libvirtDir, libvirtdRestart, libvirtdUp } from '../../lab/libvirt-lab';
import { pidAlive, readPidFile } from '../../lab/util';
import type { ClassifiedVm, CopiedSet, PointInTimeView } from '../../src/contract/types';
import { Journal } from '../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import type { ExportOptions, Progress, ViewOptions } from '../../src/providers/provider';
import { LibvirtProvider } from '../../src/providers/libvirt/libvirt-provider';
import { inspectImage } from '../support/image-check';
import { assertLibvirtView, libvirtOwnSnapshotAndBackup, virsh, libvirtLabForSuite } from '../support/libvirt-view';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const [AGENT] = LIBVIRT_DOMAINS.map((d) => d.name);

/** A libvirt provider with hooks at the two moments (the rest is the product's own code). */
class HookedProvider extends LibvirtProvider {
  beforeView?: () => Promise<void>;
  duringExport?: (base: string, copy: () => Promise<unknown>) => Promise<void>;

  override async makeView(vm: ClassifiedVm, view: PointInTimeView, opts: ViewOptions) {
    await this.beforeView?.();
    return super.makeView(vm, view, opts);
  }

  override async exportDisk(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options?: ExportOptions,
  ) {
    const hook = this.duringExport;
    if (!hook) return super.exportDisk(view, disk, dest, onProgress, options);
    const base = (view.ref.overlays as Array<{ disk: string; base: string }>).find((o) => o.disk === disk)!.base;
    let result: Awaited<ReturnType<LibvirtProvider['exportDisk']>> | undefined;
    await hook(base, async () => {
      result = await super.exportDisk(view, disk, dest, onProgress, options);
    });
    return result!;
  }
}

/** One NBD client connection kept open across the restart (qemu-io reading the export). */
function nbdReader(uri: string) {
  const child = spawn('qemu-io', ['-r', '-f', 'raw', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  return {
    /** read 1 MiB at `offset` on the same connection; resolves with what qemu-io said */
    async read(offset: number): Promise<string> {
      const from = out.length;
      child.stdin.write(`read ${offset} 1M\n`);
      const deadline = Date.now() + 20_000;
      while (!/bytes at offset|error|failed/i.test(out.slice(from))) {
        if (Date.now() > deadline || child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      return out.slice(from).trim();
    },
    close: () => {
      child.stdin.end('quit\n');
    },
  };
}

describe('libvirt fault case: libvirtd restarted mid-backup', function () {
  this.timeout(600_000);
  let lab: { release(): Promise<void> } | undefined;
  let repository: string;
  let journalDir: string;
  let provider: HookedProvider;
  let host: BackupHost;

  before(async function () {
    lab = await libvirtLabForSuite(this, LAB);
    const pid = readPidFile(path.join(libvirtDir(LAB), 'libvirtd.pid'));
    if (pid === undefined || !pidAlive(pid)) {
      // a libvirtd somebody else started is never restarted by a test
      console.log('    libvirtd restart cases skipped: the running libvirtd was not started by this lab');
      this.skip();
    }
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvr-repo-'));
    journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lvr-journal-'));
  });
  beforeEach(() => {
    provider = new HookedProvider({ runDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-lvr-run-')) });
    host = new BackupHost(provider, new Journal(path.join(journalDir, `journal-${Date.now()}.jsonl`)), {
      hostName: 'lvr',
      repositoryRoot: repository,
      timeouts: DEFAULT_TIMEOUTS,
    });
  });
  afterEach(async () => {
    // whatever a case did, libvirtd answers again before the next one (never a second one started)
    if (!(await libvirtdUp())) await libvirtdRestart({ labDir: LAB }).catch(() => undefined);
    if (provider) await fs.rm(provider.runDir, { recursive: true, force: true });
  });
  after(async () => {
    if (repository) await fs.rm(repository, { recursive: true, force: true });
    if (journalDir) await fs.rm(journalDir, { recursive: true, force: true });
    await lab?.release();
  });

  async function backupAgent(): Promise<CopiedSet> {
    const enumerated = await host.enumerate();
    const classified = host.classify({ ...enumerated, vms: enumerated.vms.filter((vm) => vm.id === AGENT) }, 'checkpoint');
    return host.copy(await host.postSnapshot(await host.snapshot(await host.prepare(classified))), { concurrency: 1, compress: false });
  }

  /** The published image: ext4 clean (application-consistent unless `crash`), records whole. */
  function checkImage(set: CopiedSet, consistency: 'application' | 'crash'): void {
    const vm = set.vms.find((v) => v.id === AGENT)!;
    assert.equal(vm.consistency, consistency);
    const dir = path.join(repository, vm.copy.path);
    const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
    const facts = inspectImage(path.join(dir, manifest.files.find((f: any) => f.disk === 'vda').name));
    if (consistency === 'application') {
      assert.equal(facts.needsRecovery, false, 'application-consistent ext4 needs no journal recovery');
      assert.equal(facts.e2fsckExit, 0, 'e2fsck -fn clean');
    }
    assert.ok(facts.records.ok && facts.records.records > 0, `records whole: ${facts.records.errors.join('; ')}`);
  }

  async function libvirtViewRight(): Promise<void> {
    assert.equal(virsh('guestinfo', '--domain', AGENT, '--filesystem').status, 0, 'the guest is thawed (the agent lists its file systems)');
    assertLibvirtView(AGENT, 'running', LAB);
    assert.deepEqual(
      readdirSync(path.dirname(domainImage(AGENT, LAB))).filter((f) => f.includes('.vmbackup-')),
      [],
      'no scratch file left',
    );
    await libvirtOwnSnapshotAndBackup(AGENT, LAB);
  }

  it('during the copy: the copy runs with libvirtd gone (an open NBD connection outlives it), libvirt keeps the job after reconnecting, the backup completes and domjobabort ends it', async () => {
    const seen: string[] = [];
    provider.duringExport = async (base, copy) => {
      const reader = nbdReader(base);
      try {
        seen.push(`before: ${await reader.read(0)}`);
        // the product's copy runs while libvirtd stops, is down 1.5 s and starts again
        const t0 = Date.now();
        const at: string[] = [];
        // libvirtd stops (SIGTERM), and the product's whole copy runs while it is gone; then it
        // starts again and reconnects to the running QEMU
        await libvirtdRestart({
          labDir: LAB,
          downMs: 0,
          onDown: async () => {
            at.push(`libvirtd gone +${Date.now() - t0} ms`);
            seen.push(`down: ${await reader.read(1 << 20)}`);
            await copy();
            at.push(`copy done +${Date.now() - t0} ms`);
          },
        });
        at.push(`libvirtd answers +${Date.now() - t0} ms`);
        console.log(`      (${at.join(', ')})`);
        seen.push(`after: ${await reader.read(2 << 20)}`);
        seen.push(`job: ${virsh('domjobinfo', '--domain', AGENT).stdout.match(/Operation:\s*(\S+)/)?.[1]}`);
      } finally {
        reader.close();
      }
    };
    const set = await backupAgent();
    console.log(`      ${seen.join(' | ')}`);
    assert.ok(
      seen.slice(0, 3).every((s) => /read 1048576\/1048576 bytes/.test(s)),
      `one NBD connection read before, while libvirtd was down, and after: ${seen.join(' | ')}`,
    );
    assert.equal(seen[3], 'job: Backup', 'after its restart libvirt still reports our backup job');
    checkImage(set, 'application');
    await libvirtViewRight();
  });

  it('while the guest is frozen, libvirtd back before backup-begin: the backup completes application-consistent', async () => {
    provider.beforeView = async () => {
      provider.beforeView = undefined;
      await libvirtdRestart({ labDir: LAB, downMs: 500 });
    };
    const set = await backupAgent();
    checkImage(set, 'application');
    await libvirtViewRight();
  });

  it('while the guest is frozen, libvirtd still down when backup-begin is sent: virsh waits for it (bounded), the backup completes, the guest thawed', async () => {
    let restarted: Promise<void> | undefined;
    provider.beforeView = async () => {
      provider.beforeView = undefined;
      let down!: () => void;
      const isDown = new Promise<void>((r) => {
        down = r;
      });
      restarted = libvirtdRestart({ labDir: LAB, downMs: 3000, onDown: () => down() });
      await isDown;
    };
    const t0 = Date.now();
    let outcome: string;
    try {
      const set = await backupAgent();
      const vm = set.vms.find((v) => v.id === AGENT)!;
      outcome = `completed ${vm.consistency}, frozen ${vm.snapshot.frozenMs} ms`;
      checkImage(set, vm.consistency as 'application' | 'crash');
      assert.ok((vm.snapshot.frozenMs ?? Infinity) <= DEFAULT_TIMEOUTS.freezeMs + 1000, 'never frozen past the cap');
    } catch (err) {
      // before virsh waited for libvirtd (DAEMON_WAIT_MS) this failed: "virsh backup-begin
      // --domain: failed to connect to the hypervisor: ... libvirt-sock: No such file"
      outcome = `failed: ${(err as Error).message}`;
      assert.fail(`the backup rides over a 3 s libvirtd restart: ${outcome}`);
    }
    console.log(`      ${outcome} (${Date.now() - t0} ms)`);
    await restarted;
    const back = Date.now();
    // the guardian thaws and ends the job once libvirtd is back: wait for it, bounded
    const deadline = Date.now() + 30_000;
    while (
      virsh('guestinfo', '--domain', AGENT, '--filesystem').status !== 0 ||
      !/None/.test(virsh('domjobinfo', '--domain', AGENT).stdout)
    ) {
      assert.ok(Date.now() < deadline, 'thawed and no job within 30 s of libvirtd being back');
      await new Promise((r) => setTimeout(r, 250));
    }
    console.log(`      (libvirtd answered ${back - t0} ms after the set began; thawed and no job ${Date.now() - back} ms later)`);
    await libvirtViewRight();
  });
});
