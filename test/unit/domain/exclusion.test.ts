// The shared contract for a disk left out: who decided it, the user's exclude patterns, and what
// the summary says (never ok about a disk nobody chose to leave out).
import * as assert from 'node:assert/strict';
import { applyExclusions, compilePatterns } from '../../../src/classify/exclude';
import { classifyVm } from '../../../src/classify/classify';
import { EXCLUSIONS, excluded } from '../../../src/contract/exclusion';
import { vmError } from '../../../src/contract/validate';
import { summarize } from '../../../src/summary';
import { onlineVm } from './fixtures';

const disk = (id: string, extra: object = {}) => ({
  id,
  node: `#${id}`,
  file: `/img/${id}.qcow2`,
  format: 'qcow2',
  driver: 'file',
  included: true,
  ...extra,
});

const copied = (id: string, disks: ReturnType<typeof disk>[]) => ({
  ...classifyVm(onlineVm({ id, disks }), 'checkpoint'),
  prepare: { action: 'freeze', previousState: 'running', ms: 1 },
  snapshot: { at: '2026-01-01T00:00:00.000Z', view: { disks: [], ref: {} }, ms: 1 },
  postSnapshot: { returnedTo: 'running', ms: 1 },
  copy: { path: `h1/${id}/B1`, bytes: 10, files: 2, released: true, ms: 1 },
});
const copiedSet = (vms: unknown[]) => ({
  stage: 'copied',
  backupId: '20260101T000000Z-aaaaaa',
  host: { name: 'h1', provider: 'qemu' },
  createdAt: '2026-01-01T00:00:00.000Z',
  vms,
});

describe('a disk left out: the reason, who decided it, and the summary', () => {
  it('every reason has one decider, and the schema refuses an excluded disk without them', () => {
    assert.deepEqual(EXCLUSIONS, {
      'host-config': 'host',
      'user-setting': 'user',
      'removable-media': 'host',
      'no-medium': 'host',
      'hyperv-pass-through': 'hypervisor',
      'hyperv-shared-vhdx': 'hypervisor',
      'not-supported': 'product',
    });
    const vm = onlineVm({ disks: [disk('a'), disk('b', { included: false })] });
    assert.match(vmError('enumerated', vm) ?? '', /required: excludedReason/);
    const claims = onlineVm({ disks: [disk('a', { excludedReason: 'host-config', excludedBy: 'host' })] });
    assert.match(vmError('enumerated', claims) ?? '', /excludedReason/, 'an included disk carries no exclusion');
    assert.equal(vmError('enumerated', onlineVm({ disks: [disk('a'), disk('b', excluded('host-config', 'backup=0'))] })), null);
  });

  it('the exclude setting names disks by VM and disk id globs; drive- ids also match by their Proxmox key', () => {
    const patterns = compilePatterns(['10?/scsi1', 'web-*/vdb', '*/SCSI0:1']);
    const vm = (id: string, ids: string[]) => onlineVm({ id, disks: ids.map((i) => disk(i)) });
    const pick = (v: ReturnType<typeof onlineVm>) =>
      applyExclusions(v, patterns).disks.map((d) => [d.id, d.included, d.excludedBy ?? null]);
    assert.deepEqual(pick(vm('100', ['drive-scsi0', 'drive-scsi1', 'scsi1'])), [
      ['drive-scsi0', true, null],
      ['drive-scsi1', false, 'user'],
      ['scsi1', false, 'user'],
    ]);
    assert.deepEqual(pick(vm('1000', ['drive-scsi1'])), [['drive-scsi1', true, null]], 'a glob matches the whole id');
    assert.deepEqual(pick(vm('web-1', ['vda', 'vdb'])), [
      ['vda', true, null],
      ['vdb', false, 'user'],
    ]);
    const untouched = vm('db', ['vda']);
    assert.equal(applyExclusions(untouched, patterns), untouched);
  });

  it('a user exclusion of a disk the hypervisor cannot give marks it deliberate, keeping the first reason in its text', () => {
    const vm = onlineVm({ id: 'FILESRV', disks: [disk('SCSI0:0'), disk('SCSI0:1', excluded('hyperv-pass-through', 'invisible'))] });
    const out = applyExclusions(vm, compilePatterns(['FILESRV/SCSI0:1']));
    assert.deepEqual({ r: out.disks[1].excludedReason, by: out.disks[1].excludedBy }, { r: 'user-setting', by: 'user' });
    assert.match(out.disks[1].excludedDetail ?? '', /FILESRV\/SCSI0:1.*also: invisible/);
    assert.equal(vmError('enumerated', out), null);
  });

  it('summary: a deliberate exclusion is named and stays ok; any other is named and never ok', () => {
    const host = summarize(copiedSet([copied('100', [disk('drive-scsi0'), disk('drive-scsi1', excluded('host-config', 'backup=0'))])]));
    assert.equal(host.ok, true);
    assert.deepEqual(host.excluded, [{ vm: '100', disk: 'drive-scsi1', reason: 'host-config', by: 'host', detail: 'backup=0' }]);
    assert.match(host.text, /disks left out by choice: 100\/drive-scsi1 \(by host: backup=0\)/);
    assert.doesNotMatch(host.text, /NOT OK/);

    const gap = summarize(
      copiedSet([copied('a', [disk('vda')]), copied('b', [disk('vda'), disk('vdb', excluded('not-supported', 'a network disk'))])]),
    );
    assert.equal(gap.ok, false);
    assert.match(gap.text, /NOT OK/);
    assert.match(gap.text, /disks NOT backed up \(not a choice of yours or the host\): b\/vdb \(by product: a network disk\)/);

    const hv = summarize(copiedSet([copied('FILESRV', [disk('SCSI0:0'), disk('SCSI0:1', excluded('hyperv-pass-through', 'invisible'))])]));
    assert.equal(hv.ok, false, "Hyper-V's real limit is reported, not ok, until the user marks it deliberate");
  });
});
