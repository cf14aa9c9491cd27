// Faults made inside a real lab guest, through its own agent's standard commands (guest-exec,
// guest-file-*) before the product touches it. Nothing here is a product hook: the product only
// sees an agent that stops answering, hangs in its freeze hook, or dies and is respawned by init.
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { GuestAgentClient } from '../../../src/providers/qemu/protocol';
import { AGENT_COMMAND_MS, HOOK_LOG, qgaRetry, sleep, withAgent } from './world';

type ExecStatus = { exited: boolean; exitcode?: number; signal?: number; 'out-data'?: string; 'err-data'?: string };

async function execOn(
  c: GuestAgentClient,
  argv: string[],
  wait: boolean,
  input?: string,
): Promise<{ pid: number; exitcode?: number; out?: string; err?: string }> {
  const { pid } = await c.execute<{ pid: number }>(
    'guest-exec',
    {
      path: argv[0],
      arg: argv.slice(1),
      'capture-output': wait,
      ...(input !== undefined ? { 'input-data': Buffer.from(input).toString('base64') } : {}),
    },
    { timeoutMs: AGENT_COMMAND_MS },
  );
  if (!wait) return { pid };
  // bounded by time, not by polls: a TCG guest under load may take seconds to run a small command
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const st = await c.execute<ExecStatus>('guest-exec-status', { pid }, { timeoutMs: AGENT_COMMAND_MS });
    if (st.exited) {
      const text = (b?: string) => Buffer.from(b ?? '', 'base64').toString('utf8');
      return {
        pid,
        exitcode: st.exitcode ?? (st.signal !== undefined ? 128 + st.signal : undefined),
        out: text(st['out-data']),
        err: text(st['err-data']),
      };
    }
    await sleep(100);
  }
  throw new Error(`guest command ${argv.join(' ')} did not finish within 60 s`);
}

/**
 * Run argv in the guest; returns its pid there (not waited for unless `wait`). Sent once: only
 * the connect-and-sync before it is retried (a fault must not run twice); `idempotent` commands
 * (reading a file) are retried whole.
 */
export async function guestExec(
  qgaSocket: string,
  argv: string[],
  wait = false,
  o: { idempotent?: boolean; input?: string } = {},
): Promise<{ pid: number; exitcode?: number; out?: string; err?: string }> {
  return withAgent(qgaSocket, (c) => execOn(c, argv, wait, o.input), {
    idempotent: o.idempotent,
    what: `guest-exec ${argv.join(' ').slice(0, 60)}`,
  });
}

/**
 * Replace a guest file atomically: written beside it, then renamed over it. So a reader (the
 * agent running the freeze hook, the hook reading its switch) never sees it empty or half
 * written, no writable handle to it is ever left open (a leaked one makes exec fail with
 * ETXTBSY), and repeating the write after a lost answer changes nothing.
 */
export async function writeGuestFile(qgaSocket: string, file: string, content: string, mode = '644'): Promise<void> {
  const r = await withAgent(
    qgaSocket,
    (c) =>
      execOn(
        c,
        ['/bin/sh', '-c', 'cat > "$1.vmb-new" && chmod "$2" "$1.vmb-new" && mv -f "$1.vmb-new" "$1"', 'sh', file, mode],
        true,
        content,
      ),
    { idempotent: true, what: `write ${file}` },
  );
  if (r.exitcode !== 0) throw new Error(`${qgaSocket}: writing ${file} in the guest failed (exit ${r.exitcode}): ${r.err?.trim()}`);
}

export async function readGuestFile(qgaSocket: string, file: string): Promise<string> {
  const r = await guestExec(qgaSocket, ['/bin/cat', file], true, { idempotent: true });
  if (r.exitcode !== 0) throw new Error(`${qgaSocket}: reading ${file} in the guest failed (exit ${r.exitcode}): ${r.err?.trim()}`);
  return r.out ?? '';
}

/**
 * The lab's freeze hook plus one switch: when /run/qga/hook-sleep holds N, the next "freeze" call
 * sleeps N seconds first (the agent is then stuck inside guest-fsfreeze-freeze, as a hung VSS
 * writer would be), and logs only after sleeping.
 * The log brackets the frozen window as tightly as the guest can see it: the agent runs the hook
 * right before it freezes (so "freeze" is read last thing in the hook) and right after it thaws
 * (so "thaw" is read first thing); /proc/uptime is read with the shell's own `read`, no process is
 * started for it. Its resolution is 10 ms (GUEST_CLOCK_TICK_MS).
 */
export const FAULT_HOOK = `#!/bin/sh
if [ "$1" = thaw ]; then
  read up _ < /proc/uptime
  echo "thaw $up" >> ${HOOK_LOG}
  echo "LAB-FSFREEZE thaw" > /dev/console
  exit 0
fi
if [ "$1" = freeze ] && [ -s /run/qga/hook-sleep ]; then
  s=$(cat /run/qga/hook-sleep); rm -f /run/qga/hook-sleep; sleep "$s"
fi
echo "LAB-FSFREEZE $1" > /dev/console
read up _ < /proc/uptime
echo "$1 $up" >> ${HOOK_LOG}
exit 0
`;

