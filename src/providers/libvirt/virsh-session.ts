// One virsh process kept open for the calls inside a guest's frozen window (freeze, backup-begin,
// freeze status, thaw). A virsh process per call connects to libvirtd anew each time: 0.2 s a
// call on a busy host here, and four of them were most of the frozen window. virsh reads commands
// from its stdin (its own command parser, not a shell); after each command we send `echo <mark>`
// and read its stdout up to that line. The commands used here print a known line on success, so a
// missing line is a failure, whose text is what virsh wrote to stderr meanwhile. (Not -q: quiet
// mode drops those very lines, "Froze 1 filesystem(s)".)
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { VirshError, virshErrorText } from './virsh';

export class VirshSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private stdout = '';
  private stderr = '';
  private seq = 0;
  private closed = false;
  private waiter: (() => void) | undefined;
  /** a command is in flight: another caller (a watchdog's thaw) must not queue behind it */
  busy = false;

  constructor(uri: string, program = 'virsh') {
    this.child = spawn(program, ['-c', uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d;
      this.waiter?.();
    });
    this.child.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-8192);
    });
    const gone = () => {
      this.closed = true;
      this.waiter?.();
    };
    this.child.on('error', gone);
    this.child.on('close', gone);
    this.child.stdin.on('error', () => undefined);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** virsh's own quoting: single quotes; an argument it could not carry is refused */
  static quote(arg: string): string {
    if (/['\n\r\\]/.test(arg)) throw new Error(`virsh session: argument ${JSON.stringify(arg)} cannot be passed on a command line`);
    return `'${arg}'`;
  }

  /** Run one command; resolves with its stdout when `success` matches it, else rejects with virsh's error. */
  async run(args: readonly string[], success: RegExp, timeoutMs: number): Promise<string> {
    if (this.closed) throw new Error('virsh session is closed');
    if (this.busy) throw new Error('virsh session is busy');
    // virsh echoes each command line after its prompt: the mark is two words, so that only the
    // output of echo (joined by one space) holds it, never the echoed command ('a' 'b')
    const id = `__vmbackup_${process.pid}_${++this.seq}`;
    const mark = `${id} end__`;
    const line = `${args.map(VirshSession.quote).join(' ')}\necho '${id}' 'end__'\n`;
    // busy only once the command line is made: a refused argument leaves the session usable
    this.busy = true;
    this.stdout = '';
    this.stderr = '';
    try {
      this.child.stdin.write(line);
      const out = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.close();
          reject(new VirshError(args, `no answer within ${timeoutMs} ms`, null));
        }, timeoutMs);
        this.waiter = () => {
          const at = this.stdout.indexOf(mark);
          if (at >= 0) {
            clearTimeout(timer);
            resolve(this.stdout.slice(0, at));
          } else if (this.closed) {
            clearTimeout(timer);
            reject(new VirshError(args, virshErrorText(this.stderr) || 'virsh exited', null));
          }
        };
        this.waiter();
      });
      if (success.test(out)) return out;
      // stderr travels on its own pipe: give it a moment to arrive
      await new Promise((r) => setTimeout(r, 30));
      throw new VirshError(args, virshErrorText(this.stderr), 1);
    } finally {
      this.waiter = undefined;
      this.busy = false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.child.stdin.end();
    setTimeout(() => this.child.kill('SIGTERM'), 2000).unref();
  }
}
