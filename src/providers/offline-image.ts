// A VM that is shut off is backed up from its images as they are ("offline"); what keeps the
// hypervisor from starting it on them meanwhile is QEMU's own image lock. libvirt's provider
// relies on qemu-img holding it while it copies; the QEMU provider holds it from prepare until
// the view is taken out, by a read-only qemu-nbd process per image that nothing connects to:
// a reader that shares no write permission, so a QEMU starting on the image fails with
// 'Failed to get "write" lock', while our own readers (qemu-img convert and compare, which also
// want no writer) can open it. Shared by providers: no provider folder imports another's.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProgramFailed, runProgram } from '../util/run';
import * as qemuImg from './qemu-img';

/** Private directory of the lock holders' sockets (unix socket paths are limited to 108 bytes). */
export const LOCK_DIR = path.join(os.tmpdir(), 'vm-backup-locks');

/** The holder's socket of one disk of one backup: from the backup id, the VM and the disk's index only (journalled before it exists). */
export function lockSocket(backupId: string, vm: string, index: number): string {
  // the whole backup id in the hash: two backups (two Node-REDs) never share a holder's socket
  const h = createHash('sha256').update(`${backupId}\0${vm}`).digest('hex').slice(0, 10);
  return path.join(LOCK_DIR, `${backupId.slice(-6)}-${h}-${index}.lock`);
}

interface Hold {
  stop: AbortController;
  ended: Promise<void>;
}
const holds = new Map<string, Hold>();

/**
 * Take the image lock of `file` for as long as the returned hold lives. Fails (nothing left
 * running) when a process already writes the image: its VM is running after all.
 */
export async function holdImage(qemuNbd: string, file: string, format: string, socket: string): Promise<void> {
  await fs.mkdir(LOCK_DIR, { recursive: true, mode: 0o700 });
  await fs.rm(socket, { force: true });
  const stop = new AbortController();
  const ended = runProgram(
    qemuNbd,
    ['--read-only', '--persistent', `--format=${format}`, `--socket=${socket}`, '--cache=none', '--aio=threads', file],
    { signal: stop.signal },
  ).then(
    () => undefined,
    (err: Error) => {
      if (stop.signal.aborted) return;
      const why = err instanceof ProgramFailed ? err.stderr.trim().split('\n')[0] || err.message : err.message;
      throw new Error(
        /lock/i.test(why)
          ? `image ${file} is in use by another process (${why}): its VM is not shut off; not copied offline`
          : `cannot hold the image lock of ${file} (qemu-nbd: ${why})`,
      );
    },
  );
  ended.catch(() => undefined);
  holds.set(socket, { stop, ended });
  // qemu-nbd opens the image (and takes its lock) before it listens: the socket means "held"
  let failed: Error | undefined;
  ended.catch((err: Error) => (failed = err));
  let done = false;
  void ended.finally(() => (done = true));
  for (let i = 0; i < 400; i++) {
    if (failed) break;
    if (
      await fs.access(socket).then(
        () => true,
        () => false,
      )
    )
      return;
    if (done) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  holds.delete(socket);
  stop.abort();
  throw failed ?? new Error(`qemu-nbd did not hold ${file} within 10 s`);
}

/**
 * The holder processes of a socket on `file`, found by their command line (after a restart no
 * handle is left): a qemu-nbd naming both, so a process of somebody else's is never counted or ended.
 */
export async function holdersOf(socket: string, file: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await fs.readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const argv = await fs.readFile(`/proc/${entry}/cmdline`).then(
      (b) => b.toString('utf8').split('\0'),
      () => [] as string[],
    );
    if (argv.length && path.basename(argv[0]) === 'qemu-nbd' && argv.includes(`--socket=${socket}`) && argv.includes(file))
      pids.push(Number(entry));
  }
  return pids;
}

/**
 * Give the image locks back; done only when no holder process of these sockets is left (asked of
 * the process table, not of a handle). Safe to repeat and on locks never taken.
 */
export async function releaseImages(locks: readonly { socket: string; file: string }[]): Promise<void> {
  for (const { socket, file } of locks) {
    if (path.dirname(socket) !== LOCK_DIR) throw new Error(`lock socket ${socket} is not in ${LOCK_DIR}; not ours to end`);
    const hold = holds.get(socket);
    if (hold) {
      hold.stop.abort();
      await Promise.race([hold.ended.catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]);
      holds.delete(socket);
    }
    for (let i = 0; ; i++) {
      const left = await holdersOf(socket, file);
      if (left.length === 0) break;
      if (i >= 100) throw new Error(`the image lock holder (qemu-nbd, pid ${left.join(', ')}) of ${socket} did not end; retried`);
      for (const pid of left) {
        try {
          process.kill(pid, i < 40 ? 'SIGTERM' : 'SIGKILL');
        } catch {
          /* ended meanwhile */
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await fs.rm(socket, { force: true });
  }
}

/** True while a holder of ours still runs for the socket. */
export async function isHeld(socket: string, file: string): Promise<boolean> {
  return (await holdersOf(socket, file)).length > 0;
}

/**
 * Copy an image that nobody writes (its VM is shut off) into a sparse qcow2. Never -U: qemu-img
 * then wants no writer either, so a VM started on the image meanwhile fails, or fails this copy.
 */
export async function copyOfflineImage(
  qemuImgPath: string,
  file: string,
  format: string,
  dest: string,
  o: { compress: boolean; signal?: AbortSignal; onProgress?: (done: number, total: number) => void },
): Promise<{ bytes: number; virtualSize: number }> {
  const total = (await qemuImg.info(qemuImgPath, file, false))['virtual-size'];
  await qemuImg.convert(qemuImgPath, file, dest, {
    sourceFormat: format,
    compress: o.compress,
    forceShare: false,
    ...(o.signal ? { signal: o.signal } : {}),
    onProgress: (f) => o.onProgress?.(Math.round(f * total), total),
  });
  return { bytes: (await fs.stat(dest)).size, virtualSize: total };
}
