// Saved state without a shell: QEMU migrates to a unix socket, and a small receiver process of
// ours (state-receiver.ts) writes the stream to the file. (The "exec:" URI would have QEMU run
// /bin/sh; "file:" needs QEMU >= 8.2; "fd:" needs descriptor passing, which Node.js lacks.)
// Not Node-RED's own event loop: the stream is as large as the VM's memory, the VM is stopped
// while it flows, and inside a busy Node-RED every 64 KiB chunk waited longer (measured: 100 MB
// took 400-550 ms there after other flows had run, 130-270 ms in a process of its own).
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { lastErrorLine, runProgram } from '../../util/run';
import type { QmpExchange } from './protocol';

const RECEIVER = path.join(__dirname, 'state-receiver.js');

/**
 * Save the VM's state to `file`. `stopVm` stops its vCPUs: called once the receiver listens and
 * migration is unthrottled, so that neither counts in the VM's downtime (nor is the VM stopped
 * at all when the receiver cannot start, e.g. the repository is read-only).
 */
export async function saveStateToFile(
  qmp: QmpExchange,
  file: string,
  timeoutMs: number,
  stopVm: () => Promise<void>,
): Promise<{ bytes: number }> {
  // unix socket paths are limited to 108 bytes, staging paths may be longer
  const sock = path.join(os.tmpdir(), `vmbackup-mig-${randomBytes(6).toString('hex')}.sock`);
  const stop = new AbortController();
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => (listening = resolve));
  let said = '';
  const received = runProgram(process.execPath, [RECEIVER, sock, file], {
    signal: stop.signal,
    onStdout: (chunk) => {
      said += chunk;
      if (said.includes('listening\n')) listening();
    },
  }).then(
    () => undefined,
    (err: Error) => {
      const why = lastErrorLine(err);
      throw new Error(`writing the saved state to ${file} failed: ${why}`);
    },
  );
  // Awaited below, but it may fail first (repository full while the state streams in): without a
  // handler now, Node (which Node-RED leaves at --unhandled-rejections=throw) would end the process.
  received.catch(() => undefined);
  let finished = false;
  try {
    // the file is open and the socket listens before QEMU is asked anything
    await Promise.race([ready, received, rejectAfter(30_000, 'the saved-state receiver did not start')]);
    const restoreBandwidth = await unthrottle(qmp);
    try {
      await stopVm();
      const done = waitMigration(qmp, timeoutMs, () => finished, received);
      done.catch(() => undefined); // awaited below; the migrate command itself may fail first
      await qmp((c) => c.execute('migrate', { uri: `unix:${sock}` }));
      await done;
      await withTimeout(received, timeoutMs, 'writing the saved state');
    } finally {
      await restoreBandwidth();
    }
    // Not fsync'd here: the VM waits (stopped) until this returns, and flushing ~100 MB to disk is
    // no part of saving its state. The copy stage fsyncs the file before it hashes and publishes it.
    return { bytes: (await fs.stat(file)).size };
  } finally {
    finished = true; // stops the polling if the migrate command failed
    stop.abort(); // a receiver still waiting (QEMU never connected) is stopped
    await fs.rm(sock, { force: true });
  }
}

function rejectAfter(ms: number, what: string): Promise<never> {
  return new Promise((_, reject) => setTimeout(() => reject(new Error(what)), ms).unref());
}

/**
 * QEMU throttles migration to max-bandwidth (128 MiB/s by default), which is meant to spare the
 * network and a running guest during live migration. Here the vCPUs are stopped and the stream
 * goes to a local file, so the throttle only lengthens the VM's downtime (measured on a 256 MiB
 * guest: 800 ms throttled, 200-350 ms not). It is lifted for this save and put back afterwards,
 * so that the management layer's own migrations keep the value it chose.
 */
async function unthrottle(qmp: QmpExchange): Promise<() => Promise<void>> {
  const set = await qmp(async (c) => {
    const params = await c.execute<{ 'max-bandwidth'?: number }>('query-migrate-parameters').catch(() => undefined);
    const previous = params?.['max-bandwidth'];
    if (previous === undefined) return undefined;
    return c.execute('migrate-set-parameters', { 'max-bandwidth': UNTHROTTLED }).then(
      () => previous,
      () => undefined,
    );
  });
  return async () => {
    if (set !== undefined) await qmp((c) => c.execute('migrate-set-parameters', { 'max-bandwidth': set })).catch(() => undefined);
  };
}

/** bytes per second: far above what a local file system takes */
const UNTHROTTLED = 64 * 1024 ** 3;

async function waitMigration(qmp: QmpExchange, timeoutMs: number, finished: () => boolean, received: Promise<void>): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  // QEMU closes the stream when it has sent everything (or failed): look at once then, and
  // otherwise every 100 ms. (MIGRATION events need the "events" capability; polling works everywhere.)
  let streamEnded = false;
  received.then(
    () => {
      streamEnded = true;
    },
    () => {
      streamEnded = true;
    },
  );
  for (;;) {
    if (!streamEnded) {
      await new Promise<void>((r) => {
        const timer = setTimeout(r, 100);
        received.then(
          () => {
            clearTimeout(timer);
            r();
          },
          () => {
            clearTimeout(timer);
            r();
          },
        );
      });
    }
    if (finished()) throw new Error('saving state abandoned');
    // each look its own exchange: the host's tools get the socket in between
    const st = await qmp((c) => c.execute<{ status?: string; 'error-desc'?: string }>('query-migrate'));
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`saving state failed: ${st['error-desc'] ?? st.status}`);
    if (performance.now() > deadline) {
      await qmp((c) => c.execute('migrate_cancel')).catch(() => undefined);
      throw new Error(`saving state took longer than ${timeoutMs} ms; cancelled`);
    }
    // the stream has ended but QEMU has not yet marked the migration completed: ask again soon
    if (streamEnded) await new Promise((r) => setTimeout(r, 5));
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}
