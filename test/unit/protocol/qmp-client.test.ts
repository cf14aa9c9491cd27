import assert from 'node:assert/strict';
import * as path from 'node:path';
import * as os from 'node:os';
import {
  QmpConnectError,
  QmpConnectionClosedError,
  QmpError,
  QmpNegotiationError,
  QmpTimeoutError,
} from '../../../src/providers/qemu/protocol/errors';
import { QmpEvent, QmpMessage } from '../../../src/providers/qemu/protocol/message';
import { QmpClient } from '../../../src/providers/qemu/protocol/qmp-client';
import { FakePeer, FakeServer, GREETING, sleep } from './fake-server';

type Handler = (msg: QmpMessage, peer: FakePeer) => void;

/** A fake QEMU: greets, answers qmp_capabilities, delegates the rest. */
async function fakeQemu(handler: Handler = () => undefined): Promise<FakeServer> {
  return FakeServer.start({
    onConnect: (peer) => peer.send(GREETING),
    onMessage: (msg, peer) => {
      if (msg.execute === 'qmp_capabilities') peer.send({ return: {}, id: msg.id });
      else handler(msg, peer);
    },
  });
}

function ev(event: string, data?: unknown): QmpMessage {
  return { event, data, timestamp: { seconds: 1700000000, microseconds: 5 } };
}

