// Durations that protect a guest or are reported come from the monotonic clock: the wall clock
// stepped back one hour while a guest is frozen (or a VM is stopped) must not make frozenMs,
// downtimeMs or any stage's ms negative (the stage's own output would fail its schema). Stepping
// the real clock of this shared machine is not safe, so Date.now (the wall clock the code would
// read) is stepped inside this process; performance.now is left alone.
import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ClassifiedVm } from '../../../src/contract/types';
import { validate } from '../../../src/contract/validate';
import { Journal } from '../../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../../src/pipeline/backup-host';
import type { HostProvider } from '../../../src/providers/provider';
import { monoNow, msSince } from '../../../src/util/clock';
import { onlineVm } from './fixtures';

const HOUR = 3600_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('durations come from a monotonic clock (wall clock stepped back while frozen or stopped)', function () {
  // journal fsyncs and staging directories: slow on a busy shared disk
  this.timeout(20_000);
  const realNow = Date.now;
  let offset = 0;
  let dir: string;
  let journal: Journal;
  beforeEach(() => {
    offset = 0;
    Date.now = () => realNow() + offset;
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-mono-'));
    journal = new Journal(path.join(dir, 'journal.jsonl'));
  });
  afterEach(() => {
    Date.now = realNow;
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Only what the stages call; no guardianSpec, so the in-process path is what is measured. */
  function provider(onFreeze: () => void, onSave: () => void): HostProvider {
    return {
      kind: 'qemu',
      writerName: 'test',
      quiesce: 'agent',
      enumerate: async () => [
        onlineVm({ id: 'web1' }),
        onlineVm({
          id: 'db1',
          agent: { present: true, responding: false, freezeEnabled: false },
          disks: [{ ...onlineVm().disks[0]!, file: '/var/lib/vz/db1.qcow2' }],
        }),
      ],
      freeze: async () => {
        onFreeze();
        return { frozenFilesystems: 1 };
      },
      freezeStatus: async () => 'frozen',
      thaw: async () => 1,
      saveState: async () => {
        onSave();
        return { bytes: 1 };
      },
      resume: async () => undefined,
      runState: async () => 'running',
      planView: (vm: ClassifiedVm) => ({
        disks: vm.disks.filter((d) => d.included).map((d) => ({ disk: d.id, artifact: `disk-${d.id}.qcow2`, format: 'qcow2' })),
        ref: {},
      }),
      armView: async () => undefined,
      makeView: async (_vm: ClassifiedVm, view: unknown) => ({ view }),
      releaseView: async () => undefined,
      describe: async () => ({}),
      exportDisk: async () => {
        throw new Error('not used');
      },
      close: async () => undefined,
    } as unknown as HostProvider;
  }

  it('frozenMs, downtimeMs and every stage ms stay >= 0 and true; each stage output passes its schema', async () => {
    // the step happens while the guest is frozen (web1) and while the VM is stopped (db1)
    const p = provider(
      () => void (offset -= HOUR),
      () => void (offset -= HOUR),
    );
    const host = new BackupHost(p, journal, { hostName: 'h', repositoryRoot: dir, timeouts: { ...DEFAULT_TIMEOUTS, freezeMs: 60_000 } });
    const e = await host.enumerate();
    const c = host.classify(e, 'saved-state');
    assert.deepEqual(
      c.vms.map((vm) => vm.method),
      ['child-vm-snapshot', 'saved-state'],
      'web1 frozen, db1 (no agent) saved',
    );
    const pr = await host.prepare(c);
    assert.equal(validate('prepared', pr), null);
    await sleep(120);
    const s = await host.snapshot(pr);
    assert.equal(validate('snapshotted', s), null, 'the snapshot output passes its schema');
    const web = s.vms.find((v) => v.id === 'web1')!;
    assert.ok(
      web.snapshot.frozenMs !== undefined && web.snapshot.frozenMs >= 100 && web.snapshot.frozenMs < 5000,
      `frozenMs ${web.snapshot.frozenMs} is the real frozen time`,
    );
    const ps = await host.postSnapshot(s);
    assert.equal(validate('post-snapshot', ps), null, 'the post-snapshot output passes its schema');
    for (const [stage, t] of Object.entries(ps.timings)) assert.ok(t.ms >= 0 && t.ms < 10_000, `${stage} ms ${t.ms}`);
    for (const vm of ps.vms) {
      if (vm.postSnapshot.downtimeMs !== undefined)
        assert.ok(
          vm.postSnapshot.downtimeMs >= 0 && vm.postSnapshot.downtimeMs < 10_000,
          `${vm.id} downtimeMs ${vm.postSnapshot.downtimeMs}`,
        );
    }
    assert.ok(offset <= -HOUR, 'the wall clock was stepped back during the run');
    await host.closeAll('test over');
  });

  it('msSince measures on the monotonic clock, to a tenth of a millisecond', async () => {
    const m0 = monoNow();
    offset -= HOUR;
    await sleep(50);
    const ms = msSince(m0);
    assert.ok(ms >= 45 && ms < 2000, `ms ${ms}`);
    assert.ok(Math.abs(ms * 10 - Math.round(ms * 10)) < 1e-6, `${ms} is rounded to a tenth`);
  });
});
