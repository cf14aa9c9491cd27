// BackupHost's enumerate and classify with a provider stand-in (the logic above the provider):
// unreachable VMs are never dropped silently, limits are per VM, host-level warnings survive an
// empty list, and set-level fields that steer paths cannot be edited between stages.
import * as assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { assertStage } from '../../../src/contract/validate';
import { unreachableVm } from '../../../src/contract/limits';
import type { EnumeratedVm } from '../../../src/contract/types';
import { Journal } from '../../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../../src/pipeline/backup-host';
import type { HostProvider } from '../../../src/providers/provider';
import { summarize } from '../../../src/summary';
import { onlineVm } from './fixtures';

describe('BackupHost: enumerate and classify', () => {
  let dir: string;
  let journal: Journal;
  let hosts: BackupHost[] = [];
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-sets-'));
    journal = new Journal(path.join(dir, 'journal.jsonl'));
  });
  afterEach(async () => {
    for (const h of hosts) await h.closeAll('test over');
    hosts = [];
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function hostWith(vms: EnumeratedVm[], warnings: string[] = [], skipped?: { name: string; reason: string }[]): BackupHost {
    const provider = {
      kind: 'qemu',
      writerName: 'test writer',
      snapshotQuiesces: false,
      enumerate: async () => vms,
      enumerateHost: async () => ({ vms, warnings, ...(skipped ? { skipped } : {}) }),
    } as unknown as HostProvider;
    const host = new BackupHost(provider, journal, { hostName: 'h1', repositoryRoot: path.join(dir, 'repo'), timeouts: DEFAULT_TIMEOUTS });
    hosts.push(host);
    return host;
  }

  const gone = unreachableVm('db', 'QMP socket /run/db.qmp does not answer (timeout)');

  it('a socket whose name is not a valid VM id goes with the set (hostSkipped): the summary names it and is not ok', async () => {
    const reason = 'socket my vm.qmp skipped: its name is not a valid VM id';
    const host = hostWith([onlineVm()], [reason], [{ name: 'my vm.qmp', reason }]);
    const set = assertStage<any>('enumerated', await host.enumerate());
    assert.deepEqual(set.hostSkipped, [{ name: 'my vm.qmp', reason }]);
    const classified = host.classify(set, 'checkpoint');
    assert.deepEqual(classified.hostSkipped, set.hostSkipped, 'carried on to the next stage');
    // a message that drops it is refused: the summary must not say ok about what was not backed up
    const { hostSkipped: _dropped, ...edited } = classified;
    await assert.rejects(host.prepare(edited as never), /\/hostSkipped: differs from what host produced/);
    const s = summarize({ ...classified, stage: 'copied', repository: '/srv/b', vms: [] }, undefined);
    assert.equal(s.ok, false);
    assert.ok(s.skipped.some((x) => x.vm === 'my vm.qmp'));
    assert.match(s.text, /NOT backed up \(not a valid VM name\): socket my vm\.qmp skipped/);
  });

  it('lists a defined but unreachable VM with its reason; policy fail refuses the set, naming it', async () => {
    const host = hostWith([onlineVm(), gone]);
    const set = assertStage<any>('enumerated', await host.enumerate());
    assert.deepEqual(
      set.vms.map((v: EnumeratedVm) => [v.id, v.state]),
      [
        ['web1', 'running'],
        ['db', 'unreachable'],
      ],
    );
    assert.ok(set.warnings.some((w: string) => /^db: defined but unreachable: QMP socket/.test(w)));
    assert.throws(
      () => host.classify(set, 'checkpoint'),
      /\/vms: 1 VM\(s\) defined on host h1 cannot be reached: db \(QMP socket .* policy unreachable is "fail"/,
    );
  });

  it('policy report backs up the others and lists the unreachable VM in skipped', async () => {
    const host = hostWith([onlineVm(), gone]);
    const set = await host.enumerate();
    const classified = assertStage<any>('classified', host.classify(set, 'checkpoint', 'report'));
    assert.deepEqual(
      classified.vms.map((v: EnumeratedVm) => v.id),
      ['web1'],
    );
    assert.deepEqual(classified.skipped, [{ vm: 'db', reason: gone.unreachable!.reason }]);
    assert.deepEqual(classified.policy, { fallback: 'checkpoint', unreachable: 'report' });
  });

  it('0 VMs where VMs are defined is not a success, whatever the policy', async () => {
    const host = hostWith([gone]);
    const set = await host.enumerate();
    assert.throws(() => host.classify(set, 'checkpoint', 'report'), /\/vms: none of the 1 VM\(s\) defined on host h1 can be reached: db/);
  });

  it('keeps host-level warnings when no VM is listed', async () => {
    const host = hostWith([], ['socket bad name.qmp skipped: its name is not a valid VM id']);
    const set = assertStage<any>('enumerated', await host.enumerate());
    assert.deepEqual(set.vms, []);
    assert.deepEqual(set.warnings, ['socket bad name.qmp skipped: its name is not a valid VM id']);
  });

  it('one VM listing 300 file systems is clamped alone; the set passes its schema', async () => {
    const many = Array.from({ length: 300 }, (_, i) => ({ mountpoint: `/m${i}`, type: 'ext4' }));
    const host = hostWith([onlineVm(), onlineVm({ id: 'odd', guest: { filesystems: many, os: { name: 'Debian' } } })]);
    const set = assertStage<any>('enumerated', await host.enumerate());
    const classified = assertStage<any>('classified', host.classify(set, 'checkpoint'));
    assert.deepEqual(
      classified.vms.map((v: any) => [v.id, v.method]),
      [
        ['web1', 'child-vm-snapshot'],
        ['odd', 'checkpoint'],
      ],
    );
  });

  it('refuses an edited host name, policy or an added repository at the next stage', async () => {
    for (const edit of [
      (s: any) => ({ ...s, host: { ...s.host, name: 'victimhost' } }),
      (s: any) => ({ ...s, writer: { ...s.writer, components: 9 } }),
      (s: any) => ({ ...s, repository: '/elsewhere' }),
    ]) {
      const host = hostWith([onlineVm()]);
      const set = await host.enumerate();
      assert.throws(
        () => host.classify(edit(set), 'checkpoint'),
        /^StageError: \/(host\/name|writer\/components|repository): differs from what host produced for backup set/,
      );
    }
    const host = hostWith([onlineVm()]);
    const classified = host.classify(await host.enumerate(), 'checkpoint');
    await assert.rejects(
      host.prepare({ ...classified, policy: { fallback: 'saved-state', unreachable: 'fail' } }),
      /\/policy\/fallback: differs from what host produced/,
    );
    await assert.rejects(
      host.prepare({ ...classified, skipped: [{ vm: 'x', reason: 'y' }] }),
      /\/skipped: differs from what host produced/,
    );
  });
});
