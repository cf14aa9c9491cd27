// One virsh process kept open for many calls. A virsh process per call connects to libvirtd anew
// each time: 0.2 s a call on a busy host here. Two users: the calls inside a guest's frozen
// window (freeze, backup-begin, freeze status, thaw), and enumerate, whose queries on a host of
// 50 domains started ~170 virsh processes (VirshShell below).
//
// virsh reads commands from its stdin (its own command parser, not a shell). Each command is
// framed by marks on both of virsh's streams: `echo --err <id> begin__` and `echo <id> begin__`
// before it, the same with end__ after it. stdout between the marks is the command's output;
// stderr between them is its errors: a line "error: ..." there means it failed, whatever it
// printed (the streams are separate pipes, so each is read up to its own end mark). virsh's shell
// mode echoes each command line after its prompt; that line is taken off the output. (Not -q:
// quiet mode drops lines the callers read, "Froze 1 filesystem(s)", table headers.)
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { VirshError, virshErrorText, type Virsh, type VirshCall } from './virsh';

const SESSION_ENDED = 'the virsh session ended before answering';

interface Pending {
  args: readonly string[];
  id: string;
  command: string;
  timeoutMs: number;
  timer?: NodeJS.Timeout;
  resolve(out: string): void;
  reject(err: Error): void;
}

