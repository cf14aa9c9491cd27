// A read-only NBD client (the NBD protocol's fixed newstyle handshake, then READ and BLOCK_STATUS
// requests), for the pulls out of the view QEMU exports (src/providers/qemu/pull-stream.ts: a full
// by the export's `base:allocation` context, an incremental by its `qemu:dirty-bitmap:` context),
// then the clusters to copy, straight into the buffers the image writer takes. No program is
// started for it (a qemu-nbd or qemu-img per disk before), and the new file is hashed as it is
// written instead of read again afterwards.
//
// Only what that needs: NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT (one context),
// NBD_OPT_GO, NBD_CMD_READ (holes as OFFSET_HOLE chunks; never NBD_CMD_FLAG_DF, see
// pull-stream.ts for why), NBD_CMD_BLOCK_STATUS,
// NBD_CMD_DISC. Requests are pipelined; every request is answered or failed when the connection
// ends. The protocol is NetworkBlockDevice's doc/proto.md; QEMU's server (nbd/server.c) is the one
// read here.
import * as net from 'node:net';
import { settledWithin } from '../util/deadline';
import { borrow, giveBack } from '../util/buffer-pool';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const OPT_REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_SET_META_CONTEXT = 10;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const INFO_EXPORT = 0;
const CMD_READ = 0;
const CMD_DISC = 2;
const CMD_BLOCK_STATUS = 7;
const REPLY_FLAG_DONE = 1;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_BLOCK_STATUS = 5;
/** error chunks have bit 15 of the type set */
const REPLY_TYPE_ERROR_BIT = 1 << 15;

/** The longest read asked of a server (QEMU's own limit is 32 MiB). */
export const MAX_READ = 4 << 20;

/** A piece of a read's answer: data, or a hole that reads as zeros. */
export type ReadChunk = { offset: number; data: Buffer } | { offset: number; hole: number };

/** A run of the export as one metadata context describes it (`flags`: for a dirty bitmap, 1 = dirty). */
export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

export class NbdError extends Error {}

/** The protocol's error values (doc/proto.md "Error values"), as their errno names. */
const ERRORS: Record<number, string> = {
  1: 'EPERM, operation not permitted',
  5: 'EIO, input/output error',
  12: 'ENOMEM',
  22: 'EINVAL',
  28: 'ENOSPC',
  75: 'EOVERFLOW',
  95: 'ENOTSUP',
  108: 'ESHUTDOWN, the server is shutting down',
};
const errorName = (code: number) => ERRORS[code] ?? `error ${code}`;

interface Pending {
  kind: 'read' | 'status';
  offset: number;
  length: number;
  /** a block status request's answer */
  extents?: Extent[];
  /** where the data goes (a buffer of the caller's, reused from read to read), else new buffers */
  into: Buffer | undefined;
  chunks: ReadChunk[];
  /** when the answer is late (performance.now()) */
  deadline: number;
  resolve: (c: ReadChunk[] | Extent[]) => void;
  reject: (e: Error) => void;
}

export interface NbdConnectOptions {
  socket: string;
  exportName: string;
  /** ask for structured replies (holes without their zeros); default true */
  sparse?: boolean;
  /**
   * the one metadata context block status reports (e.g. `qemu:dirty-bitmap:NAME`); needs
   * structured replies, and the connection fails when the server does not offer it
   */
  metaContext?: string;
  /** bound on the handshake (default 10 s) */
  timeoutMs?: number;
  /**
   * bound on each read's answer (default 60 s): a server that stops answering (its QEMU stopped
   * with SIGSTOP, or hung) ends the connection and fails every read, instead of holding the check,
   * and with it the copy stage, for ever
   */
  replyTimeoutMs?: number;
}

/** the scratch buffer's size: what one socket read takes when nothing awaits the bytes */
const SCRATCH = 64 << 10;

/**
 * Bytes arriving on the socket, taken off the front as the protocol asks. The socket reads
 * (`onread`) straight into the buffer the protocol waits to fill, else into one buffer of ours,
 * copied out. With the default 'data' events (64 KiB pieces, each a new buffer, copied again) the
 * client read a qemu-nbd export at 0.7 GB/s, where qemu-img reads it at 2.5.
 */
