// A prune killed (SIGKILL) at each of its steps, one run per step, on a copy of the same real
// chain: right after the kill every point the prune keeps still reads back (qemu-img, its whole
// chain) as exactly what it held; the next prune of the VM finishes the interrupted one (or rolls
// it back, before the first merge) and then every kept point verifies and flattens to the same
// bytes, what the rules drop is gone, and nothing of ours is left behind.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pruneVm, type Retention } from '../../../src/prune';
import { verifyBackup } from '../../../src/verify';
import { buildRepo, flatSha, HOST, nightly, VM } from './build-repo';

const HAVE = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
const CHILD = path.join(__dirname, 'prune-child.js');

(HAVE ? describe : describe.skip)('prune killed at each step', function () {
  this.timeout(600_000);
  let tmp: string;
  let tz: string | undefined;
  const rules: Retention = { keepLast: 2, keepWeekly: 2 };
  const disks = [{ id: 'drive-virtio0', fullAt: (i: number) => i === 3 }];
  before(() => {
    tz = process.env.TZ;
    process.env.TZ = 'UTC';
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-prune-crash-'));
  });
  after(() => {
    if (tz === undefined) delete process.env.TZ;
    else process.env.TZ = tz;
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('every step: the kept points stay readable, and the next prune settles it', async () => {
    // 2026-11-02 is a Monday: 12 nights over two weeks, one full in the middle
    const template = buildRepo(path.join(tmp, 'template'), nightly('2026-11-02T03:00:00Z', 12), disks);
    const copy = (name: string) => {
      const dir = path.join(tmp, name);
      spawnSync('cp', ['-a', path.join(tmp, 'template', 'repo'), dir]);
      return { root: dir, vmDir: path.join(dir, HOST, VM) };
    };
    const runChild = (root: string, killAt: string) => {
      const r = spawnSync(process.execPath, [CHILD, root, killAt, JSON.stringify(rules)], { encoding: 'utf8' });
      return { steps: r.stdout.split('\n').filter(Boolean), signal: r.signal, status: r.status, stderr: r.stderr };
    };
    // the whole prune once, to learn its steps and what it keeps
    const whole = copy('whole');
    const first = runChild(whole.root, '-');
    assert.equal(first.status, 0, first.stderr + first.steps.join('\n'));
    const steps = first.steps.filter((s) => !s.startsWith('result'));
    assert.ok(steps.filter((s) => s.startsWith('merge-renamed')).length >= 2, `at least two merges: ${steps.join(' ')}`);
    const kept = fs.readdirSync(whole.vmDir).sort();
    const gone = template.ids.filter((id) => !kept.includes(id));
    assert.ok(gone.length >= 6);

    for (const step of steps) {
      const at = copy(`kill-${step.replace(/[^a-z0-9-]/gi, '_')}`);
      const killed = runChild(at.root, step);
      assert.equal(killed.signal, 'SIGKILL', `${step}: the prune was killed there (${killed.steps.join(' ')})`);
      // right after the kill: every point to keep reads back whole through its chain
      for (const id of kept)
        assert.equal(
          flatSha(tmp, at.vmDir, id, 'drive-virtio0'),
          template.refs.get(`${id}/drive-virtio0`),
          `killed at ${step}: ${id} still reads back`,
        );
      // the next prune settles the interrupted one first
      const next = await pruneVm(VM, { root: at.root, host: HOST, rules });
      assert.ok(next.ok, `after ${step}: ${next.error}`);
      if (step !== 'done:') assert.ok(next.recovered, `after ${step}: the interrupted prune was settled (${JSON.stringify(next)})`);
      assert.deepEqual(fs.readdirSync(at.vmDir).sort(), kept, `after ${step}: exactly the kept backups, nothing of ours left`);
      for (const id of kept) {
        const v = await verifyBackup(path.join(at.vmDir, id));
        assert.ok(v.ok, `after ${step}: ${id} verifies: ${JSON.stringify(v.problems)}`);
        assert.equal(
          flatSha(tmp, at.vmDir, id, 'drive-virtio0'),
          template.refs.get(`${id}/drive-virtio0`),
          `after ${step}: ${id} flattens the same`,
        );
        for (const f of fs.readdirSync(path.join(at.vmDir, id))) assert.ok(!f.startsWith('.'), `after ${step}: ${id}/${f} left behind`);
      }
      fs.rmSync(at.root, { recursive: true, force: true });
    }
  });
});
