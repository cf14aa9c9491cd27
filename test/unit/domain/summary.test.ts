import * as assert from 'node:assert/strict';
import { CleanupFailed, StageError } from '../../../src/pipeline/stage-error';
import { summarize } from '../../../src/summary';
import { onlineVm } from './fixtures';

const copiedVm = (id: string) => ({
  ...onlineVm({ id }),
  method: 'child-vm-snapshot',
  consistency: 'application',
  reasons: [],
  warnings: [],
  postSnapshot: { returnedTo: 'running', ms: 1 },
  copy: { path: `h1/${id}/B1`, bytes: 2048, files: 3, merged: true, ms: 5 },
});
const set = (vms: unknown[], extra: Record<string, unknown> = {}) => ({
  stage: 'post-snapshot',
  backupId: '20260101T000000Z-aaaaaa',
  host: { name: 'h1', provider: 'qemu' },
  vms,
  ...extra,
});

describe('summary: what happened to the backups and to the VMs', () => {
  it('a complete backup: ok, published where, every VM back in its state', () => {
    const s = summarize(set([copiedVm('a'), copiedVm('b')], { stage: 'copied', repository: '/srv/b' }));
    assert.equal(s.ok, true);
    assert.deepEqual(s.backups, {
      published: true,
      count: 2,
      where: '/srv/b/h1/',
      text: 'all of 2 VM(s) published under /srv/b/h1/: /srv/b/h1/a/B1, /srv/b/h1/b/B1',
    });
    assert.equal(s.vmState.returned, true);
    assert.match(s.vmState.text, /every VM is back in its state \(a: running, b: running\)/);
  });

  it('published but cleanup failed (in copy): not ok, FAILED at copy, the backups published, what is left on the VMs', () => {
    const err = new CleanupFailed('backup X was published but cleaning up failed: a merge: busy', [
      { vm: 'a', path: '/srv/b/h1/a/B1' },
      { vm: 'b', path: '/srv/b/h1/b/B1' },
    ]);
    const s = summarize(set([copiedVm('a'), copiedVm('b')]), err, { failedAt: 'copy', left: ['a: still on overlay(s) /x.qcow2'] });
    assert.equal(s.ok, false);
    assert.equal(s.failedAt, 'copy');
    assert.equal(s.stage, 'post-snapshot', 'the input stage is kept as the stage reached, the step that failed is named apart');
    assert.match(s.text, /^Backup .* on h1 FAILED at copy: backup X was published/);
    assert.equal(s.backups.published, true);
    assert.equal(s.backups.count, 2);
    assert.deepEqual(
      s.vms.map((v) => v.path),
      ['/srv/b/h1/a/B1', '/srv/b/h1/b/B1'],
    );
    assert.equal(s.vmState.returned, false);
    assert.deepEqual(s.vmState.left, ['a: still on overlay(s) /x.qcow2']);
    assert.match(s.text, /VMs: NOT all back in their state: a: still on overlay/);
  });

  it('a failure with everything undone: nothing published, every VM back', () => {
    const s = summarize(set([copiedVm('a')], { stage: 'prepared' }), new StageError('no VM backed up: a: boom'), {
      failedAt: 'snapshot',
      left: [],
    });
    assert.equal(s.ok, false);
    assert.equal(s.backups.published, false);
    assert.match(s.backups.text, /none published/);
    assert.equal(s.vmState.returned, true);
    assert.match(s.text, /FAILED at snapshot/);
  });

  it('never ok about nothing: unreachable VMs skipped, or no VM at all', () => {
    const skipped = summarize(set([copiedVm('a')], { stage: 'copied', skipped: [{ vm: 'db', reason: 'QMP socket does not answer' }] }));
    assert.equal(skipped.ok, false);
    assert.match(skipped.text, /NOT backed up \(defined but unreachable\): db \(QMP socket does not answer\)/);
    const none = summarize(set([], { stage: 'copied' }));
    assert.equal(none.ok, false);
    assert.match(none.text, /no VM is defined on this host: nothing was backed up/);
  });

  it("a failure before any set exists (enumerate) is named by the host node's host name", () => {
    const s = summarize({ payload: 'inject' }, new Error('virsh list --all: libvirtd does not answer'), {
      failedAt: 'enumerate',
      hostName: 'lab',
    });
    assert.equal(s.host, 'lab');
    assert.match(s.text, /^Backup\s+on lab FAILED at enumerate: virsh list --all/);
    // the set's own host wins when it has one
    assert.equal(summarize(set([copiedVm('a')], { stage: 'copied' }), undefined, { hostName: 'other' }).host, 'h1');
  });
});
