// The fleecing image is made in-process (src/providers/qemu/view.ts, armView): a sparse file the
// size of its disk, created without following a link. Run on real files against a recorded QMP
// exchange (the graph side runs on a real QEMU in the integration and fault suites).
import * as assert from 'node:assert/strict';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { QmpClient, QmpExchange } from '../../../src/providers/qemu/protocol';
import { armView, planView } from '../../../src/providers/qemu/view';

function recorded(): { qmp: QmpExchange; added: Record<string, unknown>[] } {
  const added: Record<string, unknown>[] = [];
  const client = {
    execute: async (cmd: string, args?: Record<string, unknown>) => {
      if (cmd === 'query-named-block-nodes') return [];
      if (cmd === 'blockdev-add') {
        added.push(args!);
        return {};
      }
      throw new Error(`unexpected ${cmd}`);
    },
  } as unknown as QmpClient;
  return { qmp: (fn) => fn(client), added };
}

describe('fleecing image: a sparse file made without a program, never through a link', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmb-fleece-'));
  });
  afterEach(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });
  const plan = () =>
    planView(
      { id: 'vm1', disks: [{ id: 'd0', node: 'n0', qdev: '/q0', included: true, virtualSize: 64 << 20 }] },
      '20260101T000000Z-abcdef',
      dir,
    );

  it('is the size of the disk, allocates nothing, is private, and is added as a file node before its filter', async () => {
    const { qmp, added } = recorded();
    const p = plan();
    await armView(qmp, p);
    const st = await fs.stat(p.disks[0].fleece);
    assert.equal(st.size, 64 << 20);
    assert.ok(st.blocks * 512 < 1 << 20, `sparse (${st.blocks} blocks)`);
    assert.equal(st.mode & 0o777, 0o600);
    assert.deepEqual(
      added.map((a) => [a.driver, a['node-name']]),
      [
        ['file', p.disks[0].fleeceNode],
        ['copy-before-write', p.disks[0].cbwNode],
      ],
    );
  });

  it('a link planted under its name is refused and the file it points to is untouched', async () => {
    const { qmp, added } = recorded();
    const p = plan();
    const victim = path.join(dir, 'precious');
    await fs.writeFile(victim, 'keep me');
    await fs.symlink(victim, p.disks[0].fleece);
    await assert.rejects(armView(qmp, p), /symbolic link is in its place/);
    assert.equal(await fs.readFile(victim, 'utf8'), 'keep me');
    assert.deepEqual(added, [], 'nothing was added to the graph');
  });
});
