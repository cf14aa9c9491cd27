// The libvirt provider against a real libvirtd (the lab's, lab/libvirt-lab.ts) with real TCG
// domains: the whole pipeline (BackupHost) backs up a running domain with an agent, one without
// and a shut-off one; the images prove each label, and libvirt's own view afterwards is asked of
// libvirt itself (domblklist, domjobinfo, a snapshot and a backup of its own).
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { domainImage, LIBVIRT_DOMAINS } from '../../lab/libvirt-lab';
import type { CopiedSet } from '../../src/contract/types';
import { Journal } from '../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { LibvirtProvider } from '../../src/providers/libvirt/libvirt-provider';
import { parseJobInfo } from '../../src/providers/libvirt/parse';
import { inspectImage } from '../support/image-check';
import { assertLibvirtView, libvirtLabForSuite, libvirtOwnSnapshotAndBackup, virsh, virshOk } from '../support/libvirt-view';
import { recover } from '../../src/recovery';
import { ArtifactRepository } from '../../src/repository/repository';
import { CATCH, helper, nextMessage, NODE_MODULES, pipelineFlow } from '../nodes/flow-fixture';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const NAMES = LIBVIRT_DOMAINS.map((d) => d.name);
const [AGENT, NOAGENT, OFF] = NAMES;

function noScratchLeft(): void {
  const left = readdirSync(path.dirname(domainImage(AGENT, LAB))).filter((f) => f.includes('.vmbackup-'));
  assert.deepEqual(left, [], 'no scratch file left beside the images');
}

async function backupAll(host: BackupHost, fallback: 'checkpoint' | 'saved-state'): Promise<CopiedSet> {
  const enumerated = await host.enumerate();
  // only the lab's domains (others may be defined on this host): dropping VMs before classify is allowed
  const set = { ...enumerated, vms: enumerated.vms.filter((vm) => NAMES.includes(vm.id)) };
  const classified = host.classify(set, fallback);
  const prepared = await host.prepare(classified);
  const snapshotted = await host.snapshot(prepared);
  const post = await host.postSnapshot(snapshotted);
  return host.copy(post, { concurrency: 2, compress: false });
}

