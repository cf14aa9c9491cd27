import assert from 'node:assert/strict';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  GuestAgentUnavailableError,
  QmpConnectionClosedError,
  QmpError,
  QmpTimeoutError,
} from '../../../src/providers/qemu/protocol/errors';
import { GuestAgentClient } from '../../../src/providers/qemu/protocol/guest-agent-client';
import { QmpMessage } from '../../../src/providers/qemu/protocol/message';
import { FakePeer, FakeServer, sleep } from './fake-server';

interface Behaviour {
  /** Replies for custom commands: value, or { delayMs, reply }; undefined = no reply. */
  handle?: (msg: QmpMessage) => { delayMs?: number; reply?: QmpMessage } | undefined;
  /** Sent right after a client connects (stale data in the channel). */
  stale?: Array<QmpMessage | string | Buffer>;
  supportsDelimited?: boolean;
  silent?: boolean;
}

/**
 * A fake qemu-ga: processes requests strictly one after another (like the
 * real agent's main loop), answers 0xFF with a JSON parse error (as qemu-ga
 * 7.2 does), answers guest-sync-delimited with 0xFF + {"return": id}.
 */
async function fakeAgent(b: Behaviour = {}): Promise<FakeServer> {
  const busy = new Map<FakePeer, Promise<void>>();
  const enqueue = (peer: FakePeer, fn: () => Promise<void>) => {
    const prev = busy.get(peer) ?? Promise.resolve();
    busy.set(peer, prev.then(fn));
  };
  return FakeServer.start({
    onConnect: (peer) => b.stale && peer.send(...b.stale),
    onDelimiter: (peer) => {
      if (b.silent) return;
      enqueue(peer, async () => peer.send(`{"error": {"class": "GenericError", "desc": "JSON parse error, stray '\\uFFFD'"}}\n`));
    },
    onMessage: (msg, peer) => {
      if (b.silent) return;
      enqueue(peer, async () => {
        if (msg.execute === 'guest-sync-delimited' && b.supportsDelimited !== false) {
          peer.send(Buffer.from([0xff]), `${JSON.stringify({ return: msg.arguments?.id })}\n`);
        } else if (msg.execute === 'guest-sync') {
          peer.send(`${JSON.stringify({ return: msg.arguments?.id })}\n`);
        } else if (msg.execute === 'guest-ping') {
          peer.send('{"return": {}}\n');
        } else {
          const r = b.handle?.(msg);
          if (r === undefined) {
            if (!['guest-shutdown', 'guest-suspend-ram'].includes(msg.execute)) {
              peer.send(
                `${JSON.stringify({ error: { class: 'CommandNotFound', desc: `The command ${msg.execute} has not been found` } })}\n`,
              );
            }
            return;
          }
          if (r.delayMs) await sleep(r.delayMs);
          if (r.reply) peer.send(`${JSON.stringify(r.reply)}\n`);
        }
      });
    },
  });
}

const executes = (server: FakeServer) => server.received.map((m) => m.execute);