class Inbox {
  /**
   * Bytes that arrived before anything awaited them, copied out of the scratch buffer. A piece of
   * 4 KiB or more is a buffer of the pool (`base`, given back once read): the socket may read the
   * next reply's head and the start of its data into the scratch while the last reply is being
   * answered (4 times per 32 MiB disk pulled, measured), and a new 64 KiB buffer each time is
   * garbage that counts in Node-RED's peak RSS (see util/buffer-pool.ts).
   */
  private spill: { buf: Buffer; base?: Buffer }[] = [];
  private spilled = 0;
  private target: { buf: Buffer; filled: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;

  /** where the socket reads when nothing awaits the bytes (pooled: util/buffer-pool.ts; given back once the socket is closed) */
  readonly scratch = borrow(SCRATCH);

  /**
   * Where the socket's next read goes: the rest of the awaited buffer (a reply's 16-byte head, then
   * its data, each read whole and never copied), or, when nothing is awaited, a buffer of ours.
   */
  readInto(): Buffer {
    const t = this.target;
    return t ? t.buf.subarray(t.filled) : this.scratch;
  }

  /** `n` bytes were read into `into` (a buffer readInto gave) */
  received(into: Uint8Array, n: number): void {
    const t = this.target;
    if (t && into.buffer === t.buf.buffer && into.byteOffset === t.buf.byteOffset + t.filled) {
      t.filled += n;
      if (t.filled === t.buf.length) {
        this.target = undefined;
        t.resolve(t.buf);
      }
      return;
    }
    this.push(Buffer.from(into.buffer, into.byteOffset, n));
  }

  /** `src` is reused by the socket once this returns: what is kept is copied */
  push(src: Buffer): void {
    let off = 0;
    while (off < src.length) {
      const t = this.target;
      if (!t) {
        const rest = src.length - off;
        if (rest >= 4096) {
          const base = borrow(SCRATCH);
          const buf = base.subarray(0, rest);
          src.copy(buf, 0, off);
          this.spill.push({ buf, base });
        } else this.spill.push({ buf: Buffer.from(src.subarray(off)) });
        this.spilled += rest;
        return;
      }
      const k = Math.min(src.length - off, t.buf.length - t.filled);
      src.copy(t.buf, t.filled, off, off + k);
      t.filled += k;
      off += k;
      if (t.filled === t.buf.length) {
        this.target = undefined;
        t.resolve(t.buf);
      }
    }
  }
  end(err: Error): void {
    this.ended ??= err;
    const t = this.target;
    this.target = undefined;
    t?.reject(this.ended);
  }
  /** exactly `into.length` bytes, written into `into` */
  takeInto(into: Buffer): Promise<Buffer> {
    return this.fill(into);
  }

  /** exactly n bytes (never written to by us afterwards: the caller may keep them) */
  take(n: number): Promise<Buffer> {
    return this.fill(Buffer.allocUnsafe(n));
  }

  /** The spill's pooled buffers go back (the socket is closed: nothing will read them). */
  release(): void {
    for (const x of this.spill.splice(0)) if (x.base) giveBack(x.base);
    this.spilled = 0;
  }

  private fill(buf: Buffer): Promise<Buffer> {
    const n = buf.length;
    let filled = 0;
    while (filled < n && this.spill.length) {
      const x = this.spill[0];
      const k = Math.min(x.buf.length, n - filled);
      x.buf.copy(buf, filled, 0, k);
      filled += k;
      this.spilled -= k;
      if (k < x.buf.length) x.buf = x.buf.subarray(k);
      else {
        this.spill.shift();
        if (x.base) giveBack(x.base);
      }
    }
    if (filled === n) return Promise.resolve(buf);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => (this.target = { buf, filled, resolve, reject }));
  }
}

