import assert from 'node:assert/strict';
import {
  DecodedItem,
  MessageDecoder,
  isEvent,
  isGreeting,
  isResponse,
  serializeCommand,
  toEvent,
} from '../../../src/providers/qemu/protocol/message';
import { QmpParseError } from '../../../src/providers/qemu/protocol/errors';

function messages(items: DecodedItem[]): unknown[] {
  return items.filter((i) => i.kind === 'message').map((i) => (i as { message: unknown }).message);
}

const tricky = {
  return: {
    text: 'braces } { ] [ and "quotes" and \\ backslash \\" and\nnewline\r\n\ttab',
    unicode: 'é ü 日本語 😀',
    nested: [{ a: [1, 2, { b: '}' }] }, [], {}],
    empty: '',
    trailingBackslash: 'x\\',
  },
  id: 'c1',
};

describe('protocol/message: MessageDecoder', () => {
  it('decodes one object terminated by \\r\\n (QEMU) or \\n (QGA)', () => {
    const d = new MessageDecoder();
    assert.deepEqual(messages(d.push('{"return": {}}\r\n')), [{ return: {} }]);
    assert.deepEqual(messages(d.push('{"return": 1}\n')), [{ return: 1 }]);
    assert.equal(d.discardedBytes, 0);
  });

  it('does not need newlines at all', () => {
    const d = new MessageDecoder();
    assert.deepEqual(messages(d.push('{"a":1}{"b":2}  {"c":3}')), [{ a: 1 }, { b: 2 }, { c: 3 }]);
  });

  it('decodes several objects in one chunk', () => {
    const d = new MessageDecoder();
    const chunk = '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}\r\n{"return": {}, "id": "s"}\r\n{"return": 5}\n';
    assert.deepEqual(messages(d.push(chunk)), [
      { timestamp: { seconds: 1, microseconds: 2 }, event: 'STOP' },
      { return: {}, id: 's' },
      { return: 5 },
    ]);
  });

  it('reassembles an object split at every possible byte position (strings with braces, escapes, UTF-8)', () => {
    const bytes = Buffer.from(`${JSON.stringify(tricky)}\r\n${JSON.stringify({ return: 2 })}\n`, 'utf8');
    for (let cut = 0; cut <= bytes.length; cut++) {
      const d = new MessageDecoder();
      const got = [...messages(d.push(bytes.subarray(0, cut))), ...messages(d.push(bytes.subarray(cut)))];
      assert.deepEqual(got, [tricky, { return: 2 }], `cut at ${cut}`);
    }
  });

  it('reassembles an object delivered one byte at a time', () => {
    const bytes = Buffer.from(JSON.stringify(tricky), 'utf8');
    const d = new MessageDecoder();
    const got: unknown[] = [];
    for (let i = 0; i < bytes.length; i++) got.push(...messages(d.push(bytes.subarray(i, i + 1))));
    assert.deepEqual(got, [tricky]);
    assert.equal(d.midMessage, false);
  });

  it('keeps copies of partial chunks (caller may reuse its buffer)', () => {
    const d = new MessageDecoder();
    const buf = Buffer.from('{"return": "abc');
    d.push(buf);
    buf.fill(0x20);
    assert.deepEqual(messages(d.push('"}')), [{ return: 'abc' }]);
  });

  it('reports a 0xFF sentinel as a delimiter and decodes what follows (guest-sync-delimited reply)', () => {
    const d = new MessageDecoder();
    const items = d.push(Buffer.concat([Buffer.from([0xff]), Buffer.from('{"return": 123}\n')]));
    assert.deepEqual(items, [{ kind: 'delimiter' }, { kind: 'message', message: { return: 123 } }]);
  });

  it('drops a partial object cut short by 0xFF (stale bytes before the sentinel)', () => {
    const d = new MessageDecoder();
    assert.deepEqual(d.push('{"return": {"stale": "x }'), []);
    assert.equal(d.midMessage, true);
    const items = d.push(Buffer.concat([Buffer.from([0xff]), Buffer.from('{"return": 7}')]));
    assert.deepEqual(items, [{ kind: 'delimiter' }, { kind: 'message', message: { return: 7 } }]);
    assert.ok(d.discardedBytes >= 25);
  });

  it('treats 0xFF inside a string as a reset too (cannot be valid UTF-8)', () => {
    const d = new MessageDecoder();
    const items = d.push(Buffer.concat([Buffer.from('{"return": "ab'), Buffer.from([0xff, 0xff]), Buffer.from('{"return": 1}')]));
    assert.deepEqual(items, [{ kind: 'delimiter' }, { kind: 'delimiter' }, { kind: 'message', message: { return: 1 } }]);
  });

  it('skips stray text between objects and counts it', () => {
    const d = new MessageDecoder();
    assert.deepEqual(messages(d.push('tail of old reply"]}\n{"return": 1}')), [{ return: 1 }]);
    assert.equal(d.discardedBytes, 'tailofoldreply"]}'.length, 'whitespace is not counted');
  });

  it('reports malformed JSON as invalid and continues', () => {
    const d = new MessageDecoder();
    const items = d.push('{"a": tru}\n{"b": 1}');
    assert.equal(items.length, 2);
    assert.equal(items[0].kind, 'invalid');
    assert.ok((items[0] as { error: Error }).error instanceof QmpParseError);
    assert.deepEqual(items[1], { kind: 'message', message: { b: 1 } });
  });

  it('reports invalid UTF-8 as invalid', () => {
    const d = new MessageDecoder();
    const items = d.push(Buffer.concat([Buffer.from('{"a": "'), Buffer.from([0xc3, 0x28]), Buffer.from('"}')]));
    assert.equal(items.length, 1);
    assert.equal(items[0].kind, 'invalid');
    assert.match((items[0] as { error: Error }).error.message, /UTF-8/);
  });

  it('drops a message larger than the limit', () => {
    const d = new MessageDecoder(16);
    const items = d.push('{"return": "0123456789abcdef');
    assert.equal(items.length, 1);
    assert.equal(items[0].kind, 'invalid');
    assert.equal(d.midMessage, false);
    assert.deepEqual(messages(d.push('{"a":1}')), [{ a: 1 }]);
  });

  it('handles a string ending in an escaped backslash followed by a brace', () => {
    const d = new MessageDecoder();
    assert.deepEqual(messages(d.push('{"a": "x\\\\"}{"b": "\\"}"}')), [{ a: 'x\\' }, { b: '"}' }]);
  });

  it('handles large messages split in many chunks', () => {
    const big = { return: Array.from({ length: 5000 }, (_, i) => ({ 'node-name': `n${i}`, file: `json:{"x": "${i}}"}` })) };
    const bytes = Buffer.from(`${JSON.stringify(big)}\r\n`);
    const d = new MessageDecoder();
    const got: unknown[] = [];
    for (let i = 0; i < bytes.length; i += 997) got.push(...messages(d.push(bytes.subarray(i, i + 997))));
    assert.deepEqual(got, [big]);
  });
});

