// The boot test (SureBackup-style): a point started as a THROWAWAY VM to prove it boots. The
// backup's disks are the read-only backing files of temporary overlays that take every write;
// the VM has no network, its own sockets, name and UUID; TCG unless KVM is asked for. It passes
// when the guest agent answers (guest-ping, guest-get-osinfo) or a console marker appears, and,
// if a check command is given, when that command runs in the guest (guest-exec) with exit 0 and
// output matching. Whatever happens, everything is torn down within the timeout: QEMU runs under
// coreutils `timeout`, so it ends at the deadline even when Node-RED does not live to end it; a
// journal entry lets recovery stop it and remove the overlays after a crash. The result is kept
// beside the backup as <backupId>.boot-test.json (never in the manifest).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { writeFileDurable } from '../repository/durable';
import { runProgram } from '../util/run';
import { checkLinks, verifyPoint } from './images';
import { RestoreJournal, journalDirOf } from './journal';
import { rewriteCommandLine, type RestoredDrive } from './qemu-argv';
import { pidAlive, qmp, readPid, stopQemu, waitForAgent } from './qemu-process';
import type { BackupPoint } from './point';
import { RestoreRefused } from './refused';

export interface BootTestOptions {
  point: BackupPoint;
  /** the whole test, boot to teardown (default 300 s) */
  timeoutMs?: number;
  /** what says the guest is up: its agent (default), or a console line matching `marker` */
  waitFor?: 'agent' | 'console';
  marker?: string;
  /** a command run in the guest once it is up (guest-exec), its output matched by `expect` */
  command?: { path: string; args?: string[]; expect?: string };
  /** tcg (default), kvm, or auto (kvm when /dev/kvm opens, else tcg) */
  accel?: 'tcg' | 'kvm' | 'auto';
  /** where the overlays and sockets go (a temporary folder is made in it) */
  workDir: string;
  journalDir: string;
  /** verify the backup and its chain first (default true) */
  verify?: boolean;
  qemuImg?: string;
  onProgress?: (step: string) => void;
}

