import assert from 'node:assert/strict';
import { QmpConnectionClosedError, QmpParseError, QmpTimeoutError } from '../../../src/providers/qemu/protocol/errors';
import { QmpEvent, QmpMessage } from '../../../src/providers/qemu/protocol/message';
import { QmpConnection } from '../../../src/providers/qemu/protocol/protocol';
import { FakeServer, sleep } from './fake-server';

describe('protocol/QmpConnection', function () {
  this.timeout(10000);
  let server: FakeServer | undefined;
  let conn: QmpConnection | undefined;

  afterEach(async () => {
    await conn?.close();
    await server?.close();
    conn = undefined;
    server = undefined;
  });

  it('writes the prefix bytes immediately before the command', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => peer.send({ return: 1 }) });
    conn = new QmpConnection();
    await conn.connect(server.path);
    await conn.request({ execute: 'x' }, { timeoutMs: 1000, prefix: Buffer.from([0xff]) });
    assert.deepEqual(server.peer.rawBytes, Buffer.concat([Buffer.from([0xff]), Buffer.from('{"execute":"x"}\n')]));
  });

  it('emits messages that arrive with nothing in flight as unsolicited, events as event', async () => {
    server = await FakeServer.start({});
    conn = new QmpConnection();
    const unsolicited: QmpMessage[] = [];
    const events: QmpEvent[] = [];
    conn.on('unsolicited', (m: QmpMessage) => unsolicited.push(m));
    conn.on('event', (e: QmpEvent) => events.push(e));
    await conn.connect(server.path);
    server.peer.send({ return: 'late' }, { event: 'X', data: { a: 1 }, timestamp: { seconds: 1, microseconds: 2 } });
    await server.waitFor(() => unsolicited.length === 1 && events.length === 1);
    assert.deepEqual(unsolicited, [{ return: 'late' }]);
    assert.deepEqual(events, [{ event: 'X', data: { a: 1 }, timestamp: { seconds: 1, microseconds: 2 } }]);
  });

  it('passes replies refused by `accept` to "stale" and keeps waiting', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => peer.send({ return: 'old' }, { return: 'mine' }) });
    conn = new QmpConnection();
    const stale: QmpMessage[] = [];
    conn.on('stale', (m: QmpMessage) => stale.push(m));
    await conn.connect(server.path);
    const reply = await conn.request({ execute: 'x' }, { timeoutMs: 1000, accept: (m) => m.return === 'mine' });
    assert.deepEqual(reply, { return: 'mine' });
    assert.deepEqual(stale, [{ return: 'old' }]);
  });

  it('by default refuses a reply whose id differs from the command id', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => peer.send({ return: 'other', id: 'zzz' }, { return: 'mine', id: m.id }) });
    conn = new QmpConnection();
    await conn.connect(server.path);
    assert.deepEqual(await conn.request({ execute: 'x', id: 'a1' }, { timeoutMs: 1000 }), { return: 'mine', id: 'a1' });
  });

  it('noReply resolves with undefined once written; the next command follows', async () => {
    server = await FakeServer.start({
      onMessage: (m, peer) => {
        if (m.execute !== 'guest-shutdown') peer.send({ return: m.execute });
      },
    });
    conn = new QmpConnection();
    await conn.connect(server.path);
    assert.equal(await conn.request({ execute: 'guest-shutdown' }, { timeoutMs: 1000, noReply: true }), undefined);
    assert.deepEqual(await conn.request({ execute: 'ping' }, { timeoutMs: 1000 }), { return: 'ping' });
  });

  it('noReply with replyGraceMs returns an error reply that arrives within the grace period', async () => {
    server = await FakeServer.start({
      onMessage: (m, peer) => setTimeout(() => peer.send({ error: { class: 'CommandNotFound', desc: 'disabled' } }), 20),
    });
    conn = new QmpConnection();
    await conn.connect(server.path);
    const reply = await conn.request({ execute: 'guest-shutdown' }, { timeoutMs: 1000, noReply: true, replyGraceMs: 300 });
    assert.deepEqual(reply, { error: { class: 'CommandNotFound', desc: 'disabled' } });
  });

  it('reports undecodable input as "invalid" and keeps going', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => peer.send('{"oops": }\r\n', { return: 1 }) });
    conn = new QmpConnection();
    const invalid: QmpParseError[] = [];
    conn.on('invalid', (e: QmpParseError) => invalid.push(e));
    await conn.connect(server.path);
    assert.deepEqual(await conn.request({ execute: 'x' }, { timeoutMs: 1000 }), { return: 1 });
    assert.equal(invalid.length, 1);
    assert.ok(invalid[0] instanceof QmpParseError);
  });

  it('rejects a command that cannot be serialized without blocking the queue', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => peer.send({ return: 1 }) });
    conn = new QmpConnection();
    await conn.connect(server.path);
    const bad = conn.request({ execute: 'x', arguments: { n: 1n } as unknown as Record<string, unknown> }, { timeoutMs: 1000 });
    const good = conn.request({ execute: 'y' }, { timeoutMs: 1000 });
    await assert.rejects(bad, TypeError);
    assert.deepEqual(await good, { return: 1 });
  });

  it('timeout releases the slot for the next command', async () => {
    server = await FakeServer.start({ onMessage: (m, peer) => m.execute === 'b' && peer.send({ return: 'b' }) });
    conn = new QmpConnection();
    await conn.connect(server.path);
    const a = conn.request({ execute: 'a' }, { timeoutMs: 30 });
    const b = conn.request({ execute: 'b' }, { timeoutMs: 1000 });
    await assert.rejects(a, QmpTimeoutError);
    assert.deepEqual(await b, { return: 'b' });
    assert.equal(conn.pendingCount, 0);
  });

  it('request before connect or after close rejects', async () => {
    conn = new QmpConnection();
    await assert.rejects(conn.request({ execute: 'x' }, { timeoutMs: 10 }), QmpConnectionClosedError);
    await conn.close();
    await assert.rejects(conn.request({ execute: 'x' }, { timeoutMs: 10 }), QmpConnectionClosedError);
  });

  it('rejects everything pending when the peer closes mid-message', async () => {
    server = await FakeServer.start({
      onMessage: (m, peer) => {
        peer.send('{"return": {"partial": ');
        setTimeout(() => peer.socket.destroy(), 10);
      },
    });
    conn = new QmpConnection();
    await conn.connect(server.path);
    const a = conn.request({ execute: 'a' }, { timeoutMs: 1000 });
    const b = conn.request({ execute: 'b' }, { timeoutMs: 1000 });
    await assert.rejects(a, QmpConnectionClosedError);
    await assert.rejects(b, QmpConnectionClosedError);
    await conn.closed;
    await sleep(1);
    assert.equal(conn.isClosed, true);
  });
});
