import * as assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal, pendingUndos } from '../../../src/journal/journal';

describe('journal', () => {
  let dir: string;
  let journal: Journal;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-j-'));
    journal = new Journal(path.join(dir, 'sub', 'journal.jsonl'));
  });
  afterEach(() => {
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const overlay = { disk: 'd0', base: '/i/a.qcow2', baseFormat: 'qcow2', overlay: '/i/a.qcow2.vmbackup-20260101T000000Z-aaaaaa.qcow2', overlayNode: 'vmb-aaaaaa-d0' };

  it('finds every effect whose undo was not done, thaw first', () => {
    const b = '20260101T000000Z-aaaaaa';
    journal.append({ backupId: b, vm: 'a', op: 'staging', phase: 'intent', data: { dir: '/repo/h/a/.partial-x' } });
    journal.append({ backupId: b, vm: 'a', op: 'overlay', phase: 'intent', data: { overlays: [overlay] } });
    journal.append({ backupId: b, vm: 'b', op: 'save', phase: 'intent', data: { previousState: 'running' } });
    journal.append({ backupId: b, vm: 'c', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'thaw', phase: 'done' });
    const undos = pendingUndos(new Journal(journal.file).read());
    assert.deepEqual(undos.map((u) => `${u.kind}:${u.vm}`), ['thaw:c', 'resume:b', 'merge:a', 'discard:a']);
    assert.deepEqual((undos[2] as { overlays: unknown[] }).overlays, [overlay]);
  });

  it('has nothing pending once undone, published or ended', () => {
    const b = '20260101T000000Z-bbbbbb';
    journal.append({ backupId: b, vm: 'a', op: 'overlay', phase: 'intent', data: { overlays: [overlay] } });
    journal.append({ backupId: b, vm: 'a', op: 'merge', phase: 'intent' });
    assert.equal(pendingUndos(journal.read()).length, 1, 'a merge begun is not a merge done');
    journal.append({ backupId: b, vm: 'a', op: 'merge', phase: 'done' });
    journal.append({ backupId: b, vm: 'a', op: 'staging', phase: 'intent', data: { dir: '/r' } });
    journal.append({ backupId: b, vm: 'a', op: 'publish', phase: 'done' });
    assert.deepEqual(pendingUndos(journal.read()), []);
    journal.append({ backupId: b, vm: 'z', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, op: 'end', phase: 'done' });
    assert.deepEqual(pendingUndos(journal.read()), []);
  });

  it('survives a torn last line and compacts atomically', () => {
    journal.append({ backupId: 'x', vm: 'a', op: 'freeze', phase: 'intent' });
    journal.close();
    appendFileSync(journal.file, '{"t":"2026-01-01T00:00:00Z","backupId":"x","vm":"a","op":"th');
    assert.equal(journal.read().length, 1);
    journal.compact([]);
    assert.deepEqual(journal.read(), []);
  });
});
