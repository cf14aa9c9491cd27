import * as assert from 'node:assert/strict';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Journal, JournalError, checkEntry } from '../../../src/journal/journal';
import { pendingUndos } from '../../../src/ledger/pending';

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
    journal.append({ backupId: b, vm: 'a', op: 'staging', phase: 'intent', data: { dir: `/repo/h/a/.partial-${b}` } });
    // a staging line naming a directory that is not this set's staging directory is never an undo
    journal.append({ backupId: b, vm: 'e', op: 'staging', phase: 'intent', data: { dir: '/etc' } });
    journal.append({ backupId: b, vm: 'a', op: 'view', phase: 'intent', data: { view } });
    journal.append({
      backupId: b,
      vm: 'a',
      op: 'track',
      phase: 'intent',
      data: { view, track: { records: [{ disk: 'd0', name: 'vmbackup-new' }], since: [{ disk: 'd0', name: 'vmbackup-old' }] } },
    });
    journal.append({ backupId: b, vm: 'b', op: 'save', phase: 'intent', data: { previousState: 'running' } });
    journal.append({ backupId: b, vm: 'c', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'freeze', phase: 'intent' });
    journal.append({ backupId: b, vm: 'd', op: 'thaw', phase: 'done' });
    const undos = pendingUndos(new Journal(journal.file).read());
    assert.deepEqual(
      undos.map((u) => `${u.kind}:${u.vm}`),
      ['thaw:c', 'resume:b', 'release:a', 'untrack:a', 'discard:a'],
    );
    assert.deepEqual((undos[2] as { view: unknown }).view, view);
    // not published: this backup's own tracking record goes, its parent's stays
    assert.deepEqual((undos[3] as { remove: unknown; published: boolean }).remove, [{ disk: 'd0', name: 'vmbackup-new' }]);
  });

  it("settles the tracking of a published backup by removing the parent's record", () => {
    const b = '20260101T000000Z-cccccc';
    journal.append({
      backupId: b,
      vm: 'a',
      op: 'track',
      phase: 'intent',
      data: { view, track: { records: [{ disk: 'd0', name: 'vmbackup-new' }], since: [{ disk: 'd0', name: 'vmbackup-old' }] } },
    });
    journal.append({ backupId: b, vm: 'a', op: 'publish', phase: 'done' });
    const undos = pendingUndos(journal.read());
    assert.equal(undos.length, 1);
    assert.deepEqual(undos[0], {
      kind: 'untrack',
      backupId: b,
      vm: 'a',
      view,
      remove: [{ disk: 'd0', name: 'vmbackup-old' }],
      published: true,
    });
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

  it('skips and counts every line that parses but is not a journal entry', () => {
    const b = '20260101T000000Z-cccccc';
    journal.append({ backupId: b, vm: 'a', op: 'freeze', phase: 'intent' });
    journal.close();
    const bad = [
      'null',
      '42',
      '"text"',
      '[]',
      '{}',
      JSON.stringify({ t: 'x', backupId: b, vm: 'a', op: 'freeze', phase: 'intent' }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: '../../etc', vm: 'a', op: 'freeze', phase: 'intent' }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a/b', op: 'freeze', phase: 'intent' }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'explode', phase: 'intent' }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'freeze', phase: 7 }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'staging', phase: 'intent', data: { dir: 'relative/x' } }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'overlay', phase: 'intent', data: { overlays: 'x' } }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'save', phase: 'intent', data: { previousState: {} } }),
      JSON.stringify({ t: '2026-01-01T00:00:00Z', backupId: b, vm: 'a', op: 'save', phase: 'intent', data: null }),
    ];
    appendFileSync(journal.file, bad.join('\n') + '\n');
    const read = journal.readChecked();
    assert.equal(read.entries.length, 1);
    assert.equal(read.skipped.length, bad.length);
    assert.deepEqual(
      read.skipped.map((s) => s.line),
      bad.map((_, i) => i + 2),
    );
    assert.match(read.skipped[0].why, /not an object \(null\)/);
    assert.match(read.skipped[6].why, /^backupId/);
    assert.match(read.skipped[8].why, /^op: unknown/);
    assert.deepEqual(
      pendingUndos(read.entries).map((u) => u.kind),
      ['thaw'],
    );
    assert.equal(checkEntry({ t: '2026-01-01T00:00:00Z', backupId: b, op: 'end', phase: 'done' }), undefined);
  });

  it('reopens its file when it was removed or replaced, so the next line lands where recovery reads', () => {
    journal.append({ backupId: 'x', vm: 'a', op: 'freeze', phase: 'intent' });
    rmSync(path.dirname(journal.file), { recursive: true, force: true });
    journal.append({ backupId: 'y', vm: 'a', op: 'freeze', phase: 'intent' });
    assert.deepEqual(
      new Journal(journal.file).read().map((e) => e.backupId),
      ['y'],
    );
    // replaced by another file (a restore from a copy): the next line goes to the new one
    writeFileSync(`${journal.file}.new`, '');
    renameSync(`${journal.file}.new`, journal.file);
    journal.append({ backupId: 'z', vm: 'a', op: 'freeze', phase: 'intent' });
    assert.deepEqual(
      new Journal(journal.file).read().map((e) => e.backupId),
      ['z'],
    );
  });

  it('refuses a journal path that is a symbolic link or a directory, naming the cause', () => {
    const target = path.join(dir, 'elsewhere');
    writeFileSync(target, 'precious\n');
    mkdirSync(path.dirname(journal.file), { recursive: true });
    symlinkSync(target, journal.file);
    assert.throws(
      () => journal.append({ backupId: 'x', vm: 'a', op: 'freeze', phase: 'intent' }),
      (err: Error) => err instanceof JournalError && /ELOOP: the journal file is a symbolic link/.test(err.message),
    );
    assert.throws(() => journal.read(), JournalError);
    assert.equal(readFileSync(target, 'utf8'), 'precious\n');
    rmSync(journal.file);
    mkdirSync(journal.file);
    assert.throws(
      () => journal.append({ backupId: 'x', vm: 'a', op: 'freeze', phase: 'intent' }),
      /EISDIR: a directory is where the journal file should be/,
    );
  });

  it('stamps every line with its host and owner; dropSets keeps lines appended by others meanwhile', () => {
    const stamped = new Journal(journal.file, { host: 'h1', owner: 'node1' });
    stamped.append({ backupId: 'x', vm: 'a', op: 'freeze', phase: 'intent' });
    const other = new Journal(journal.file, { host: 'h1', owner: 'node2' });
    other.append({ backupId: 'y', vm: 'a', op: 'freeze', phase: 'intent' });
    const lines = stamped.read();
    assert.deepEqual(
      lines.map((e) => [e.host, e.owner]),
      [
        ['h1', 'node1'],
        ['h1', 'node2'],
      ],
    );
    stamped.dropSets((e) => e.backupId === 'x');
    other.append({ backupId: 'y', vm: 'a', op: 'thaw', phase: 'done' });
    assert.deepEqual(
      new Journal(journal.file).read().map((e) => `${e.backupId}:${e.op}`),
      ['y:freeze', 'y:thaw'],
    );
    stamped.close();
    other.close();
  });
});