/** A 64-bit big-endian field from a safe integer (handles, offsets: below 2^53). */
function writeU64(b: Buffer, v: number, at: number): void {
  b.writeUInt32BE(Math.floor(v / 0x100000000), at);
  b.writeUInt32BE(v >>> 0, at + 4);
}

/** A 64-bit big-endian field as a number; above 2^53 it is not one of ours (handles, offsets). */
function readU64(b: Buffer, at: number): number {
  const hi = b.readUInt32BE(at);
  if (hi >= 0x200000) throw new NbdError(`NBD server sent a 64-bit field of 0x${hi.toString(16)}... (beyond 2^53)`);
  return hi * 0x100000000 + b.readUInt32BE(at + 4);
}

/** One connection to one export. */
export class NbdClient {
  private handles = 0;
  /** requests in the order they were sent (a Map keeps it): the first is the oldest */
  private readonly pending = new Map<number, Pending>();
  /** one look a while at the oldest request's deadline, instead of a timer per request */
  private watch: NodeJS.Timeout | undefined;
  /** reply heads are read into these, one reply at a time (nothing allocated per reply) */
  private readonly heads = {
    magic: Buffer.allocUnsafeSlow(4),
    simple: Buffer.allocUnsafeSlow(12),
    chunk: Buffer.allocUnsafeSlow(16),
    offset: Buffer.allocUnsafeSlow(8),
  };
  private failed: Error | undefined;

  private constructor(
    private readonly sock: net.Socket,
    private readonly inbox: Inbox,
    /** the export's size in bytes */
    readonly size: number,
    /** structured replies were agreed: holes come as holes */
    readonly sparse: boolean,
    private readonly replyTimeoutMs: number,
    /** the metadata context's id on this connection, when one was agreed */
    private readonly contextId: number | undefined,
  ) {}

  static async connect(o: NbdConnectOptions): Promise<NbdClient> {
    const inbox = new Inbox();
    const sock = net.connect({
      path: o.socket,
      onread: {
        buffer: () => inbox.readInto(),
        callback: (n: number, b: Uint8Array) => {
          inbox.received(b, n);
          return true;
        },
      },
    });
    sock.on('error', (err) => inbox.end(new NbdError(`NBD connection to ${o.socket}: ${err.message}`)));
    sock.on('close', () => {
      inbox.end(new NbdError(`NBD server at ${o.socket} closed the connection`));
      // no read lands in it any more: what was kept of it was copied out
      giveBack(inbox.scratch);
      inbox.release();
    });
    const timer = setTimeout(() => sock.destroy(new Error(`no handshake within ${o.timeoutMs ?? 10_000} ms`)), o.timeoutMs ?? 10_000);
    try {
      const { size, sparse, contextId } = await handshake(sock, inbox, o.exportName, o.sparse !== false || !!o.metaContext, o.metaContext);
      // reads are never asked whole (NBD_CMD_FLAG_DF): see pull-stream.ts for what QEMU 7.2 then answers
      const client = new NbdClient(sock, inbox, size, sparse, o.replyTimeoutMs ?? 60_000, contextId);
      void client.receive();
      return client;
    } catch (err) {
      sock.destroy();
      throw err instanceof NbdError ? err : new NbdError((err as Error).message);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The bytes [offset, offset + length) of the export, as the server sends them (length <=
   * MAX_READ). With `into` (at least `length` bytes), data chunks are written there, at their place
   * in the range, and the chunks returned are views of it: valid until `into` is used again.
   */
  read(offset: number, length: number, into?: Buffer): Promise<ReadChunk[]> {
    if (this.failed) return Promise.reject(this.failed);
    if (length <= 0 || length > MAX_READ || offset < 0 || offset + length > this.size)
      return Promise.reject(new NbdError(`read of ${length} bytes at ${offset} is outside the export (${this.size} bytes)`));
    if (into && into.length < length) return Promise.reject(new RangeError(`a buffer of ${into.length} bytes for a read of ${length}`));
    return this.send<ReadChunk[]>({ kind: 'read', offset, length, into, chunks: [] }, CMD_READ, 0);
  }

  /**
   * What the agreed metadata context says of [offset, offset + length) (length < 4 GiB): extents
   * from `offset` on, covering at least a first part of the range (the server may stop early; ask
   * again from where its answer ends).
   */
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.contextId === undefined) return Promise.reject(new NbdError('block status asked of a connection without a metadata context'));
    if (length <= 0 || length > 0xffffffff || offset < 0 || offset + length > this.size)
      return Promise.reject(new NbdError(`block status of ${length} bytes at ${offset} is outside the export (${this.size} bytes)`));
    return this.send<Extent[]>({ kind: 'status', offset, length, into: undefined, chunks: [], extents: [] }, CMD_BLOCK_STATUS, 0);
  }