export interface BootTestResult {
  ok: boolean;
  host: string;
  vm: string;
  backupId: string;
  /** why it failed */
  reason?: string;
  /** the step reached: verify, start, boot, command, done */
  step: string;
  accel: string;
  timings: { verifyMs?: number; startMs?: number; upMs?: number; commandMs?: number; totalMs: number };
  osinfo?: Record<string, unknown>;
  command?: { exitcode?: number; stdout: string; stderr: string; matched: boolean };
  consoleTail: string;
  /** the record written beside the backup */
  record?: string;
  at: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function chooseAccel(a: BootTestOptions['accel']): Promise<string> {
  if (a === 'kvm') return 'kvm';
  if (a === 'auto') {
    const ok = await fs.open('/dev/kvm', 'r+').then(
      async (h) => {
        await h.close();
        return true;
      },
      () => false,
    );
    return ok ? 'kvm' : 'tcg';
  }
  return 'tcg';
}

/** Bad options are refused (naming the field) before anything starts. */
export function checkBootTest(o: BootTestOptions): void {
  const t = o.timeoutMs ?? 300_000;
  if (!Number.isFinite(t) || t < 10_000 || t > 6 * 3_600_000) throw new RestoreRefused('timeout', `${t / 1000} s must be from 10 s to 6 h`);
  if (o.waitFor === 'console') {
    if (!o.marker) throw new RestoreRefused('marker', 'is required when waiting for a console line');
    try {
      new RegExp(o.marker);
    } catch (err) {
      throw new RestoreRefused('marker', `not a regular expression: ${(err as Error).message}`);
    }
  }
  if (o.command?.expect !== undefined) {
    try {
      new RegExp(o.command.expect);
    } catch (err) {
      throw new RestoreRefused('expect', `not a regular expression: ${(err as Error).message}`);
    }
  }
  if (o.command && (typeof o.command.path !== 'string' || !o.command.path.startsWith('/')))
    throw new RestoreRefused('command', 'must be an absolute path of a program in the guest');
  if (!Array.isArray(o.point.definition.commandLine))
    throw new RestoreRefused(
      'backup',
      `backup ${o.point.manifest.backupId} holds no QEMU command line (an offline, libvirt or Hyper-V backup): the boot test starts plain QEMU backups only`,
    );
}

export async function bootTest(o: BootTestOptions): Promise<BootTestResult> {
  checkBootTest(o);
  const t0 = Date.now();
  const deadline = t0 + (o.timeoutMs ?? 300_000);
  const m = o.point.manifest;
  const accel = await chooseAccel(o.accel);
  const result: BootTestResult = {
    ok: false,
    host: m.host,
    vm: m.vm,
    backupId: m.backupId,
    step: 'verify',
    accel,
    timings: { totalMs: 0 },
    consoleTail: '',
    at: new Date(t0).toISOString(),
  };
  const dir = path.join(o.workDir, `.boot-test-${m.vm}-${randomBytes(4).toString('hex')}`);
  const journal = new RestoreJournal(journalDirOf(o.journalDir));
  let pid: number | undefined;
  let qmpSocket = '';
  let consoleLog = '';
  let wrapper: ReturnType<typeof spawn> | undefined;
  try {
    o.onProgress?.('verify');
    if (o.verify !== false) await verifyPoint(o.point, o.qemuImg ? { qemuImg: o.qemuImg } : {});
    else await checkLinks(o.point, o.qemuImg ? { qemuImg: o.qemuImg } : {});
    result.timings.verifyMs = Date.now() - t0;
    result.step = 'start';
    o.onProgress?.('start');
    await fs.mkdir(dir, { mode: 0o700 });
    const drives = new Map<string, RestoredDrive>();
    for (const d of o.point.disks) {
      const overlay = path.join(dir, `${d.id.replace(/[^A-Za-z0-9._-]/g, '_')}.overlay.qcow2`);
      await runProgram(o.qemuImg ?? 'qemu-img', ['create', '-q', '-f', 'qcow2', '-b', d.file, '-F', 'qcow2', overlay], {
        timeoutMs: 60_000,
      });
      drives.set(d.id, { file: overlay, format: 'qcow2' });
    }
    const launch = rewriteCommandLine(o.point.definition.commandLine, {
      name: `boot-test-${m.vm}`.slice(0, 64),
      runDir: dir,
      drives,
      network: 'none',
      accel,
      foreground: true,
    });
    qmpSocket = launch.qmpSocket;
    consoleLog = launch.consoleLog;
    await journal.write({
      op: 'boot-test',
      id: journal.id,
      pid: process.pid,
      startedAt: result.at,
      dir,
      pidFile: launch.pidFile,
      qmpSocket,
    });
    const seconds = Math.max(1, Math.ceil((deadline - Date.now()) / 1000));
    // coreutils timeout ends QEMU at the deadline whatever becomes of this process
    wrapper = spawn('timeout', ['--kill-after=5', String(seconds), launch.program, ...launch.args], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    wrapper.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-2000)));
    const exited = new Promise<void>((resolve) => wrapper!.once('close', () => resolve()));
    let ended = false;
    void exited.then(() => (ended = true));
    while (pid === undefined && Date.now() < deadline && !ended) {
      pid = await readPid(launch.pidFile);
      if (pid === undefined) await sleep(100);
    }
    if (pid === undefined) throw new Error(`QEMU did not start${stderr ? `: ${stderr.trim().slice(-400)}` : ''}`);
    result.timings.startMs = Date.now() - t0;
    result.step = 'boot';
    o.onProgress?.('boot');
    const alive = () => !ended && pidAlive(pid!);
    if (o.waitFor === 'console') {
      const re = new RegExp(o.marker!);
      for (;;) {
        const text = await fs.readFile(consoleLog, 'latin1').catch(() => '');
        if (re.test(text)) break;
        if (!alive())
          throw new Error(`the VM ended before the console showed ${o.marker}${stderr ? `: ${stderr.trim().slice(-300)}` : ''}`);
        if (Date.now() > deadline) throw new Error(`no console line matching ${o.marker} within the timeout`);
        await sleep(500);
      }
    } else {
      if (!launch.qgaSocket) throw new Error('the VM has no guest agent channel: wait for a console marker instead');
      const agent = await waitForAgent(launch.qgaSocket, deadline, alive);
      try {
        result.osinfo = (await agent.execute('guest-get-osinfo', undefined, { timeoutMs: 10_000 }).catch(() => undefined)) as
          Record<string, unknown> | undefined;
        if (o.command) {
          result.timings.upMs = Date.now() - t0;
          result.step = 'command';
          o.onProgress?.('command');
          const c0 = Date.now();
          const started = await agent.execute<{ pid: number }>('guest-exec', {
            path: o.command.path,
            arg: o.command.args ?? [],
            'capture-output': true,
          });
          for (;;) {
            const st = await agent.execute<{ exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }>(
              'guest-exec-status',
              { pid: started.pid },
            );
            if (st.exited) {
              const stdout = Buffer.from(st['out-data'] ?? '', 'base64').toString('utf8');
              const matched = o.command.expect === undefined || new RegExp(o.command.expect, 'm').test(stdout);
              result.command = {
                ...(st.exitcode !== undefined ? { exitcode: st.exitcode } : {}),
                stdout: stdout.slice(-4000),
                stderr: Buffer.from(st['err-data'] ?? '', 'base64')
                  .toString('utf8')
                  .slice(-2000),
                matched,
              };
              break;
            }
            if (Date.now() > deadline) throw new Error(`the check command ${o.command.path} did not end within the timeout`);
            await sleep(300);
          }
          result.timings.commandMs = Date.now() - c0;
          if (result.command.exitcode !== 0)
            throw new Error(`the check command ${o.command.path} exited with ${result.command.exitcode ?? 'no code'}`);
          if (!result.command.matched) throw new Error(`the check command's output does not match ${o.command.expect}`);
        }
      } finally {
        await agent.close();
      }
    }
    result.timings.upMs ??= Date.now() - t0;
    result.step = 'done';
    result.ok = true;
  } catch (err) {
    result.reason = (err as Error).message;
    if (err instanceof RestoreRefused && result.step === 'verify')
      result.reason = `the backup does not verify: ${err.message.replace(/^backup: /, '')}`;
  } finally {
    if (pid !== undefined) await stopQemu(pid, qmpSocket, 5000).catch(() => undefined);
    if (wrapper && wrapper.exitCode === null) wrapper.kill('SIGKILL');
    if (consoleLog)
      result.consoleTail = (await fs.readFile(consoleLog, 'latin1').catch(() => '')).slice(-2000).replace(/[^\t\n\x20-\x7e]/g, '');
    await fs.rm(dir, { recursive: true, force: true });
    await journal.end();
  }
  result.timings.totalMs = Date.now() - t0;
  result.record = path.join(o.point.vmDir, `${m.backupId}.boot-test.json`);
  await writeFileDurable(result.record, JSON.stringify(result, null, 2) + '\n').catch((err: Error) => {
    result.reason = `${result.reason ? `${result.reason}; ` : ''}the record could not be written: ${err.message}`;
    delete result.record;
  });
  return result;
}

/** qmp, for callers that inspect a boot test's VM while it runs (tests). */
export { qmp };
