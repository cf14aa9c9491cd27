// The pull path's decisions (src/providers/qemu/pull.ts) against a recorded QMP exchange: which
// disks are pulled, what is left alone when QEMU's NBD server belongs to someone else, and the
// writer's argv. The data path itself runs on a real QEMU in test/integration/incremental.test.ts.
import * as assert from 'node:assert/strict';
import type { QmpClient, QmpExchange } from '../../../src/providers/qemu/protocol';
import { pullArgs, pullDisk, startViewServer } from '../../../src/providers/qemu/pull';
import { planView } from '../../../src/providers/qemu/view';

type Answer = (args: Record<string, unknown> | undefined) => unknown;

function recorded(answers: Record<string, Answer>): { qmp: QmpExchange; calls: string[] } {
  const calls: string[] = [];
  const client = {
    execute: async (cmd: string, args?: Record<string, unknown>) => {
      calls.push(cmd);
      const a = answers[cmd];
      if (!a) throw new Error(`unexpected ${cmd}`);
      return a(args);
    },
  } as unknown as QmpClient;
  return { qmp: (fn) => fn(client), calls };
}

const plan = planView(
  {
    id: 'vm1',
    disks: [
      { id: 'drive-virtio0', node: 'n0', qdev: '/q0', included: true, virtualSize: 1 << 20 },
      { id: 'drive-virtio1', node: 'n1', qdev: '/q1', included: true, virtualSize: 1 << 20 },
    ],
  },
  '20260101T000000Z-abcdef',
  '/img',
);
const nodes = () => [
  { 'node-name': 'n0', drv: 'qcow2', file: '/img/a.qcow2' },
  { 'node-name': 'n1', drv: 'qcow2', file: '/img/clone.qcow2', backing_file: '/img/template.qcow2' },
];

describe("pull: a full copy read from the view through QEMU's NBD export", () => {
  it('one server for the view, an export per disk named by index, read-only; a disk with a backing chain is marked', async () => {
    const exported: Record<string, unknown>[] = [];
    const { qmp, calls } = recorded({
      'query-named-block-nodes': nodes,
      'nbd-server-start': () => ({}),
      'block-export-add': (a) => {
        exported.push(a!);
        return {};
      },
    });
    const server = await startViewServer(qmp, plan);
    assert.ok(typeof server !== 'string' && 'exports' in server);
    assert.deepEqual(calls, ['query-named-block-nodes', 'nbd-server-start', 'block-export-add', 'block-export-add']);
    assert.deepEqual(
      exported.map((e) => [e.name, e['node-name'], e.writable]),
      [
        ['d0', plan.disks[0].accessNode, false],
        ['d1', plan.disks[1].accessNode, false],
      ],
    );
    assert.equal(server.exports.get('drive-virtio0')!.chained, false);
    assert.equal(server.exports.get('drive-virtio1')!.chained, true);
    assert.match(server.exports.get('drive-virtio0')!.uri, /^nbd\+unix:\/\/\/d0\?socket=\/.*vmbackup-view-[0-9a-f]{12}\.sock$/);
    // the chained disk is pushed (its holes through the view are not to be trusted), before any program runs
    assert.equal(await pullDisk(server, plan.disks[1], '/nonexistent/x.qcow2', { qemuImg: '/nonexistent/qemu-img' }), 'backing-chain');
  });

  it("someone else's NBD server: nothing of ours is added and theirs is not stopped; the disk is pushed", async () => {
    const { qmp, calls } = recorded({
      'query-named-block-nodes': nodes,
      'nbd-server-start': () => {
        throw new Error('nbd-server-start: GenericError: NBD server already running');
      },
    });
    const server = await startViewServer(qmp, plan);
    assert.equal(server, 'nbd-server-busy');
    assert.deepEqual(calls, ['query-named-block-nodes', 'nbd-server-start']);
    assert.equal(await pullDisk(server, plan.disks[0], '/nonexistent/x.qcow2', { qemuImg: '/nonexistent/qemu-img' }), 'nbd-server-busy');
  });

  it('a server QEMU cannot start for another reason is said, and the disk is pushed', async () => {
    const { qmp } = recorded({
      'query-named-block-nodes': nodes,
      'nbd-server-start': () => {
        throw new Error('nbd-server-start: GenericError: Failed to bind socket: Permission denied');
      },
    });
    const server = await startViewServer(qmp, plan);
    const r = await pullDisk(server, plan.disks[0], '/nonexistent/x.qcow2', { qemuImg: '/nonexistent/qemu-img' });
    assert.match(String(r), /^nbd-server-failed: .*Permission denied/);
  });

  it('an export that fails stops the server it started, and the failure is thrown', async () => {
    const { qmp, calls } = recorded({
      'query-named-block-nodes': nodes,
      'nbd-server-start': () => ({}),
      'block-export-add': () => {
        throw new Error('block-export-add: GenericError: node not found');
      },
      'nbd-server-stop': () => ({}),
    });
    await assert.rejects(startViewServer(qmp, plan), /node not found/);
    assert.deepEqual(calls.slice(-2), ['block-export-add', 'nbd-server-stop']);
  });

  it('the writer: qemu-img convert from the export, no flush of its own (-t unsafe), zstd only when compressing', () => {
    const plain = pullArgs('nbd+unix:///d0?socket=/tmp/s.sock', '/repo/x.qcow2', false);
    assert.deepEqual(plain.slice(0, 4), ['convert', '-p', '-t', 'unsafe']);
    assert.ok(!plain.includes('-c'));
    assert.deepEqual(plain.slice(-2), ['nbd+unix:///d0?socket=/tmp/s.sock', '/repo/x.qcow2']);
    const packed = pullArgs('nbd+unix:///d0?socket=/tmp/s.sock', '/repo/x.qcow2', true);
    assert.deepEqual(packed.slice(packed.indexOf('-c'), packed.indexOf('-c') + 3), ['-c', '-o', 'compression_type=zstd']);
  });
});
