// A QEMU we start ourselves (a restored VM, a boot test's throwaway VM): started daemonized from
// an argument vector (never a shell), spoken to over its own QMP socket one exchange at a time,
// fed a saved state through a unix socket, and stopped for sure (QMP quit, then SIGKILL).
import { createReadStream, promises as fs } from 'node:fs';
import * as net from 'node:net';
import { pipeline } from 'node:stream/promises';
import { GuestAgentClient, QmpClient } from '../providers';
import { runProgram } from '../util/run';
import type { QemuLaunch } from './qemu-argv';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function readPid(file: string): Promise<number | undefined> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 ? pid : undefined;
}

/**
 * Start QEMU (it daemonizes once its devices are up) and return its pid. `wrapper` runs it under
 * another program first (the boot test: coreutils `timeout`, so that the VM ends at its deadline
 * even when Node-RED does not live to end it).
 */
export async function startQemu(launch: QemuLaunch, o: { timeoutMs?: number; wrapper?: string[] } = {}): Promise<number> {
  const [file, ...pre] = o.wrapper?.length ? o.wrapper : [launch.program];
  const args = o.wrapper?.length ? [...pre, launch.program, ...launch.args] : launch.args;
  try {
    await runProgram(file, args, { timeoutMs: o.timeoutMs ?? 120_000 });
  } catch (err) {
    const log = await fs.readFile(launch.consoleLog, 'latin1').catch(() => '');
    throw new Error(`QEMU did not start: ${(err as Error).message}${log ? `; console: ${log.slice(-300)}` : ''}`);
  }
  const pid = await readPid(launch.pidFile);
  if (pid === undefined || !pidAlive(pid)) throw new Error(`QEMU started but its pidfile ${launch.pidFile} names no running process`);
  return pid;
}

/** One QMP exchange (connect, command, close): QMP serves one client at a time. */
export async function qmp<T = unknown>(socket: string, command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<T> {
  const c = await QmpClient.connect(socket, { timeoutMs });
  try {
    return await c.execute<T>(command, args, { timeoutMs });
  } finally {
    await c.close();
  }
}

/** QMP quit, then SIGTERM/SIGKILL: the process is gone when this returns (or it says why not). */
export async function stopQemu(pid: number | undefined, qmpSocket: string, graceMs = 10_000): Promise<void> {
  if (pid === undefined || !pidAlive(pid)) return;
  await qmp(qmpSocket, 'quit', undefined, 5000).catch(() => undefined);
  for (const [signal, wait] of [
    [undefined, graceMs],
    ['SIGTERM', 3000],
    ['SIGKILL', 5000],
  ] as const) {
    if (signal) {
      try {
        process.kill(pid, signal);
      } catch {
        /* gone */
      }
    }
    const end = Date.now() + wait;
    while (Date.now() < end && pidAlive(pid)) await sleep(100);
    if (!pidAlive(pid)) return;
  }
  throw new Error(`QEMU pid ${pid} did not end after SIGKILL`);
}

/**
 * Feed a saved state (a QEMU migration stream) into a QEMU started with -incoming defer, and
 * wait until QEMU says it loaded it. QEMU listens on a unix socket of ours: no shell, no exec:.
 */
export async function loadSavedState(qmpSocket: string, stateFile: string, incomingSocket: string, timeoutMs = 300_000): Promise<number> {
  const t0 = Date.now();
  await qmp(qmpSocket, 'migrate-incoming', { uri: `unix:${incomingSocket}` });
  const streamed = await new Promise<Error | undefined>((resolve) => {
    const c = net.connect(incomingSocket);
    c.once('connect', () => pipeline(createReadStream(stateFile), c).then(() => resolve(undefined), resolve));
    c.once('error', resolve);
  });
  // QEMU may close the socket as soon as it read the end marker, before this side saw its write
  // finish: whether the state loaded is QEMU's to say
  while (Date.now() - t0 < timeoutMs) {
    const m = await qmp<{ status?: string; 'error-desc'?: string }>(qmpSocket, 'query-migrate');
    if (m.status === 'failed')
      throw new Error(`QEMU could not load the saved state${streamed ? ` (${streamed.message})` : ''}: ${m['error-desc'] ?? 'failed'}`);
    const st = await qmp<{ status: string }>(qmpSocket, 'query-status');
    if (m.status === 'completed' && st.status !== 'inmigrate') return Date.now() - t0;
    await sleep(200);
  }
  throw new Error(`the saved state did not load within ${Math.round(timeoutMs / 1000)} s`);
}

/** QMP cont (a VM created with -S, or resumed from a state saved with its vCPUs stopped). */
export async function runVcpus(qmpSocket: string): Promise<void> {
  const st = await qmp<{ status: string }>(qmpSocket, 'query-status');
  if (st.status !== 'running') await qmp(qmpSocket, 'cont');
}

/** Wait until the guest agent answers guest-ping; returns the agent's client, open. */
export async function waitForAgent(qgaSocket: string, deadline: number, alive: () => boolean): Promise<GuestAgentClient> {
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (!alive()) throw new Error(`the VM ended while waiting for its guest agent (${last})`);
    try {
      const c = await GuestAgentClient.connect(qgaSocket, { timeoutMs: 5000, syncTimeoutMs: 2000 });
      try {
        await c.execute('guest-ping', undefined, { timeoutMs: 3000 });
        return c;
      } catch (err) {
        await c.close();
        throw err;
      }
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(1000);
  }
  throw new Error(`the guest agent did not answer within the timeout (${last})`);
}
