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

  const view = { disks: [{ disk: 'd0', artifact: 'disk-d0.qcow2', format: 'qcow2' }], ref: { prefix: 'vmb-aaaaaa-', disks: [] } };

  it('finds every effect whose undo was not done, thaw first', () => {
    const b = '20260101T000000Z-aaaaaa';
    journal.append({ backupId: b, vm: 'a', op: 'staging', phase: 'intent', data: { dir: '/repo/h/a/.partial-x' } });
    journal.append({ backupId: b, vm: 'a', op: 'view', phase: 'intent', data: { view } });
    journal.append({ backupId: b, vm: 'a', op: 'track', phase: 'intent', data: { view, track: { records: [{ disk: 'd0', name: 'vmbackup-new' }], since: [{ disk: 'd0', name: 'vmbackup-old' }] } } });
    journal.append({ backupId: b, vm: 'b', op: 'save', phase: 'intent', data: { previousState: 'running' } });
    journal.append({ backupId: b, vm: 'c', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'thaw', phase: 'done' });
    const undos = pendingUndos(new Journal(journal.file).read());
    assert.deepEqual(undos.map((u) => `${u.kind}:${u.vm}`), ['thaw:c', 'resume:b', 'release:a', 'untrack:a', 'discard:a']);
    assert.deepEqual((undos[2] as { view: unknown }).view, view);
    // not published: this backup's own tracking record goes, its parent's stays
    assert.deepEqual((undos[3] as { remove: unknown; published: boolean }).remove, [{ disk: 'd0', name: 'vmbackup-new' }]);
  });

  it('settles the tracking of a published backup by removing the parent\'s record', () => {
    const b = '20260101T000000Z-cccccc';
    journal.append({ backupId: b, vm: 'a', op: 'track', phase: 'intent', data: { view, track: { records: [{ disk: 'd0', name: 'vmbackup-new' }], since: [{ disk: 'd0', name: 'vmbackup-old' }] } } });
    journal.append({ backupId: b, vm: 'a', op: 'publish', phase: 'done' });
    const undos = pendingUndos(journal.read());
    assert.equal(undos.length, 1);
    assert.deepEqual(undos[0], { kind: 'untrack', backupId: b, vm: 'a', view, remove: [{ disk: 'd0', name: 'vmbackup-old' }], published: true });
  });

  it('has nothing pending once undone, published or ended', () => {
    const b = '20260101T000000Z-bbbbbb';
    journal.append({ backupId: b, vm: 'a', op: 'view', phase: 'intent', data: { view } });
    journal.append({ backupId: b, vm: 'a', op: 'release', phase: 'intent' });
    assert.equal(pendingUndos(journal.read()).length, 1, 'a release begun is not a release done');
    journal.append({ backupId: b, vm: 'a', op: 'release', phase: 'done' });
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