  /**
   * A request allocates little: a head from Node's buffer pool, a number for a handle, no timer of
   * its own (one watch per connection, watchReplies). Not a measured saving by itself: 40,000 block
   * status requests on one connection grew a process by 36-42 MiB either way (V8's young
   * generation growing); a copy asks a few per MiB.
   */
  private send<T>(p: Omit<Pending, 'resolve' | 'reject' | 'deadline'>, cmd: number, flags: number): Promise<T> {
    const handle = ++this.handles;
    const req = Buffer.allocUnsafe(28); // every byte written below
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(flags, 4); // command flags
    req.writeUInt16BE(cmd, 6);
    writeU64(req, handle, 8);
    writeU64(req, p.offset, 16);
    req.writeUInt32BE(p.length, 24);
    return new Promise<T>((resolve, reject) => {
      this.pending.set(handle, { ...p, deadline: performance.now() + this.replyTimeoutMs, resolve: resolve as Pending['resolve'], reject });
      this.watchReplies();
      this.sock.write(req);
    });
  }

  /**
   * A server that stops answering (its QEMU stopped with SIGSTOP, or hung) ends the connection
   * once the oldest request is older than the bound: every request fails instead of holding the
   * copy for ever. Looked at a few times per bound while requests are pending.
   */
  private watchReplies(): void {
    if (this.watch) return;
    const every = Math.max(10, Math.min(1000, this.replyTimeoutMs / 4));
    this.watch = setInterval(() => {
      const oldest = this.pending.values().next().value as Pending | undefined;
      if (!oldest) {
        clearInterval(this.watch);
        this.watch = undefined;
        return;
      }
      if (performance.now() < oldest.deadline) return;
      const what = oldest.kind === 'read' ? 'a read' : 'a block status request';
      this.sock.destroy(
        new NbdError(`NBD server did not answer ${what} of ${oldest.length} bytes at ${oldest.offset} within ${this.replyTimeoutMs} ms`),
      );
    }, every);
  }

  /** Say goodbye (NBD_CMD_DISC) and close; what is still pending fails. */
  async close(): Promise<void> {
    if (!this.sock.destroyed && !this.failed) {
      const req = Buffer.alloc(28);
      req.writeUInt32BE(REQUEST_MAGIC, 0);
      req.writeUInt16BE(CMD_DISC, 6);
      writeU64(req, ++this.handles, 8);
      // bounded: a server that stopped reading must not hold the check's ending
      await settledWithin(new Promise<void>((r) => this.sock.end(req, () => r())), 1000);
    }
    this.sock.destroy();
    this.fail(new NbdError('NBD connection closed'));
  }

  private fail(err: Error): void {
    this.failed ??= err;
    clearInterval(this.watch);
    this.watch = undefined;
    for (const p of this.pending.values()) p.reject(this.failed);
    this.pending.clear();
  }

