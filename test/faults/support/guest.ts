// Faults made inside a real lab guest, through its own agent's standard commands (guest-exec,
// guest-file-*) before the product touches it. Nothing here is a product hook: the product only
// sees an agent that stops answering, hangs in its freeze hook, or dies and is respawned by init.
import { HOOK_LOG, qga, qgaRetry, sleep } from './world';

/** Run argv in the guest; returns its pid there (not waited for unless `wait`). */
export async function guestExec(qgaSocket: string, argv: string[], wait = false): Promise<{ pid: number; exitcode?: number; out?: string }> {
  const { pid } = await qgaRetry<{ pid: number }>(qgaSocket, 'guest-exec', { path: argv[0], arg: argv.slice(1), 'capture-output': wait });
  if (!wait) return { pid };
  for (let i = 0; i < 100; i++) {
    const st = await qgaRetry<{ exited: boolean; exitcode?: number; 'out-data'?: string }>(qgaSocket, 'guest-exec-status', { pid });
    if (st.exited) return { pid, exitcode: st.exitcode, out: Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8') };
    await sleep(100);
  }
  throw new Error(`guest command ${argv.join(' ')} did not finish`);
}

export async function writeGuestFile(qgaSocket: string, file: string, content: string): Promise<void> {
  const handle = await qgaRetry<number>(qgaSocket, 'guest-file-open', { path: file, mode: 'w' });
  try {
    await qgaRetry(qgaSocket, 'guest-file-write', { handle, 'buf-b64': Buffer.from(content).toString('base64') });
  } finally {
    await qgaRetry(qgaSocket, 'guest-file-close', { handle });
  }
}

export async function readGuestFile(qgaSocket: string, file: string): Promise<string> {
  const r = await guestExec(qgaSocket, ['/bin/cat', file], true);
  return r.out ?? '';
}

/**
 * The lab's freeze hook plus one switch: when /run/qga/hook-sleep holds N, the next "freeze" call
 * sleeps N seconds first (the agent is then stuck inside guest-fsfreeze-freeze, as a hung VSS
 * writer would be), and logs only after sleeping, right before the kernel freeze.
 */
export const FAULT_HOOK = `#!/bin/sh
if [ "$1" = freeze ] && [ -s /run/qga/hook-sleep ]; then
  s=$(cat /run/qga/hook-sleep); rm -f /run/qga/hook-sleep; sleep "$s"
fi
echo "LAB-FSFREEZE $1" > /dev/console
echo "$1 $(cat /proc/uptime)" >> ${HOOK_LOG}
exit 0
`;

export async function installFaultHook(qgaSocket: string): Promise<void> {
  await writeGuestFile(qgaSocket, '/etc/qemu/fsfreeze-hook', FAULT_HOOK);
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

/**
 * SIGSTOP the agent for `seconds` (it answers nothing meanwhile), then SIGCONT. Returns once the
 * agent has verifiably stopped answering (a slow guest may take a while to run the command).
 */
export async function stopAgentFor(qgaSocket: string, seconds: number): Promise<void> {
  await guestExec(qgaSocket, ['/bin/sh', '-c', `usleep 200000; p=$(pidof qemu-ga); kill -STOP $p; sleep ${seconds}; kill -CONT $p`]);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const answers = await qga(qgaSocket, 'guest-ping', undefined, 700).then(() => true, () => false);
    if (!answers) return;
    await sleep(100);
  }
  throw new Error(`${qgaSocket}: the agent still answers after kill -STOP`);
}

/** SIGKILL the agent now (init respawns it within about a second). */
export async function killAgentNow(qgaSocket: string): Promise<void> {
  await guestExec(qgaSocket, ['/bin/sh', '-c', 'usleep 300000; kill -9 $(pidof qemu-ga)']);
  await sleep(600);
}

/**
 * Arm a guest-side watcher that SIGKILLs the agent `delayMs` after the next freeze begins (the
 * agent refuses guest-exec while frozen, so the fault must be armed before).
 */
export async function killAgentDuringNextFreeze(qgaSocket: string, delayMs = 300): Promise<void> {
  const script = `n=$(grep -c '^freeze' ${HOOK_LOG}); i=0
while [ "$(grep -c '^freeze' ${HOOK_LOG})" -le "$n" ] && [ $i -lt 1200 ]; do usleep 50000; i=$((i+1)); done
usleep ${delayMs * 1000}; kill -9 $(pidof qemu-ga)`;
  await guestExec(qgaSocket, ['/bin/sh', '-c', script]);
}

/** Wait until the agent answers again (after a kill or a stop). */
export async function waitAgent(qgaSocket: string, withinMs = 60_000): Promise<void> {
  await qgaRetry(qgaSocket, 'guest-ping', undefined, withinMs);
}
