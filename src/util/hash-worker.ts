// sha256 on a worker thread, for bytes in shared memory. The pull of an incremental reads the
// view's changed clusters on Node-RED's thread and hashes the file it writes; on that thread the
// hash (about 60 ms per 82 MiB with SHA-NI) stopped the socket's reads while it ran, so reading and
// hashing added up. Here the hashing runs beside the reads and the writes: the buffers are views of
// a SharedArrayBuffer, so nothing is copied to hand them over, and a buffer is given back (the
// promise resolves) once the worker has hashed it.
//
// One worker per process, started at the first use and kept (holding the process open only while an
// answer is awaited); each hash is one id on it. A worker that fails fails every hash in progress.
import { Worker } from 'node:worker_threads';

const CODE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
parentPort.on('message', (m) => {
  try {
    let h = hashes.get(m.id);
    if (!h) hashes.set(m.id, (h = createHash('sha256')));
    if (m.op === 'update') {
      h.update(m.bytes ?? new Uint8Array(m.sab, m.offset, m.length));
      parentPort.postMessage({ id: m.id, seq: m.seq });
    } else {
      hashes.delete(m.id);
      parentPort.postMessage({ id: m.id, seq: m.seq, digest: m.op === 'digest' ? h.digest('hex') : undefined });
    }
  } catch (err) {
    hashes.delete(m.id);
    parentPort.postMessage({ id: m.id, seq: m.seq, error: String(err && err.message || err) });
  }
});
`;

interface Waiting {
  resolve: (digest: string | undefined) => void;
  reject: (err: Error) => void;
}

let worker: Worker | undefined;
let nextId = 0;
let nextSeq = 0;
const waiting = new Map<number, Waiting>();

function theWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(CODE, { eval: true });
  w.on('message', (m: { seq: number; digest?: string; error?: string }) => {
    const wait = waiting.get(m.seq);
    waiting.delete(m.seq);
    if (waiting.size === 0) w.unref();
    if (m.error !== undefined) wait?.reject(new Error(`sha256 on the hashing thread failed: ${m.error}`));
    else wait?.resolve(m.digest);
  });
  const fail = (err: Error) => {
    if (worker === w) worker = undefined;
    for (const wait of waiting.values()) wait.reject(err);
    waiting.clear();
  };
  w.on('error', (err) => fail(new Error(`the hashing thread failed: ${err.message}`)));
  w.on('exit', (code) => fail(new Error(`the hashing thread ended (exit ${code})`)));
  // held (ref'd) only while an answer is awaited (see send): an idle thread never keeps the
  // process alive, a hash in progress does (after the listeners: adding one refs the port again)
  w.unref();
  worker = w;
  return w;
}

/** Start the hashing thread now, so that its start (30-50 ms) overlaps other work. */
export function warmHashThread(): void {
  theWorker();
}

/** Memory the hashing thread can read without a copy: give it to `SharedHash.update`. */
export function sharedBuffer(bytes: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(bytes));
}

/** One sha256 computed on the worker thread, in the order of the updates. */
export class SharedHash {
  private readonly id = nextId++;
  private ended = false;

  private send(m: Record<string, unknown>): Promise<string | undefined> {
    const seq = nextSeq++;
    return new Promise((resolve, reject) => {
      try {
        const w = theWorker();
        if (waiting.size === 0) w.ref();
        waiting.set(seq, { resolve, reject });
        w.postMessage({ ...m, id: this.id, seq });
      } catch (err) {
        waiting.delete(seq);
        reject(err as Error);
      }
    });
  }

  /**
   * Hash `buf` next. A buffer of sharedBuffer's memory is read in place (it must not change until
   * the promise resolves); any other is copied.
   */
  async update(buf: Buffer): Promise<void> {
    if (this.ended) throw new Error('sha256 updated after its digest');
    const shared = buf.buffer instanceof SharedArrayBuffer;
    await this.send(
      shared
        ? { op: 'update', sab: buf.buffer, offset: buf.byteOffset, length: buf.length }
        : { op: 'update', bytes: Uint8Array.from(buf) },
    );
  }

  async digest(): Promise<string> {
    this.ended = true;
    const d = await this.send({ op: 'digest' });
    if (typeof d !== 'string') throw new Error('the hashing thread gave no digest');
    return d;
  }

  /** Forget this hash (an aborted write): nothing is kept on the worker. */
  discard(): void {
    if (this.ended || !worker) return;
    this.ended = true;
    void this.send({ op: 'discard' }).catch(() => undefined);
  }
}