  /** Replies, one after the other, each to the request its handle names. */
  private async receive(): Promise<void> {
    try {
      for (;;) {
        const head = await this.inbox.takeInto(this.heads.magic);
        const magic = head.readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === STRUCTURED_REPLY_MAGIC) await this.structuredChunk();
        else throw new NbdError(`NBD server sent a reply with magic 0x${magic.toString(16)}`);
      }
    } catch (err) {
      this.sock.destroy();
      this.fail(err instanceof Error ? err : new NbdError(String(err)));
    }
  }

  private request(handle: number): Pending {
    const p = this.pending.get(handle);
    if (!p) throw new NbdError(`NBD server answered a request never made (handle ${handle})`);
    return p;
  }

  private async simpleReply(): Promise<void> {
    const h = await this.inbox.takeInto(this.heads.simple);
    const error = h.readUInt32BE(0);
    const handle = readU64(h, 4);
    const p = this.request(handle);
    this.pending.delete(handle);
    if (error) return p.reject(new NbdError(`NBD ${p.kind} of ${p.length} bytes at ${p.offset} failed (${errorName(error)})`));
    if (p.kind !== 'read') return p.reject(new NbdError('NBD server answered block status without structured replies'));
    const data = p.into ? await this.inbox.takeInto(p.into.subarray(0, p.length)) : await this.inbox.take(p.length);
    p.resolve([{ offset: p.offset, data }]);
  }

  private async structuredChunk(): Promise<void> {
    const h = await this.inbox.takeInto(this.heads.chunk);
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const handle = readU64(h, 4);
    const length = h.readUInt32BE(12);
    const p = this.request(handle);
    if (type === REPLY_TYPE_OFFSET_DATA && length >= 8 && p.kind === 'read') {
      const offset = readU64(await this.inbox.takeInto(this.heads.offset), 0);
      this.inside(p, offset, length - 8);
      const at = offset - p.offset;
      const data = p.into ? await this.inbox.takeInto(p.into.subarray(at, at + length - 8)) : await this.inbox.take(length - 8);
      p.chunks.push({ offset, data });
      return this.done(p, handle, flags);
    }
    const body = length ? await this.inbox.take(length) : Buffer.alloc(0);
    if (type & REPLY_TYPE_ERROR_BIT) {
      const code = length >= 4 ? body.readUInt32BE(0) : 0;
      const msgLen = length >= 6 ? body.readUInt16BE(4) : 0;
      const msg = body.subarray(6, 6 + msgLen).toString('utf8');
      this.pending.delete(handle);
      return p.reject(
        new NbdError(`NBD ${p.kind} of ${p.length} bytes at ${p.offset} failed (${errorName(code)}${msg ? `: ${msg}` : ''})`),
      );
    }
    if (type === REPLY_TYPE_BLOCK_STATUS && p.kind === 'status') {
      if (length < 12 || (length - 4) % 8 !== 0) throw new NbdError(`NBD server sent a block status chunk of ${length} bytes`);
      // only the context agreed is answered (one was asked for)
      if (body.readUInt32BE(0) === this.contextId) {
        let at = p.offset + p.extents!.reduce((n, e) => n + e.length, 0);
        for (let i = 4; i < length; i += 8) {
          const len = body.readUInt32BE(i);
          if (len === 0) throw new NbdError('NBD server sent an extent of 0 bytes');
          p.extents!.push({ offset: at, length: len, flags: body.readUInt32BE(i + 4) });
          at += len;
        }
      }
    } else if (type === REPLY_TYPE_OFFSET_HOLE && p.kind === 'read') {
      const offset = Number(body.readBigUInt64BE(0));
      const hole = body.readUInt32BE(8);
      this.inside(p, offset, hole);
      p.chunks.push({ offset, hole });
    } else if (type !== REPLY_TYPE_NONE)
      throw new NbdError(`NBD server sent a reply chunk of type ${type} (${length} bytes) to a ${p.kind}`);
    this.done(p, handle, flags);
  }

  /** The last chunk of a reply: the read is answered when its chunks cover it exactly. */
  private done(p: Pending, handle: number, flags: number): void {
    if (flags & REPLY_FLAG_DONE) {
      this.pending.delete(handle);
      if (p.kind === 'status') {
        if (!p.extents!.length) return p.reject(new NbdError(`NBD block status at ${p.offset}: the server described nothing`));
        return p.resolve(p.extents!);
      }
      const covered = p.chunks.reduce((n, c) => n + ('data' in c ? c.data.length : c.hole), 0);
      if (covered !== p.length)
        return p.reject(new NbdError(`NBD read at ${p.offset}: the server's chunks cover ${covered} of ${p.length} bytes`));
      p.resolve(p.chunks);
    }
  }

  private inside(p: Pending, offset: number, length: number): void {
    if (offset < p.offset || offset + length > p.offset + p.length)
      throw new NbdError(`NBD server answered a read at ${p.offset} with bytes at ${offset} (+${length})`);
  }
}