export class VirshSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private stdout = '';
  private stderr = '';
  private seq = 0;
  private closed = false;
  /** commands written, answered in order (virsh runs one line after the other) */
  private readonly pending: Pending[] = [];

  constructor(uri: string, program = 'virsh') {
    this.child = spawn(program, ['-c', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d;
      this.pump();
    });
    this.child.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      this.pump();
    });
    const gone = () => {
      this.closed = true;
      this.pump();
    };
    this.child.on('error', gone);
    this.child.on('close', gone);
    this.child.stdin.on('error', () => undefined);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** a command is in flight: another caller (a watchdog's thaw) must not queue behind it */
  get busy(): boolean {
    return this.pending.length > 0;
  }

  /** virsh's own quoting: single quotes; an argument it could not carry is refused */
  static quote(arg: string): string {
    if (/['\n\r\\]/.test(arg)) throw new Error(`virsh session: argument ${JSON.stringify(arg)} cannot be passed on a command line`);
    return `'${arg}'`;
  }

  /**
   * Run one command alone (refused while another is in flight: the frozen window's calls never
   * wait behind a hung one); resolves with its stdout when `success` matches it, else rejects.
   */
  async run(args: readonly string[], success: RegExp, timeoutMs: number): Promise<string> {
    if (this.busy) throw new Error('virsh session is busy');
    const out = await this.call(args, timeoutMs);
    if (success.test(out)) return out;
    throw new VirshError(args, `unexpected answer: ${out.trim().slice(0, 300) || '(nothing)'}`, 1);
  }

  /**
   * Run one command: its stdout, as `virsh <args>` would print it; rejects with VirshError when
   * virsh reports an error. Commands sent while others are in flight are written at once and
   * answered in order; each one's timeout runs from the answer before it. A timeout closes the
   * session: the commands behind it are rejected too ("session closed before ...").
   */
  call(args: readonly string[], timeoutMs: number): Promise<string> {
    if (this.closed) return Promise.reject(new Error('virsh session is closed'));
    let command: string;
    try {
      command = args.map(VirshSession.quote).join(' ');
    } catch (err) {
      return Promise.reject(err as Error);
    }
    // the marks are two words, so that only echo's output (joined by one space) holds them,
    // never the echoed command line ('a' 'b')
    const id = `__vmbackup_${process.pid}_${++this.seq}`;
    return new Promise<string>((resolve, reject) => {
      this.pending.push({ args, id, command, timeoutMs, resolve, reject });
      if (this.pending.length === 1) this.arm();
      this.child.stdin.write(
        `echo --err '${id}' 'begin__'\necho '${id}' 'begin__'\n${command}\necho --err '${id}' 'end__'\necho '${id}' 'end__'\n`,
      );
    });
  }

  private arm(): void {
    const head = this.pending[0];
    if (!head || head.timer) return;
    head.timer = setTimeout(() => {
      this.pending.shift();
      head.reject(new VirshError(head.args, `no answer from libvirtd within ${head.timeoutMs} ms`, null));
      this.close();
    }, head.timeoutMs);
  }

  /** Answers the commands whose both end marks arrived, in order. */
  private pump(): void {
    for (let head = this.pending[0]; head; head = this.pending[0]) {
      const out = cut(this.stdout, `${head.id} begin__\n`, `${head.id} end__`);
      const err = cut(this.stderr, `error: ${head.id} begin__\n`, `error: ${head.id} end__`);
      if (out && err) {
        this.stdout = this.stdout.slice(out.next);
        this.stderr = this.stderr.slice(err.next);
        this.pending.shift();
        clearTimeout(head.timer);
        if (/^error:/m.test(err.text)) head.reject(new VirshError(head.args, virshErrorText(err.text), 1));
        else head.resolve(commandOutput(out.text, head.command, `echo --err '${head.id}' 'end__'`));
        this.arm();
        continue;
      }
      if (!this.closed) return;
      this.pending.shift();
      clearTimeout(head.timer);
      // with what virsh said before it went (it exits when it cannot connect to libvirtd)
      const said = (err?.text ?? this.stderr).trim() ? `: ${virshErrorText(err?.text ?? this.stderr)}` : '';
      head.reject(new VirshError(head.args, `${SESSION_ENDED}${said}`, null));
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.child.stdin.end();
    setTimeout(() => this.child.kill('SIGTERM'), 2000).unref();
    this.pump();
  }
}

function cut(text: string, begin: string, end: string): { text: string; next: number } | undefined {
  const b = text.indexOf(begin);
  if (b < 0) return undefined;
  const e = text.indexOf(end, b + begin.length);
  return e < 0 ? undefined : { text: text.slice(b + begin.length, e), next: e + end.length };
}

/** The output between the marks without virsh's echo of the command line and of the end mark's command. */
function commandOutput(seg: string, command: string, endCommand: string): string {
  const endAt = seg.lastIndexOf(endCommand);
  if (endAt >= 0) seg = seg.slice(0, seg.lastIndexOf('\n', endAt) + 1);
  const nl = seg.indexOf('\n');
  if (nl >= 0 && seg.slice(0, nl).endsWith(command)) seg = seg.slice(nl + 1);
  return seg;
}

/**
 * A Virsh that sends its calls to one virsh process (calls made together are written together
 * and answered in order), for queries (list, dumpxml, domstate, ...). A call goes through
 * `fallback` (a virsh process of its own) when the session cannot carry it (an argument it cannot
 * quote, a call with an abort signal), or again when the session ended under it (libvirtd not
 * started or restarting: the fallback waits for it; an earlier call that hung), or when libvirtd
 * could not load its own schema (VirshError.schemaNotLoaded: the fallback runs it again): so only
 * for calls that are safe to send twice. close() ends the process.
 */
export class VirshShell implements Virsh {
  readonly uri: string;
  private session: VirshSession | undefined;
  /** calls this shell sent through its session, and through the fallback */
  readonly sent = { session: 0, fallback: 0 };

  constructor(
    private readonly fallback: Virsh,
    private readonly program = 'virsh',
  ) {
    this.uri = fallback.uri;
  }

  async run(args: readonly string[], call: VirshCall = {}): Promise<string> {
    if (call.signal || !args.every(quotable)) return this.viaFallback(args, call);
    if (!this.session || this.session.isClosed) this.session = new VirshSession(this.uri, this.program);
    const session = this.session;
    try {
      this.sent.session++;
      return await session.call(args, call.timeoutMs ?? 60_000);
    } catch (err) {
      if (!(err instanceof VirshError)) throw err;
      // the command did nothing (VirshError.schemaNotLoaded); the fallback runs it again
      if (err.schemaNotLoaded) return this.viaFallback(args, call);
      if (!(err.noDaemon || err.detail.startsWith(SESSION_ENDED) || /no valid connection|reconnected to the hypervisor/i.test(err.detail)))
        throw err;
      session.close();
      return this.viaFallback(args, call);
    }
  }

  private viaFallback(args: readonly string[], call: VirshCall): Promise<string> {
    this.sent.fallback++;
    return this.fallback.run(args, call);
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

function quotable(arg: string): boolean {
  try {
    VirshSession.quote(arg);
    return true;
  } catch {
    return false;
  }
}
