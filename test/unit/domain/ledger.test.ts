// The ledger of a backup set (src/ledger) and the one ending path of a live set, with a provider
// stand-in (the logic above the provider); the real endings run in test/faults/endings.test.ts.
import * as assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { recoveryReport } from '../../../src/host/open-host';
import { Journal, type JournalEntry } from '../../../src/journal/journal';
import { Ledger, LedgerClosed } from '../../../src/ledger/ledger';
import { adoptedBy, pendingUndos } from '../../../src/ledger/pending';
import { LiveBackup, type SetEnding } from '../../../src/pipeline/live-backup';
import type { HostProvider } from '../../../src/providers/provider';

const B = '20261206T120000Z-aaaaaa';
const view = { disks: [{ disk: 'd0', artifact: 'disk-d0.qcow2', format: 'qcow2' }], ref: {} };
const track = { records: [{ disk: 'd0', name: `vmbackup-0badc0de-${B}` }], since: [{ disk: 'd0', name: 'vmbackup-0badc0de-parent' }] };
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('ledger: one record per backup set', () => {
  let dir: string;
  let journal: Journal;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-ledger-'));
    journal = new Journal(path.join(dir, 'journal.jsonl'));
  });
  afterEach(() => {
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('what is pending is derived from its lines, the same as from the file', () => {
    const l = new Ledger(journal, B);
    l.intent('freeze', 'a');
    l.intent('view', 'a', { view });
    l.intent('track', 'a', { track, view });
    l.intent('staging', 'a', { dir: path.join(dir, 'h', 'a', `.partial-${B}`) });
    assert.deepEqual(
      l.pending().map((u) => u.kind),
      ['thaw', 'release', 'untrack', 'discard'],
    );
    assert.deepEqual(l.pending(), pendingUndos(journal.read()), 'the live record and the file say the same');
    assert.ok(l.holds('a') && !l.holds('b'));
  });

  it('the one tracking rule: published, the parent records go; taken back (unpublish), its own go and its staging is pending again', () => {
    const l = new Ledger(journal, B);
    const staging = path.join(dir, 'h', 'a', `.partial-${B}`);
    l.intent('track', 'a', { track, view });
    l.intent('staging', 'a', { dir: staging });
    l.publishing('a', staging);
    l.done('publish', 'a');
    assert.deepEqual(l.pendingFor('untrack', 'a')?.remove, track.since);
    assert.equal(l.pendingFor('discard', 'a'), undefined, 'a published staging directory is gone by rename');
    assert.deepEqual(l.published(), ['a']);
    l.done('unpublish', 'a');
    assert.deepEqual(l.pendingFor('untrack', 'a')?.remove, track.records);
    assert.equal(l.pendingFor('discard', 'a')?.dir, staging);
    assert.deepEqual(l.published(), []);
    assert.deepEqual(pendingUndos(journal.read()), l.pending(), 'recovery reads the same from the file');
  });

  it('refuses a new effect once the set ended or was handed over; an undo line never throws', () => {
    const l = new Ledger(journal, B);
    l.intent('freeze', 'a');
    l.close('handed to the guardian');
    assert.throws(() => l.intent('view', 'a', { view }), LedgerClosed);
    // the journal cannot be written any more: an undo line is noted in memory, never thrown
    journal.close();
    rmSync(journal.file);
    mkdirSync(journal.file); // a directory where the journal file was
    const logged: string[] = [];
    const l2 = new Ledger(journal, B, (_level, text) => void logged.push(text));
    assert.throws(() => l2.intent('freeze', 'b'), /journal .* cannot be written/);
    assert.equal(l2.pending().length, 0, 'an intent that could not be written is no effect');
    l2.done('publish', 'b');
    assert.match(logged.join('\n'), /publish done not journalled/);
  });

  it('refresh reads back what the guardian wrote; an adopted set belongs to its running guardian until "end"', () => {
    const l = new Ledger(journal, B);
    l.intent('freeze', 'a');
    journal.append({ backupId: B, op: 'adopt', phase: 'intent', data: { pid: process.pid } });
    assert.equal(
      adoptedBy(journal.read(), B, () => true),
      process.pid,
    );
    journal.append({ backupId: B, vm: 'a', op: 'thaw', phase: 'done' });
    journal.append({ backupId: B, op: 'end', phase: 'done' });
    l.refresh();
    assert.deepEqual(l.pending(), []);
    assert.ok(l.ended);
    assert.equal(
      adoptedBy(journal.read(), B, () => true),
      undefined,
      'ended: no longer its guardian',
    );
  });
});