function manifestOf(repository: string, vm: { copy: { path: string } }): any {
  const dir = path.join(repository, vm.copy.path);
  const manifest = JSON.parse(readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  for (const f of manifest.files) {
    assert.equal(
      createHash('sha256')
        .update(readFileSync(path.join(dir, f.name)))
        .digest('hex'),
      f.sha256,
      `${f.name} sha256`,
    );
  }
  return { dir, manifest };
}

describe('libvirt provider on a real libvirtd', function () {
  this.timeout(600_000);
  let lab: { release(): Promise<void> } | undefined;
  let repository: string;
  let host: BackupHost;
  let provider: LibvirtProvider;
  let journal: Journal;

  before(async function () {
    lab = await libvirtLabForSuite(this, LAB);
    repository = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-repo-'));
    journal = new Journal(path.join(mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-journal-')), 'journal-lv.jsonl'));
    provider = new LibvirtProvider({ runDir: mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-run-')) });
    host = new BackupHost(provider, journal, { hostName: 'lv', repositoryRoot: repository, timeouts: DEFAULT_TIMEOUTS });
  });
  after(async () => {
    if (repository) await fs.rm(repository, { recursive: true, force: true });
    if (journal) await fs.rm(path.dirname(journal.file), { recursive: true, force: true });
    if (provider) await fs.rm(provider.runDir, { recursive: true, force: true });
    await lab?.release();
  });

  it('enumerates every defined domain with its state, disks and agent', async () => {
    const vms = await provider.enumerate();
    const byId = new Map(vms.map((vm) => [vm.id, vm]));
    assert.deepEqual(
      NAMES.map((n) => [n, byId.get(n)?.state]),
      [
        [AGENT, 'running'],
        [NOAGENT, 'running'],
        [OFF, 'off'],
      ],
    );
    const agent = byId.get(AGENT)!;
    assert.deepEqual([agent.agent.present, agent.agent.responding], [true, true]);
    assert.deepEqual(
      agent.guest.filesystems.map((f) => [f.mountpoint, f.type]),
      [['/data', 'ext4']],
    );
    assert.equal(byId.get(NOAGENT)!.agent.present, false);
    for (const n of NAMES) {
      assert.deepEqual(
        byId.get(n)!.disks.map((d) => [d.id, d.file, d.format, d.included, d.virtualSize]),
        [['vda', domainImage(n, LAB), 'qcow2', true, 128 << 20]],
      );
    }
  });

  it("checkpoint policy: agent domain application-consistent, agentless crash-consistent, shut-off offline; libvirt's view right after", async () => {
    const set = await backupAll(host, 'checkpoint');
    const byId = new Map(set.vms.map((vm) => [vm.id, vm]));
    assert.deepEqual(
      NAMES.map((n) => [n, byId.get(n)?.method, byId.get(n)?.consistency]),
      [
        [AGENT, 'child-vm-snapshot', 'application'],
        [NOAGENT, 'checkpoint', 'crash'],
        [OFF, 'offline', 'offline'],
      ],
    );
    assert.ok((byId.get(AGENT)!.snapshot.frozenMs ?? Infinity) < 10_000, 'frozen under the cap');
    assert.equal(set.host.provider, 'libvirt');

    const agent = manifestOf(repository, byId.get(AGENT)!);
    const a = inspectImage(path.join(agent.dir, agent.manifest.files.find((f: any) => f.disk === 'vda').name));
    assert.equal(a.needsRecovery, false, 'application-consistent ext4 needs no journal recovery');
    assert.equal(a.e2fsckExit, 0, 'e2fsck -fn clean');
    assert.ok(a.records.ok && a.records.records > 0, `records whole: ${a.records.errors.join('; ')}`);
    assert.equal(a.records.tornTail, false);
    const def = JSON.parse(readFileSync(path.join(agent.dir, 'definition.json'), 'utf8'));
    assert.match(def.domainXml, /<domain type='qemu'>/);

    const noagent = manifestOf(repository, byId.get(NOAGENT)!);
    const n = inspectImage(path.join(noagent.dir, noagent.manifest.files.find((f: any) => f.disk === 'vda').name));
    assert.equal(n.needsRecovery, true, 'a crash-consistent ext4 image (mounted, not frozen) still needs recovery');
    assert.ok(n.records.records > 0);

    const off = manifestOf(repository, byId.get(OFF)!);
    const offImage = path.join(off.dir, off.manifest.files.find((f: any) => f.disk === 'vda').name);
    const o = inspectImage(offImage);
    assert.deepEqual([o.needsRecovery, o.e2fsckExit], [false, 0]);
    const raw = path.join(off.dir, 'check.raw');
    spawnSync('qemu-img', ['convert', '-O', 'raw', offImage, raw]);
    const hello = spawnSync('debugfs', ['-R', 'cat /hello.txt', raw], { encoding: 'utf8' }).stdout;
    await fs.rm(raw);
    assert.equal(hello, `hello from ${OFF}\n`);

    assertLibvirtView(AGENT, 'running', LAB);
    assertLibvirtView(NOAGENT, 'running', LAB);
    assertLibvirtView(OFF, 'shut off', LAB);
    noScratchLeft();
  });

  it("after our backup, libvirt's own disk-only snapshot + blockcommit and its own backup-begin work", async () => {
    await libvirtOwnSnapshotAndBackup(AGENT, LAB);
  });

  it('through Node-RED: a host node with provider libvirt runs the example pipeline over every defined domain', async () => {
    const journalDir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-nrj-'));
    await new Promise<void>((resolve) => helper.startServer(() => resolve()));
    try {
      await helper.load(
        [...NODE_MODULES, CATCH],
        pipelineFlow({
          socketDir: '/nonexistent',
          repository,
          journalDir,
          fallback: 'checkpoint',
          hostExtra: { hostName: 'lv-nr', provider: 'libvirt', libvirtUri: 'qemu:///system' },
        }) as any,
      );
      const done = nextMessage('out-copy', 300_000);
      const failed = nextMessage('caught', 300_000).then((m) => Promise.reject(new Error(`backup failed: ${m.error.message}`)));
      helper.getNode('enumerate').receive({ payload: '' });
      const msg = await Promise.race([done, failed]);
      const byId = new Map<string, any>(msg.payload.vms.map((vm: any) => [vm.id, vm]));
      assert.deepEqual(
        NAMES.map((n) => byId.get(n)?.consistency),
        ['application', 'crash', 'offline'],
      );
      assert.equal(msg.summary.ok, true);
      for (const n of NAMES) assert.equal(manifestOf(repository, byId.get(n)).manifest.provider, 'libvirt');
    } finally {
      await helper.unload();
      await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
      await fs.rm(journalDir, { recursive: true, force: true });
    }
    for (const n of [AGENT, NOAGENT]) assertLibvirtView(n, 'running', LAB);
    assertLibvirtView(OFF, 'shut off', LAB);
    noScratchLeft();
  });

  it('saved-state policy: the agentless domain is managed-saved, restored and running again, its state copied', async () => {
    const set = await backupAll(host, 'saved-state');
    const vm = set.vms.find((v) => v.id === NOAGENT)!;
    assert.deepEqual(
      [vm.method, vm.prepare.action, vm.postSnapshot.resumed, vm.postSnapshot.returnedTo],
      ['saved-state', 'save', true, 'running'],
    );
    const { manifest } = manifestOf(repository, vm);
    const state = manifest.files.find((f: any) => f.kind === 'saved-state');
    assert.ok(state && state.bytes > 1 << 20, 'the saved state holds the guest memory');
    assert.equal(virshOk('dominfo', '--domain', NOAGENT).match(/Managed save:\s*(\S+)/)?.[1], 'no', 'libvirt keeps no managed save image');
    for (const n of [AGENT, NOAGENT]) assertLibvirtView(n, 'running', LAB);
    assertLibvirtView(OFF, 'shut off', LAB);
    noScratchLeft();
  });
  describe('fault cases: the backup process SIGKILLed', () => {
    const crashScript = path.resolve(__dirname, '../support/libvirt-crash.js');
    const crash = (journalFile: string, runDir: string, after: string, guardian: boolean) => {
      const r = spawnSync(process.execPath, [crashScript, journalFile, repository, runDir, AGENT, after, guardian ? 'yes' : 'no'], {
        encoding: 'utf8',
        timeout: 120_000,
      });
      assert.equal(r.signal, 'SIGKILL', `the backup process died by SIGKILL (${r.stderr})`);
      assert.equal(r.stdout.trim(), `at ${after}`);
    };
    const jobNow = () => parseJobInfo(virshOk('domjobinfo', '--domain', AGENT));
    const thawed = () => virsh('guestinfo', '--domain', AGENT, '--filesystem').status === 0;
    const waitFor = async (what: string, ok: () => boolean, ms = 30_000) => {
      const deadline = Date.now() + ms;
      while (!ok()) {
        assert.ok(Date.now() < deadline, `${what} within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 200));
      }
    };

    it('between backup-begin and domjobabort, no guardian: the job outlives the process; recovery at the next start ends it', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-crash-'));
      const journalFile = path.join(dir, 'journal.jsonl');
      try {
        crash(journalFile, dir, 'snapshotted', false);
        assert.equal(jobNow().operation, 'Backup', 'libvirt still runs our backup job');
        assert.ok(
          readdirSync(path.dirname(domainImage(AGENT, LAB))).some((f) => f.includes('.vmbackup-')),
          'its scratch file exists',
        );
        assert.ok(thawed(), 'the guest was thawed before the process died');
        const j = new Journal(journalFile);
        const actions = await recover(j, new LibvirtProvider({ runDir: dir }), new ArtifactRepository(repository), 30_000);
        j.close();
        assert.ok(
          actions.some((a) => a.kind === 'release' && a.ok && a.vm === AGENT),
          `recovery ended the job: ${JSON.stringify(actions)}`,
        );
        assertLibvirtView(AGENT, 'running', LAB);
        noScratchLeft();
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
    });

    it('between backup-begin and domjobabort, with its guardian: the guardian ends the job at once', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-crash-'));
      const journalFile = path.join(dir, 'journal.jsonl');
      try {
        const t0 = Date.now();
        crash(journalFile, dir, 'snapshotted', true);
        await waitFor('the guardian ended the backup job', () => jobNow().type === 'None', 20_000);
        console.log(`      (job ended ${Date.now() - t0} ms after the process started)`);
        await waitFor('the guardian journalled the end', () => readFileSync(journalFile, 'utf8').includes('"op":"end"'));
        assertLibvirtView(AGENT, 'running', LAB);
        noScratchLeft();
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
    });

    it('while the guest is frozen, with its guardian: the guardian thaws it (domfsthaw)', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-lv-crash-'));
      const journalFile = path.join(dir, 'journal.jsonl');
      try {
        crash(journalFile, dir, 'frozen', true);
        await waitFor('the guest answers guestinfo --filesystem again (thawed)', thawed, 20_000);
        await waitFor('the guardian journalled the end', () => readFileSync(journalFile, 'utf8').includes('"op":"end"'));
        assertLibvirtView(AGENT, 'running', LAB);
      } finally {
        await fs.rm(dir, { recursive: true, force: true });
      }
    });
  });
});
