// Buffers kept between copies for a moment. A disk copy in Node-RED's process uses a few buffers
// (reads in flight, an image's tables, a socket's landing buffer); allocated afresh for every disk
// they are garbage the collector leaves lying for a while, since V8 only counts them as external
// memory, and the fewer other things a process does, the longer they lie: in the 100-VM scale run
// the process's array buffers peaked at 48 MiB against 19 before the copies were made in-process
// (a 64 KiB header buffer per file published, 64 KiB pieces of every /proc read, a table per disk),
// and its RSS with them; pooled, 24 MiB. Reused, a few hundred disks cost what a
// few disks at once hold. Everything is dropped once no copy has used the pool for 2 s: nothing is
// held between backups.
const spare = new Map<number, Buffer[]>();
const pooled = new WeakSet<Buffer>();
let dropTimer: NodeJS.Timeout | undefined;
/** at most this many idle buffers of one size are kept */
const SPARE_PER_SIZE = 16;

/** A buffer of `size` bytes (its content is whatever it held: fill what you read). */
export function borrow(size: number): Buffer {
  const b = spare.get(size)?.pop() ?? Buffer.allocUnsafeSlow(size);
  pooled.add(b);
  return b;
}

/** A buffer of `size` bytes, all zeros. */
export function borrowZeroed(size: number): Buffer {
  return borrow(size).fill(0);
}

/** Back to the pool, once nothing reads or writes it any more (a buffer not borrowed is ignored). */
export function giveBack(b: Buffer): void {
  if (!pooled.has(b)) return;
  pooled.delete(b);
  const list = spare.get(b.length) ?? [];
  if (list.length < SPARE_PER_SIZE) list.push(b);
  spare.set(b.length, list);
  clearTimeout(dropTimer);
  dropTimer = setTimeout(() => spare.clear(), 2000);
  dropTimer.unref();
}