describe('protocol/QmpClient', function () {
  this.timeout(10000);
  let server: FakeServer | undefined;
  let client: QmpClient | undefined;

  afterEach(async () => {
    await client?.close();
    await server?.close();
    client = undefined;
    server = undefined;
  });

  describe('connect', () => {
    it('reads the greeting and negotiates capabilities before resolving', async () => {
      server = await fakeQemu();
      client = await QmpClient.connect(server.path);
      assert.deepEqual(client.greeting, GREETING);
      assert.equal(server.received.length, 1);
      assert.equal(server.received[0].execute, 'qmp_capabilities');
      assert.equal(server.received[0].arguments, undefined, 'no capabilities (no oob) requested');
      assert.equal(client.isClosed, false);
    });

    it('handles a greeting that arrives byte by byte', async () => {
      server = await FakeServer.start({
        onConnect: (peer) => void peer.trickle(`${JSON.stringify(GREETING)}\r\n`, 0),
        onMessage: (msg, peer) => peer.send({ return: {}, id: msg.id }),
      });
      client = await QmpClient.connect(server.path);
      assert.equal(client.greeting.QMP.version.qemu.major, 7);
    });

    it('rejects with QmpConnectError (code ENOENT) for a missing socket', async () => {
      const missing = path.join(os.tmpdir(), `no-such-qmp-${process.pid}.sock`);
      await assert.rejects(QmpClient.connect(missing), (err: unknown) => {
        assert.ok(err instanceof QmpConnectError);
        assert.equal(err.code, 'ENOENT');
        assert.equal(err.socketPath, missing);
        return true;
      });
    });

    it('rejects with QmpNegotiationError when the first message is not a greeting', async () => {
      server = await FakeServer.start({ onConnect: (peer) => peer.send({ return: 1 }) });
      await assert.rejects(QmpClient.connect(server.path), QmpNegotiationError);
    });

    it('rejects with QmpNegotiationError when qmp_capabilities fails', async () => {
      server = await FakeServer.start({
        onConnect: (peer) => peer.send(GREETING),
        onMessage: (msg, peer) => peer.send({ error: { class: 'CommandNotFound', desc: 'nope' }, id: msg.id }),
      });
      await assert.rejects(QmpClient.connect(server.path), QmpNegotiationError);
    });

    it('times out when no greeting arrives', async () => {
      server = await FakeServer.start({});
      const t0 = Date.now();
      await assert.rejects(QmpClient.connect(server.path, { timeoutMs: 150 }), QmpTimeoutError);
      assert.ok(Date.now() - t0 < 2000);
    });

    it('rejects when the server hangs up before the greeting', async () => {
      server = await FakeServer.start({ onConnect: (peer) => peer.socket.end() });
      await assert.rejects(QmpClient.connect(server.path), QmpConnectionClosedError);
    });
  });

  describe('execute', () => {
    it('resolves with the return value and sends arguments and a unique id', async () => {
      server = await fakeQemu((msg, peer) => {
        if (msg.execute === 'query-status') peer.send({ return: { status: 'running', running: true }, id: msg.id });
        else peer.send({ return: msg.arguments, id: msg.id });
      });
      client = await QmpClient.connect(server.path);
      assert.deepEqual(await client.execute('query-status'), { status: 'running', running: true });
      assert.deepEqual(await client.execute('echo', { a: 1, s: 'x}"\n' }), { a: 1, s: 'x}"\n' });
      const ids = server.received.map((m) => m.id);
      assert.equal(new Set(ids).size, ids.length);
    });

    it('rejects an error reply with QmpError(errorClass, desc, command)', async () => {
      server = await fakeQemu((msg, peer) =>
        peer.send({ id: msg.id, error: { class: 'CommandNotFound', desc: 'The command nope has not been found' } }),
      );
      client = await QmpClient.connect(server.path);
      await assert.rejects(client.execute('nope'), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'CommandNotFound');
        assert.equal(err.desc, 'The command nope has not been found');
        assert.equal(err.command, 'nope');
        return true;
      });
    });

    it('keeps exactly one command in flight (FIFO), results in order', async () => {
      let outstanding = 0;
      let maxOutstanding = 0;
      const order: string[] = [];
      server = await fakeQemu((msg, peer) => {
        outstanding++;
        maxOutstanding = Math.max(maxOutstanding, outstanding);
        order.push(msg.arguments?.n);
        setTimeout(() => {
          outstanding--;
          peer.send({ return: msg.arguments?.n, id: msg.id });
        }, 20);
      });
      client = await QmpClient.connect(server.path);
      const results = await Promise.all(['a', 'b', 'c', 'd'].map((n) => client!.execute('echo', { n })));
      assert.deepEqual(results, ['a', 'b', 'c', 'd']);
      assert.deepEqual(order, ['a', 'b', 'c', 'd']);
      assert.equal(maxOutstanding, 1);
    });

    it('a failing command does not block the queue', async () => {
      server = await fakeQemu((msg, peer) => {
        if (msg.execute === 'bad') peer.send({ id: msg.id, error: { class: 'GenericError', desc: 'bad' } });
        else peer.send({ return: 'ok', id: msg.id });
      });
      client = await QmpClient.connect(server.path);
      const [a, b, c] = await Promise.allSettled([client.execute('x'), client.execute('bad'), client.execute('y')]);
      assert.equal(a.status, 'fulfilled');
      assert.equal(b.status, 'rejected');
      assert.equal(c.status, 'fulfilled');
    });

    it('times out with QmpTimeoutError naming the command and the ms; a late reply is not taken for the next command', async () => {
      server = await fakeQemu((msg, peer) => {
        if (msg.execute === 'hang') {
          setTimeout(() => peer.send({ return: 'LATE', id: msg.id }), 150);
        } else {
          setTimeout(() => peer.send({ return: 'fresh', id: msg.id }), 250);
        }
      });
      client = await QmpClient.connect(server.path);
      const stale: QmpMessage[] = [];
      (client as unknown as { conn: { on: (e: string, f: (m: QmpMessage) => void) => void } }).conn.on('stale', (m) => stale.push(m));
      await assert.rejects(client.execute('hang', undefined, { timeoutMs: 50 }), (err: unknown) => {
        assert.ok(err instanceof QmpTimeoutError);
        assert.equal(err.command, 'hang');
        assert.equal(err.timeoutMs, 50);
        assert.equal(err.phase, 'sent');
        assert.match(err.message, /hang.*50 ms/);
        return true;
      });
      assert.equal(await client.execute('next'), 'fresh');
      assert.deepEqual(
        stale.map((m) => m.return),
        ['LATE'],
      );
    });

    it('a command that times out while queued is never sent', async () => {
      server = await fakeQemu((msg, peer) => setTimeout(() => peer.send({ return: msg.execute, id: msg.id }), 150));
      client = await QmpClient.connect(server.path);
      const first = client.execute('slow');
      const second = client.execute('queued', undefined, { timeoutMs: 30 });
      await assert.rejects(second, (err: unknown) => err instanceof QmpTimeoutError && err.phase === 'queued');
      assert.equal(await first, 'slow');
      await sleep(20);
      assert.deepEqual(
        server.received.map((m) => m.execute),
        ['qmp_capabilities', 'slow'],
      );
    });

    it('uses the default timeout from connect()', async () => {
      server = await fakeQemu(() => undefined);
      client = await QmpClient.connect(server.path, { timeoutMs: 60 });
      await assert.rejects(client.execute('hang'), (err: unknown) => err instanceof QmpTimeoutError && err.timeoutMs === 60);
    });
  });

  describe('events', () => {
    it('emits events as "event" and by name, also while a command is pending', async () => {
      server = await fakeQemu((msg, peer) => {
        // like QEMU: the STOP event precedes the reply of `stop`
        peer.send(ev('STOP'));
        setTimeout(() => peer.send({ return: {}, id: msg.id }), 30);
      });
      client = await QmpClient.connect(server.path);
      const all: QmpEvent[] = [];
      const named: QmpEvent[] = [];
      client.on('event', (e: QmpEvent) => all.push(e));
      client.on('STOP', (e: QmpEvent) => named.push(e));
      const waiting = client.waitEvent('STOP');
      await client.execute('stop');
      const got = await waiting;
      assert.equal(got.event, 'STOP');
      assert.deepEqual(got.timestamp, { seconds: 1700000000, microseconds: 5 });
      assert.deepEqual(got.data, {});
      assert.equal(all.length, 1);
      assert.equal(named.length, 1);
    });

    it('waitEvent with a predicate skips non-matching events', async () => {
      server = await fakeQemu((msg, peer) => {
        peer.send(ev('JOB_STATUS_CHANGE', { id: 'other', status: 'running' }));
        peer.send(ev('JOB_STATUS_CHANGE', { id: 'j1', status: 'running' }));
        peer.send(ev('JOB_STATUS_CHANGE', { id: 'j1', status: 'concluded' }));
        peer.send({ return: {}, id: msg.id });
      });
      client = await QmpClient.connect(server.path);
      const done = client.waitEvent('JOB_STATUS_CHANGE', (d) => d.id === 'j1' && d.status === 'concluded', 2000);
      await client.execute('backup');
      assert.deepEqual((await done).data, { id: 'j1', status: 'concluded' });
    });

    it('waitEvent({since}) finds an event that arrived before the reply, after the call was awaited', async () => {
      server = await fakeQemu((msg, peer) => {
        peer.send(ev('RESUME'));
        peer.send({ return: {}, id: msg.id });
      });
      client = await QmpClient.connect(server.path);
      const mark = client.eventMark();
      await client.execute('cont');
      const e = await client.waitEvent('RESUME', undefined, 100, { since: mark });
      assert.equal(e.event, 'RESUME');
      // without a mark the already-received event is not reported
      await assert.rejects(client.waitEvent('RESUME', undefined, 50), QmpTimeoutError);
    });

    it('waitEvent times out with QmpTimeoutError naming the event', async () => {
      server = await fakeQemu();
      client = await QmpClient.connect(server.path);
      await assert.rejects(client.waitEvent('SHUTDOWN', undefined, 40), (err: unknown) => {
        assert.ok(err instanceof QmpTimeoutError);
        assert.equal(err.command, 'event SHUTDOWN');
        assert.equal(err.timeoutMs, 40);
        return true;
      });
    });

    it('events split across chunks and interleaved with replies are all delivered', async () => {
      server = await fakeQemu((msg, peer) => {
        const text = `${JSON.stringify(ev('BLOCK_JOB_READY', { device: 'j}{' }))}\r\n${JSON.stringify({ return: 42, id: msg.id })}\r\n`;
        void peer.trickle(text, 0);
      });
      client = await QmpClient.connect(server.path);
      const ready = client.waitEvent('BLOCK_JOB_READY', undefined, 5000);
      assert.equal(await client.execute('x'), 42);
      assert.deepEqual((await ready).data, { device: 'j}{' });
    });
  });

  describe('close', () => {
    it('close() rejects pending and queued commands with QmpConnectionClosedError', async () => {
      server = await fakeQemu(() => undefined);
      client = await QmpClient.connect(server.path);
      const p1 = client.execute('hang1');
      const p2 = client.execute('hang2');
      const w = client.waitEvent('SHUTDOWN', undefined, 0);
      await sleep(20);
      await client.close();
      for (const [p, name] of [
        [p1, 'hang1'],
        [p2, 'hang2'],
      ] as const) {
        await assert.rejects(p, (err: unknown) => {
          assert.ok(err instanceof QmpConnectionClosedError);
          assert.equal(err.command, name);
          assert.match(err.message, /closed by client/);
          return true;
        });
      }
      await assert.rejects(w, QmpConnectionClosedError);
      assert.equal(client.isClosed, true);
      await client.closed;
      await assert.rejects(client.execute('after'), QmpConnectionClosedError);
    });

    it('the peer hanging up rejects pending commands and resolves `closed`', async () => {
      server = await fakeQemu((msg, peer) => {
        if (msg.execute === 'quit') setTimeout(() => peer.socket.destroy(), 20);
      });
      client = await QmpClient.connect(server.path);
      let closeEvents = 0;
      client.on('close', () => closeEvents++);
      const p = client.execute('quit');
      const q = client.execute('queued');
      await assert.rejects(p, (err: unknown) => err instanceof QmpConnectionClosedError && /by peer/.test(err.message));
      await assert.rejects(q, QmpConnectionClosedError);
      await client.closed;
      assert.equal(closeEvents, 1);
    });

    it('close() is idempotent', async () => {
      server = await fakeQemu();
      client = await QmpClient.connect(server.path);
      await Promise.all([client.close(), client.close()]);
      await client.close();
    });
  });
});