export async function installFaultHook(qgaSocket: string): Promise<void> {
  await writeGuestFile(qgaSocket, '/etc/qemu/fsfreeze-hook', FAULT_HOOK, '755');
}

/** The next freeze hangs `seconds` inside the agent before the file systems freeze. */
export async function hangNextFreeze(qgaSocket: string, seconds: number): Promise<void> {
  await writeGuestFile(qgaSocket, '/run/qga/hook-sleep', `${seconds}\n`);
}

export async function clearHookLog(qgaSocket: string): Promise<void> {
  await writeGuestFile(qgaSocket, HOOK_LOG, '');
  await writeGuestFile(qgaSocket, '/run/qga/hook-sleep', '');
}

export async function hookLog(qgaSocket: string): Promise<string> {
  return readGuestFile(qgaSocket, HOOK_LOG);
}

/** The lab guest's serial console log on the host (run/<vm>.log beside run/<vm>.qga). */
function consoleLogOf(qgaSocket: string): string {
  return qgaSocket.replace(/\.qga$/, '.log');
}

function consoleSize(qgaSocket: string): number {
  try {
    return statSync(consoleLogOf(qgaSocket)).size;
  } catch {
    return 0;
  }
}

/** Wait until the guest printed `marker` on its serial console (after byte `from` of the log). */
async function waitConsole(qgaSocket: string, marker: string, from: number, withinMs = 60_000): Promise<void> {
  const deadline = Date.now() + withinMs;
  while (Date.now() < deadline) {
    try {
      const text = readFileSync(consoleLogOf(qgaSocket)).subarray(from).toString('latin1');
      if (text.includes(marker)) return;
    } catch {
      // not there yet
    }
    await sleep(50);
  }
  throw new Error(`${qgaSocket}: the guest did not print "${marker}" on its console within ${withinMs} ms`);
}

/**
 * SIGSTOP the agent for `seconds` (it answers nothing meanwhile), then SIGCONT. Returns once the
 * guest itself said the agent is stopped (a line on its serial console, read on the host: asking
 * the stopped agent cannot tell a stopped agent from a slow one).
 */
export async function stopAgentFor(qgaSocket: string, seconds: number): Promise<void> {
  const token = `VMB-FAULT-${randomBytes(4).toString('hex')}`;
  const from = consoleSize(qgaSocket);
  await guestExec(qgaSocket, [
    '/bin/sh',
    '-c',
    `usleep 200000; p=$(pidof qemu-ga); kill -STOP $p && echo "${token} agent stopped" > /dev/console; sleep ${seconds}; kill -CONT $p; echo "${token} agent continued" > /dev/console`,
  ]);
  await waitConsole(qgaSocket, `${token} agent stopped`, from);
}

/** SIGKILL the agent now (init respawns it within about a second); returns once it was killed. */
export async function killAgentNow(qgaSocket: string): Promise<void> {
  const token = `VMB-FAULT-${randomBytes(4).toString('hex')}`;
  const from = consoleSize(qgaSocket);
  await guestExec(qgaSocket, ['/bin/sh', '-c', `usleep 300000; kill -9 $(pidof qemu-ga) && echo "${token} agent killed" > /dev/console`]);
  await waitConsole(qgaSocket, `${token} agent killed`, from);
}

/**
 * Arm a guest-side watcher that SIGKILLs the agent `delayMs` after it acknowledged the next freeze
 * (the agent refuses guest-exec while frozen, so the fault must be armed before). The hook's
 * "freeze" line comes before the kernel freeze and the reply; the agent is back in its main loop
 * (in poll(2), syscall 7 in /proc/<pid>/syscall) only once the freeze is done and answered. So on
 * a slow guest the kill cannot come before the answer and turn the case into "killed mid-freeze".
 */
export async function killAgentDuringNextFreeze(qgaSocket: string, delayMs = 300): Promise<void> {
  const script = `n=$(grep -c '^freeze' ${HOOK_LOG}); i=0
while [ "$(grep -c '^freeze' ${HOOK_LOG})" -le "$n" ] && [ $i -lt 1200 ]; do usleep 50000; i=$((i+1)); done
p=$(pidof qemu-ga); j=0
while [ $j -lt 1000 ]; do read nr _ < /proc/$p/syscall || break; [ "$nr" = 7 ] && break; usleep 20000; j=$((j+1)); done
usleep ${delayMs * 1000}; kill -9 $p`;
  await guestExec(qgaSocket, ['/bin/sh', '-c', script]);
}

/** Wait until the agent answers again (after a kill or a stop). */
export async function waitAgent(qgaSocket: string, withinMs = 60_000): Promise<void> {
  await qgaRetry(qgaSocket, 'guest-ping', undefined, withinMs);
}
