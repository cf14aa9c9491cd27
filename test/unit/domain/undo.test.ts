// The one undo function the guardian and recovery share: what each pending kind does.
import * as assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Overlay } from '../../../src/contract/types';
import { undo } from '../../../src/pipeline/undo';
import type { HostProvider } from '../../../src/providers/provider';

describe('undo(provider, pending, ctx): one dispatch for the guardian and recovery', () => {
  let dir: string;
  const calls: string[] = [];
  // records what the pipeline asks of the hypervisor; the real calls are tested in integration
  const provider = {
    thaw: async (vm: string, ms: number) => void calls.push(`thaw ${vm} ${ms}`),
    resume: async (vm: string, state: string) => void calls.push(`resume ${vm} ${state}`),
    merge: async (vm: string, o: Overlay[]) => void calls.push(`merge ${vm} ${o.length}`),
  } as unknown as HostProvider;
  beforeEach(() => {
    calls.length = 0;
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-undo-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const overlay = (file: string): Overlay => ({ disk: 'd0', base: '/b.qcow2', baseFormat: 'qcow2', overlay: file, overlayNode: 'n', baseNode: 'b' });

  it('thaw and resume go to the provider with the command timeout and the previous state', async () => {
    assert.equal(await undo(provider, { kind: 'thaw', backupId: 'x', vm: 'a' }, { commandMs: 1234 }), 'done');
    assert.equal(await undo(provider, { kind: 'resume', backupId: 'x', vm: 'a', previousState: 'paused' }, { commandMs: 1 }), 'done');
    assert.deepEqual(calls, ['thaw a 1234', 'resume a paused']);
  });

  it('merge: overlays planned but never made are nothing to do (no provider call); made ones are merged', async () => {
    assert.equal(await undo(provider, { kind: 'merge', backupId: 'x', vm: 'a', overlays: [overlay(path.join(dir, 'none.qcow2'))] }, { commandMs: 1 }), 'nothing-to-do');
    assert.deepEqual(calls, []);
    const made = path.join(dir, 'made.qcow2');
    writeFileSync(made, '');
    assert.equal(await undo(provider, { kind: 'merge', backupId: 'x', vm: 'a', overlays: [overlay(path.join(dir, 'none.qcow2')), overlay(made)] }, { commandMs: 1 }), 'done');
    assert.deepEqual(calls, ['merge a 2']);
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
    const failing = { thaw: async () => { throw new Error('agent gone'); } } as unknown as HostProvider;
    await assert.rejects(undo(failing, { kind: 'thaw', backupId: 'x', vm: 'a' }, { commandMs: 1 }), /agent gone/);
  });
});