describe('live set: one ending path', () => {
  let dir: string;
  let journal: Journal;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-ending-'));
    journal = new Journal(path.join(dir, 'journal.jsonl'));
  });
  afterEach(() => {
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const timeouts = { freezeMs: 60_000, pauseMs: 60_000, sessionMs: 60_000, idleMs: 60_000, commandMs: 1000 };

  function liveWith(calls: string[], endings: SetEnding[]) {
    // no guardianSpec: no guardian process; only what the undo calls
    const provider = {
      kind: 'qemu',
      thaw: async (vm: string) => void calls.push(`thaw ${vm}`),
      releaseView: async (vm: string) => void calls.push(`release ${vm}`),
      tracking: { start: async () => undefined, remove: async (vm: string) => void calls.push(`untrack ${vm}`) },
    } as unknown as HostProvider;
    return new LiveBackup(
      B,
      ['a'],
      provider,
      journal,
      timeouts,
      () => undefined,
      () => undefined,
      (e) => void endings.push(e),
    );
  }

  it('a watchdog ending between steps: undone through the ledger, reported with the step that was due', async () => {
    const calls: string[] = [];
    const endings: SetEnding[] = [];
    const live = liveWith(calls, endings);
    live.begin('prepare');
    live.planView('a', view);
    await live.startTracking('a', track, view);
    live.end('prepared', [{ id: 'a' }]);
    await live.abort('idleTimeout: test', { by: 'watchdog' });
    assert.deepEqual(calls, ['release a', 'untrack a']);
    assert.equal(endings.length, 1);
    assert.equal(endings[0].by, 'watchdog');
    assert.equal(endings[0].failedAt, 'snapshot');
    assert.deepEqual(endings[0].left, []);
    assert.deepEqual(pendingUndos(journal.read()), []);
    const last = journal.read().at(-1) as JournalEntry;
    assert.equal(last.op, 'end');
  });

  it('from outside a running step, waits for it to let go before undoing (no guardian to hand it to)', async () => {
    const calls: string[] = [];
    const endings: SetEnding[] = [];
    const live = liveWith(calls, endings);
    live.begin('copy');
    live.planView('a', view);
    let stepDone = false;
    void live.runStage(async () => {
      await sleep(300);
      stepDone = true;
      calls.push('step let go');
    });
    await live.abort('sessionTimeout passed', { by: 'watchdog', letGoMs: 50 });
    assert.ok(stepDone);
    assert.deepEqual(calls, ['step let go', 'release a'], 'nothing undone under the running step');
    assert.equal(endings[0].failedAt, 'copy');
  });

  it('a closing host does not wait past letGoMs: without a guardian the set stays in the journal for the next recovery', async () => {
    const calls: string[] = [];
    const endings: SetEnding[] = [];
    const live = liveWith(calls, endings);
    live.begin('copy');
    live.planView('a', view);
    void live.runStage(() => sleep(1000));
    const t0 = Date.now();
    await live.abort('flows redeployed', { by: 'close', letGoMs: 50, undoMs: 2000 });
    assert.ok(Date.now() - t0 < 900, 'the close did not wait for the step');
    assert.deepEqual(calls, [], 'nothing undone under the running step');
    assert.deepEqual(
      pendingUndos(journal.read()).map((u) => u.kind),
      ['release'],
    );
    assert.match(endings[0].left.join(' '), /point-in-time view is still in place/);
  });

  it('a set its host node ended on closing is marked for the report at the next start', async () => {
    const endings: SetEnding[] = [];
    const live = liveWith([], endings);
    live.begin('snapshot');
    live.planView('a', view);
    live.end('snapshotted', [{ id: 'a' }]);
    await live.abort('Node-RED stopping', { by: 'close' });
    const end = journal.read().find((e) => e.op === 'end');
    assert.equal(end?.data?.unreported, true, 'a Node-RED stop: recovery at the next start reports it');
    assert.equal(end?.data?.step, 'post-snapshot');
  });

  it('a set that never began prepare ends without a report (a report-only flow)', async () => {
    const endings: SetEnding[] = [];
    const live = liveWith([], endings);
    await live.abort('idleTimeout: test', { by: 'watchdog' });
    assert.deepEqual(endings, []);
    assert.deepEqual(journal.read(), [], 'nothing journalled for it at all');
  });
});

describe('recovery report: the summary of what Node-RED left in flight', () => {
  it('names the step the set was cut in, what was published and what is left', () => {
    const r = recoveryReport('h1', '/j', [
      { kind: 'release', backupId: B, vm: 'a', ok: true, step: 'copy' },
      { kind: 'discard', backupId: B, vm: 'a', ok: false, step: 'copy', error: 'read-only file system' },
    ]);
    assert.equal(r.summary.failedAt, 'copy');
    assert.equal(r.summary.backups.published, false);
    assert.equal(r.summary.vmState.returned, false);
    assert.match(r.summary.vmState.left.join(' '), /read-only file system/);
  });

  it('a set ended by its host node closing (Node-RED stopped) and a report about no set', () => {
    const ended = recoveryReport('h1', '/j', [
      { kind: 'ended', backupId: B, ok: true, step: 'snapshot', detail: `backup ${B} was ended at snapshot when its host node closed (x)` },
    ]);
    assert.equal(ended.summary.failedAt, 'snapshot');
    assert.equal(ended.summary.vmState.returned, true);
    const none = recoveryReport('h1', '/j', [{ kind: 'leftover', ok: true, detail: 'removed checkpoint vmbackup-x' }]);
    assert.equal(none.summary.failedAt, 'start');
    assert.equal(none.summary.ok, false);
  });
});
