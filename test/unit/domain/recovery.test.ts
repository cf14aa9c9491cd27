// Which sets recovery takes as its own, which it reports and which it leaves: the logic above the
// provider, with a provider that records what it is asked (the fault suite does it for real).
import * as assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Journal } from '../../../src/journal/journal';
import type { HostProvider } from '../../../src/providers/provider';
import { journalPath, recover } from '../../../src/recovery';
import { ArtifactRepository } from '../../../src/repository/repository';
import { currentOwner, ownerGone } from '../../../src/repository/staging-owner';

describe('recovery: what it takes as its own', () => {
  let dir: string;
  let calls: string[];
  let provider: HostProvider;
  let repo: ArtifactRepository;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-rec-'));
    mkdirSync(path.join(dir, 'journal'));
    repo = new ArtifactRepository(path.join(dir, 'repo'));
    calls = [];
    provider = {
      thaw: async (vm: string) => void calls.push(`thaw ${vm}`),
      resume: async (vm: string) => void calls.push(`resume ${vm}`),
      merge: async (vm: string) => void calls.push(`merge ${vm}`),
    } as unknown as HostProvider;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const j = (host: string, owner?: string) =>
    new Journal(journalPath(path.join(dir, 'journal'), host), { host, ...(owner ? { owner } : {}) });

  it("recovers its sets from the journal of its old name, reports others' pending work, leaves live peers' sets", async () => {
    const old = j('old', 'node-a');
    old.append({ backupId: '20260101T000000Z-aaaaaa', vm: 'v1', op: 'freeze', phase: 'intent' });
    const stranger = j('gone', 'node-x');
    stranger.append({ backupId: '20260101T000000Z-bbbbbb', vm: 'v2', op: 'freeze', phase: 'intent' });
    const peer = j('peer', 'node-p');
    peer.append({ backupId: '20260101T000000Z-cccccc', vm: 'v3', op: 'freeze', phase: 'intent' });
    for (const x of [old, stranger, peer]) x.close();
    const now = j('new', 'node-a');
    const actions = await recover(now, provider, repo, 1000, { hostName: 'new', owner: 'node-a', liveOwners: new Set(['node-p']) });
    assert.deepEqual(calls, ['thaw v1'], 'only its own set is undone');
    assert.deepEqual(
      actions.map((a) => a.kind),
      ['foreign-pending', 'thaw'],
    );
    assert.match(actions[0].error!, /journal-gone\.jsonl has pending work of host "gone".*thaw v2/);
    assert.equal(actions[1].journal, journalPath(path.join(dir, 'journal'), 'old'));
    assert.equal(existsSync(old.file), false, 'the old journal, empty now, is gone');
    assert.equal(new Journal(stranger.file).read().length, 1, "the stranger's lines stay");
    assert.equal(new Journal(peer.file).read().length, 1, "the peer's lines stay");
  });

  it("removes only the staging directory it computes, under the set's own host name", async () => {
    const journal = j('h', 'node-a');
    const id = '20260101T000000Z-dddddd';
    const mineDir = repo.stagingDir('h', 'v1', id);
    mkdirSync(mineDir, { recursive: true });
    const elsewhere = path.join(dir, 'elsewhere', 'v2', `.partial-${id}`);
    mkdirSync(elsewhere, { recursive: true });
    journal.append({ backupId: id, vm: 'v1', op: 'staging', phase: 'intent', data: { dir: mineDir } });
    journal.append({ backupId: id, vm: 'v2', op: 'staging', phase: 'intent', data: { dir: elsewhere } });
    const actions = await recover(journal, provider, repo, 1000, { hostName: 'h', owner: 'node-a' });
    assert.deepEqual(actions.map((a) => `${a.kind}:${a.vm}:${a.ok}`).sort(), ['discard:v1:true', 'refuse:v2:false']);
    assert.equal(existsSync(mineDir), false);
    assert.equal(existsSync(elsewhere), true);
  });

  it('reports skipped lines and still undoes the rest', async () => {
    const journal = j('h', 'node-a');
    journal.append({ backupId: '20260101T000000Z-eeeeee', vm: 'v1', op: 'save', phase: 'intent', data: { previousState: 'running' } });
    journal.close();
    writeFileSync(journal.file, 'null\n{"op":1}\n', { flag: 'a' });
    const actions = await recover(journal, provider, repo, 1000, { hostName: 'h', owner: 'node-a' });
    assert.deepEqual(calls, ['resume v1']);
    assert.match(
      actions.find((a) => a.kind === 'skip-lines')!.error!,
      /^2 journal line\(s\) skipped.*line 2: not an object \(null\); line 3: t: not a timestamp/,
    );
    assert.deepEqual(new Journal(journal.file).read(), [], 'finished sets and bad lines are dropped');
  });

  it("proves a staging directory's writer gone only from its owner record", () => {
    const me = currentOwner('h');
    assert.equal(ownerGone(undefined).gone, false);
    assert.equal(ownerGone(me).gone, false, 'this very process');
    assert.equal(ownerGone({ ...me, machine: 'other-machine' }).gone, false);
    const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
    assert.equal(ownerGone({ ...me, pid: Number(child.stdout), started: '1' }).gone, true, 'a process that exited');
    if (me.boot) assert.equal(ownerGone({ ...me, boot: 'another-boot' }).gone, true, 'rebooted since');
    if (me.started)
      assert.equal(ownerGone({ ...me, pid: process.ppid, started: 'not-its-start' }).gone, true, 'a pid now used by another process');
  });
});
