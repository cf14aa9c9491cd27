// The one undo function the guardian and recovery share: what each pending kind does.
import * as assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { undo } from '../../../src/ledger/undo';
import type { HostProvider } from '../../../src/providers/provider';

describe('undo(provider, pending, ctx): one dispatch for the guardian and recovery', () => {
  let dir: string;
  const calls: string[] = [];
  // records what the pipeline asks of the hypervisor; the real calls are tested in integration
  const provider = {
    thaw: async (vm: string, ms: number) => void calls.push(`thaw ${vm} ${ms}`),
    resume: async (vm: string, state: string) => void calls.push(`resume ${vm} ${state}`),
    releaseView: async (vm: string, v: { disks: unknown[] }) => void calls.push(`release ${vm} ${v.disks.length}`),
    tracking: {
      start: async () => undefined,
      remove: async (vm: string, r: { name: string }[]) => void calls.push(`untrack ${vm} ${r.map((x) => x.name).join(',')}`),
    },
  } as unknown as HostProvider;
  beforeEach(() => {
    calls.length = 0;
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-undo-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const view = { disks: [{ disk: 'd0', artifact: 'disk-d0.qcow2', format: 'qcow2' }], ref: {} };

  it('thaw and resume go to the provider with the command timeout and the previous state', async () => {
    assert.equal(await undo(provider, { kind: 'thaw', backupId: 'x', vm: 'a' }, { commandMs: 1234 }), 'done');
    assert.equal(await undo(provider, { kind: 'resume', backupId: 'x', vm: 'a', previousState: 'paused' }, { commandMs: 1 }), 'done');
    assert.deepEqual(calls, ['thaw a 1234', 'resume a paused']);
  });

  it('release goes to the provider with the view; untrack removes the records named, nothing to do without tracking', async () => {
    assert.equal(await undo(provider, { kind: 'release', backupId: 'x', vm: 'a', view }, { commandMs: 1 }), 'done');
    assert.equal(
      await undo(
        provider,
        { kind: 'untrack', backupId: 'x', vm: 'a', view, remove: [{ disk: 'd0', name: 'vmbackup-1' }], published: true },
        { commandMs: 1 },
      ),
      'done',
    );
    assert.deepEqual(calls, ['release a 1', 'untrack a vmbackup-1']);
    const untracked = { ...provider, tracking: undefined } as unknown as HostProvider;
    assert.equal(
      await undo(untracked, { kind: 'untrack', backupId: 'x', vm: 'a', view, remove: [], published: false }, { commandMs: 1 }),
      'nothing-to-do',
    );
  });

  it('discard removes the staging directory (and is safe to repeat)', async () => {
    const staging = path.join(dir, '.partial-x');
    mkdirSync(staging);
    writeFileSync(path.join(staging, 'f'), 'x');
    assert.equal(await undo(provider, { kind: 'discard', backupId: 'x', vm: 'a', dir: staging }, { commandMs: 1 }), 'done');
    assert.equal(existsSync(staging), false);
    assert.equal(await undo(provider, { kind: 'discard', backupId: 'x', vm: 'a', dir: staging }, { commandMs: 1 }), 'done');
  });

  it('a failing undo throws (the caller retries or reports)', async () => {
    const failing = {
      thaw: async () => {
        throw new Error('agent gone');
      },
    } as unknown as HostProvider;
    await assert.rejects(undo(failing, { kind: 'thaw', backupId: 'x', vm: 'a' }, { commandMs: 1 }), /agent gone/);
  });
});
