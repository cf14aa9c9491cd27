import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal } from '../../../src/journal/journal';
import { pendingUndos } from '../../../src/ledger/pending';
import { LiveBackup } from '../../../src/pipeline/live-backup';
import type { HostProvider } from '../../../src/providers/provider';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

describe('live backup set: a thaw that has to be retried', () => {
  let dir: string;
  let journal: Journal;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-live-'));
    journal = new Journal(path.join(dir, 'journal.jsonl'));
  });
  afterEach(() => {
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('stays with the host until the retried thaw succeeds, then ends', async () => {
    let agentAnswers = false;
    let thaws = 0;
    // only what LiveBackup calls for a freeze and its undo; no guardian (no guardianSpec)
    const provider = {
      kind: 'qemu',
      thaw: async () => {
        thaws++;
        if (!agentAnswers) throw new Error('guest agent unavailable');
        return 1;
      },
    } as unknown as HostProvider;
    let ended = 0;
    const live = new LiveBackup(
      '20260101T000000Z-cccccc',
      ['a'],
      provider,
      journal,
      { freezeMs: 60_000, pauseMs: 60_000, sessionMs: 60_000, idleMs: 60_000, commandMs: 1000 },
      () => undefined,
      () => void ended++,
    );
    await live.freeze('a', async () => 1);
    await live.abort('agent stopped');
    assert.equal(live.stage, 'ended');
    assert.equal(ended, 0, 'a set whose guest is still frozen is not released');
    assert.deepEqual(
      pendingUndos(journal.read()).map((u) => `${u.kind}:${u.vm}`),
      ['thaw:a'],
    );
    agentAnswers = true;
    for (let i = 0; i < 40 && ended === 0; i++) await sleep(100);
    assert.equal(ended, 1, 'released once the retried thaw succeeded');
    assert.ok(thaws >= 2);
    assert.deepEqual(pendingUndos(journal.read()), []);
    assert.ok(
      journal.read().some((e) => e.op === 'end'),
      'the set ended in the journal',
    );
  });

  it('is released at once when everything was undone', async () => {
    const provider = { kind: 'qemu', thaw: async () => 1 } as unknown as HostProvider;
    let ended = 0;
    const live = new LiveBackup(
      '20260101T000000Z-dddddd',
      ['a'],
      provider,
      journal,
      { freezeMs: 60_000, pauseMs: 60_000, sessionMs: 60_000, idleMs: 60_000, commandMs: 1000 },
      () => undefined,
      () => void ended++,
    );
    await live.freeze('a', async () => 1);
    await live.abort('test');
    assert.equal(ended, 1);
    await live.abort('again');
    assert.equal(ended, 1, 'released once only');
  });
});