/** Fixed newstyle handshake: structured replies if wanted, then NBD_OPT_GO for the export. */
async function handshake(
  sock: net.Socket,
  inbox: Inbox,
  exportName: string,
  wantSparse: boolean,
  metaContext: string | undefined,
): Promise<{ size: number; sparse: boolean; contextId: number | undefined }> {
  const hello = await inbox.take(18);
  if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdError('not an NBD newstyle server');
  const serverFlags = hello.readUInt16BE(16);
  if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new NbdError('NBD server does not speak fixed newstyle');
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES), 0);
  sock.write(clientFlags);

  const option = async (opt: number, data: Buffer): Promise<{ type: number; data: Buffer }[]> => {
    const head = Buffer.alloc(16);
    head.writeBigUInt64BE(IHAVEOPT, 0);
    head.writeUInt32BE(opt, 8);
    head.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([head, data]));
    const replies: { type: number; data: Buffer }[] = [];
    for (;;) {
      const r = await inbox.take(20);
      if (r.readBigUInt64BE(0) !== OPT_REPLY_MAGIC || r.readUInt32BE(8) !== opt)
        throw new NbdError(`NBD server's answer to option ${opt} is malformed`);
      const type = r.readUInt32BE(12);
      const len = r.readUInt32BE(16);
      if (len > 1 << 20) throw new NbdError(`NBD server's answer to option ${opt} is ${len} bytes long`);
      const body = len ? await inbox.take(len) : Buffer.alloc(0);
      replies.push({ type, data: body });
      if (type === REP_ACK || type & 0x80000000) return replies;
    }
  };

  let sparse = false;
  if (wantSparse) {
    const r = await option(OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    sparse = r[r.length - 1].type === REP_ACK;
  }
  const name = Buffer.from(exportName, 'utf8');
  let contextId: number | undefined;
  if (metaContext !== undefined) {
    if (!sparse) throw new NbdError(`NBD server does not give structured replies: no block status (${metaContext})`);
    const query = Buffer.from(metaContext, 'utf8');
    const body = Buffer.alloc(4 + name.length + 4 + 4 + query.length);
    body.writeUInt32BE(name.length, 0);
    name.copy(body, 4);
    body.writeUInt32BE(1, 4 + name.length);
    body.writeUInt32BE(query.length, 8 + name.length);
    query.copy(body, 12 + name.length);
    const r = await option(OPT_SET_META_CONTEXT, body);
    const ctx = r.find((x) => x.type === REP_META_CONTEXT && x.data.length >= 4 && x.data.subarray(4).toString('utf8') === metaContext);
    if (!ctx) throw new NbdError(`NBD export "${exportName}" does not offer the metadata context ${metaContext}`);
    contextId = ctx.data.readUInt32BE(0);
  }
  const go = Buffer.alloc(4 + name.length + 2);
  go.writeUInt32BE(name.length, 0);
  name.copy(go, 4);
  go.writeUInt16BE(0, 4 + name.length); // no info asked beyond the export's (always sent)
  const replies = await option(OPT_GO, go);
  const last = replies[replies.length - 1];
  if (last.type !== REP_ACK) {
    const why = last.data.toString('utf8');
    throw new NbdError(`NBD server refused export "${exportName}" (reply 0x${last.type.toString(16)}${why ? `: ${why}` : ''})`);
  }
  const info = replies.find((r) => r.type === REP_INFO && r.data.length >= 12 && r.data.readUInt16BE(0) === INFO_EXPORT);
  if (!info) throw new NbdError(`NBD server did not say the size of export "${exportName}"`);
  return { size: Number(info.data.readBigUInt64BE(2)), sparse, contextId };
}