describe('protocol/message: serializeCommand and helpers', () => {
  it('writes one line of JSON with execute, arguments and id', () => {
    const buf = serializeCommand({ execute: 'blockdev-add', arguments: { driver: 'null-co', 'node-name': 'a\nb' }, id: 3 });
    const text = buf.toString('utf8');
    assert.ok(text.endsWith('\n'));
    assert.equal(text.indexOf('\n'), text.length - 1, 'single line');
    assert.deepEqual(JSON.parse(text), { execute: 'blockdev-add', arguments: { driver: 'null-co', 'node-name': 'a\nb' }, id: 3 });
  });

  it('omits absent arguments and id', () => {
    assert.equal(serializeCommand({ execute: 'query-status' }).toString(), '{"execute":"query-status"}\n');
  });

  it('encodes non-ASCII as UTF-8 and round-trips through the decoder', () => {
    const cmd = { execute: 'guest-file-write', arguments: { 'buf-b64': 'é😀' } };
    const d = new MessageDecoder();
    assert.deepEqual(messages(d.push(serializeCommand(cmd))), [cmd]);
  });

  it('rejects an empty command name or non-object arguments', () => {
    assert.throws(() => serializeCommand({ execute: '' }), TypeError);
    assert.throws(() => serializeCommand({ execute: 'x', arguments: [] as unknown as Record<string, unknown> }), TypeError);
  });

  it('classifies messages', () => {
    assert.equal(isEvent({ event: 'STOP', timestamp: {} }), true);
    assert.equal(isResponse({ return: {} }), true);
    assert.equal(isResponse({ error: { class: 'GenericError', desc: 'x' } }), true);
    assert.equal(isResponse({ QMP: {} }), false);
    assert.equal(isGreeting({ QMP: { version: {}, capabilities: [] } }), true);
    assert.deepEqual(toEvent({ event: 'RESUME', timestamp: { seconds: 1, microseconds: 2 } }), {
      event: 'RESUME',
      data: {},
      timestamp: { seconds: 1, microseconds: 2 },
    });
  });
});