describe('protocol/GuestAgentClient', function () {
  this.timeout(10000);
  let server: FakeServer | undefined;
  let client: GuestAgentClient | undefined;

  afterEach(async () => {
    await client?.close();
    await server?.close();
    client = undefined;
    server = undefined;
  });

  it('connect sends 0xFF then guest-sync-delimited with a random 31-bit id', async () => {
    server = await fakeAgent();
    client = await GuestAgentClient.connect(server.path);
    const raw = server.peer.rawBytes;
    assert.equal(raw[0], 0xff, 'sentinel first');
    const sync = server.received[0];
    assert.equal(sync.execute, 'guest-sync-delimited');
    assert.ok(Number.isInteger(sync.arguments?.id) && sync.arguments!.id > 0 && sync.arguments!.id < 2 ** 31);
    assert.equal(client.outOfSync, false);
    assert.deepEqual(await client.execute('guest-ping'), {});
  });

  it('discards stale replies and partial messages left in the channel by an earlier client', async () => {
    server = await fakeAgent({
      stale: [
        '{"return": {"old": "reply"}}\n',
        '{"return": 12345}\n',
        `${JSON.stringify({ error: { class: 'GenericError', desc: 'old' } })}\n`,
        '{"return": {"truncated": "}{ ', // never finished: cut by the 0xFF of the sync reply
      ],
      handle: (m) => (m.execute === 'guest-info' ? { reply: { return: { version: 'fake' } } } : undefined),
    });
    client = await GuestAgentClient.connect(server.path);
    assert.deepEqual(await client.execute('guest-info'), { version: 'fake' });
  });

  it('different clients use different sync ids', async () => {
    server = await fakeAgent();
    const a = await GuestAgentClient.connect(server.path);
    await a.close();
    const b = await GuestAgentClient.connect(server.path);
    await b.close();
    const ids = server.received.filter((m) => m.execute === 'guest-sync-delimited').map((m) => m.arguments?.id);
    assert.equal(ids.length, 2);
    assert.notEqual(ids[0], ids[1]);
  });

  it('rejects with GuestAgentUnavailableError when the agent does not answer within syncTimeoutMs', async () => {
    server = await fakeAgent({ silent: true });
    const t0 = Date.now();
    await assert.rejects(GuestAgentClient.connect(server.path, { syncTimeoutMs: 120 }), (err: unknown) => {
      assert.ok(err instanceof GuestAgentUnavailableError);
      assert.equal(err.socketPath, server!.path);
      assert.ok(err.cause instanceof QmpTimeoutError);
      return true;
    });
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 100 && elapsed < 2000, `elapsed ${elapsed}`);
    await server.waitFor(() => server!.peer.socket.destroyed || server!.peer.socket.readableEnded);
  });

  it('rejects with GuestAgentUnavailableError when the socket does not exist', async () => {
    const missing = path.join(os.tmpdir(), `no-such-qga-${process.pid}.sock`);
    await assert.rejects(GuestAgentClient.connect(missing), GuestAgentUnavailableError);
  });

  it('maps error replies to QmpError', async () => {
    server = await fakeAgent();
    client = await GuestAgentClient.connect(server.path);
    await assert.rejects(client.execute('guest-nope'), (err: unknown) => {
      assert.ok(err instanceof QmpError);
      assert.equal(err.errorClass, 'CommandNotFound');
      assert.equal(err.command, 'guest-nope');
      return true;
    });
    // an error reply keeps the channel in step
    assert.equal(client.outOfSync, false);
  });

  it('after a timeout, re-syncs before the next command and never takes the late reply as its answer', async () => {
    server = await fakeAgent({
      handle: (m) => {
        if (m.execute === 'guest-slow') return { delayMs: 250, reply: { return: 'LATE reply of guest-slow' } };
        if (m.execute === 'guest-get-time') return { reply: { return: 1234 } };
        return undefined;
      },
    });
    client = await GuestAgentClient.connect(server.path);
    await assert.rejects(client.execute('guest-slow', undefined, { timeoutMs: 60 }), (err: unknown) => {
      assert.ok(err instanceof QmpTimeoutError);
      assert.equal(err.command, 'guest-slow');
      assert.equal(err.timeoutMs, 60);
      return true;
    });
    assert.equal(client.outOfSync, true);
    // The agent is still busy with guest-slow; the late reply arrives while
    // the re-sync is in flight and must be discarded.
    assert.equal(await client.execute('guest-get-time'), 1234);
    assert.deepEqual(executes(server), ['guest-sync-delimited', 'guest-slow', 'guest-sync-delimited', 'guest-get-time']);
  });

  it('a late reply arriving while idle marks the channel out of sync', async () => {
    server = await fakeAgent({
      handle: (m) => (m.execute === 'guest-slow' ? { delayMs: 80, reply: { return: 'LATE' } } : undefined),
    });
    client = await GuestAgentClient.connect(server.path);
    await assert.rejects(client.execute('guest-slow', undefined, { timeoutMs: 20 }), QmpTimeoutError);
    await sleep(150); // late reply has arrived, nothing in flight
    assert.equal(client.outOfSync, true);
    assert.deepEqual(await client.execute('guest-ping'), {});
    assert.equal(executes(server).filter((e) => e === 'guest-sync-delimited').length, 2);
  });

  it('commands issued concurrently during a timeout are still each preceded by a sync when needed', async () => {
    server = await fakeAgent({
      handle: (m) => {
        if (m.execute === 'guest-slow') return { delayMs: 150, reply: { return: 'LATE' } };
        if (m.execute === 'guest-echo') return { reply: { return: m.arguments?.v } };
        return undefined;
      },
    });
    client = await GuestAgentClient.connect(server.path);
    const slow = client.execute('guest-slow', undefined, { timeoutMs: 40 });
    const a = client.execute('guest-echo', { v: 'a' });
    const b = client.execute('guest-echo', { v: 'b' });
    await assert.rejects(slow, QmpTimeoutError);
    assert.equal(await a, 'a');
    assert.equal(await b, 'b');
    assert.deepEqual(executes(server), ['guest-sync-delimited', 'guest-slow', 'guest-sync-delimited', 'guest-echo', 'guest-echo']);
  });

  it('a re-sync that times out rejects with GuestAgentUnavailableError and is retried next time', async () => {
    server = await fakeAgent({
      handle: (m) => (m.execute === 'guest-slow' ? { delayMs: 300, reply: { return: 'LATE' } } : undefined),
    });
    client = await GuestAgentClient.connect(server.path, { syncTimeoutMs: 100 });
    await assert.rejects(client.execute('guest-slow', undefined, { timeoutMs: 30 }), QmpTimeoutError);
    // agent still busy for ~270 ms: the sync (100 ms) fails
    await assert.rejects(client.execute('guest-ping'), GuestAgentUnavailableError);
    await sleep(250);
    assert.deepEqual(await client.execute('guest-ping'), {});
  });

  it('noReply commands resolve without waiting and force a re-sync', async () => {
    server = await fakeAgent();
    client = await GuestAgentClient.connect(server.path);
    assert.equal(await client.execute('guest-shutdown', undefined, { noReply: true }), undefined);
    assert.equal(client.outOfSync, true);
    assert.deepEqual(await client.execute('guest-ping'), {});
    assert.deepEqual(executes(server), ['guest-sync-delimited', 'guest-shutdown', 'guest-sync-delimited', 'guest-ping']);
  });

  it('noReply with replyGraceMs surfaces an error reply (e.g. disabled command)', async () => {
    server = await fakeAgent({
      handle: (m) =>
        m.execute === 'guest-suspend-disk'
          ? { reply: { error: { class: 'CommandNotFound', desc: 'Command guest-suspend-disk has been disabled' } } }
          : undefined,
    });
    client = await GuestAgentClient.connect(server.path);
    await assert.rejects(
      client.execute('guest-suspend-disk', undefined, { noReply: true, replyGraceMs: 300 }),
      (err: unknown) => err instanceof QmpError && /disabled/.test(err.desc),
    );
    assert.equal(client.outOfSync, false);
  });

  it('falls back to guest-sync when guest-sync-delimited is unknown', async () => {
    server = await fakeAgent({ supportsDelimited: false });
    client = await GuestAgentClient.connect(server.path);
    assert.deepEqual(executes(server), ['guest-sync-delimited', 'guest-sync']);
    assert.deepEqual(await client.execute('guest-ping'), {});
  });

  it('close() rejects a pending command', async () => {
    server = await fakeAgent({ handle: (m) => (m.execute === 'guest-hang' ? {} : undefined) });
    client = await GuestAgentClient.connect(server.path);
    const p = client.execute('guest-hang');
    const q = client.execute('guest-ping');
    await sleep(20);
    await client.close();
    await assert.rejects(p, QmpConnectionClosedError);
    await assert.rejects(q, QmpConnectionClosedError);
    assert.equal(client.isClosed, true);
  });
});
