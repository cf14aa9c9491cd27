// libvirt is driven only through `virsh`, with argument vectors (no shell), against one URI.
// libvirtd owns each domain's monitor and agent sockets: a second client on them would queue
// behind libvirt and never be served, so nothing here opens them.
import { ProgramFailed, runProgram } from '../../util/run';

export interface VirshCall {
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What the provider needs of virsh; a unit test passes a recorded one. */
export interface Virsh {
  readonly uri: string;
  /** stdout of `virsh -c <uri> <args...>`; rejects with VirshError */
  run(args: readonly string[], call?: VirshCall): Promise<string>;
}

export class VirshError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly detail: string,
    readonly code: number | null,
  ) {
    super(`virsh ${args.slice(0, 2).join(' ')}: ${detail}`);
    this.name = 'VirshError';
  }

  /** libvirt's own words for a domain that has no QEMU process */
  get notRunning(): boolean {
    return /domain is not running|not running/i.test(this.detail);
  }

  get noAgent(): boolean {
    return /guest agent is not configured|agent is not connected|guest agent is not responding|agent not available|agent command timed out/i.test(
      this.detail,
    );
  }

  get noDomain(): boolean {
    return /failed to get domain|domain not found|no domain with matching/i.test(this.detail);
  }

  /**
   * virsh could not reach libvirtd at all (not running, restarting): the command was never sent,
   * so running it again is safe. A connection lost while a command ran is not this case.
   */
  get noDaemon(): boolean {
    return /failed to connect to the hypervisor/i.test(this.detail);
  }

  /**
   * libvirtd could not load its own RelaxNG schema to validate our XML ("Unable to parse RNG
   * .../domainbackup.rng: Error type 'unsignedInt' is not exported by type library ..."). libxml2
   * before 2.11 (Debian 12 has 2.9.14) fills its table of XML Schema types lazily and without a
   * lock: when a freshly started libvirtd validates two documents at once (backup-begin for two
   * domains), one thread can look a type up while another starts the table anew. Seen once in CI
   * here. libvirtd parses and validates the document before it acts on it, so the command did
   * nothing and running it again is safe; the table is whole once the other thread is done.
   */
  get schemaNotLoaded(): boolean {
    return /unable to parse RNG/i.test(this.detail);
  }
}

/** How often a command rejected by schemaNotLoaded is run again, SCHEMA_RETRY_MS apart. */
export const SCHEMA_RETRIES = 3;
const SCHEMA_RETRY_MS = 200;

/**
 * How long a call waits for libvirtd to come back before failing. A restart of libvirtd
 * (package upgrade, admin) takes 1-3 s here and leaves its domains, their jobs and our NBD
 * exports running (docs/faults.md, libvirt); a backup should ride over it, not fail.
 */
export const DAEMON_WAIT_MS = 10_000;

/** The "error: ..." lines virsh prints, without the prefix. */
export function virshErrorText(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
  const errors = lines.filter((l) => l.startsWith('error:')).map((l) => l.replace(/^error:\s*/, ''));
  return (errors.length ? errors : lines).join(': ').slice(0, 900) || 'failed without a message';
}

/** A libvirt URI: qemu:///system, qemu:///session, qemu+ssh://user@host/system, ... */
export function checkUri(uri: unknown): string {
  if (typeof uri !== 'string' || !/^[a-z][a-z0-9+]*:\/\/[^\s]*$/.test(uri) || uri.length > 512) {
    throw new Error(`uri: "${String(uri)}" is not a libvirt URI (e.g. qemu:///system)`);
  }
  return uri;
}

export class VirshRunner implements Virsh {
  constructor(
    readonly uri: string,
    private readonly program = 'virsh',
    private readonly defaultTimeoutMs = 60_000,
  ) {
    checkUri(uri);
  }

  async run(args: readonly string[], call: VirshCall = {}): Promise<string> {
    const timeoutMs = call.timeoutMs ?? this.defaultTimeoutMs;
    // never past the call's own timeout: a thaw's short timeout stays short (its caller retries)
    const deadline = Date.now() + Math.min(timeoutMs, DAEMON_WAIT_MS);
    let schemaRetries = 0;
    for (;;) {
      try {
        return await this.once(args, timeoutMs, call.signal);
      } catch (err) {
        if (!(err instanceof VirshError) || call.signal?.aborted) throw err;
        if (err.schemaNotLoaded) {
          if (schemaRetries++ >= SCHEMA_RETRIES || Date.now() + SCHEMA_RETRY_MS > deadline) {
            throw new VirshError(
              args,
              `${err.detail} (libvirtd rejected the document before acting on it; ran ${schemaRetries} times)`,
              err.code,
            );
          }
          await new Promise((r) => setTimeout(r, SCHEMA_RETRY_MS));
          continue;
        }
        if (!err.noDaemon) throw err;
        if (Date.now() + 250 > deadline) {
          throw new VirshError(
            args,
            `libvirtd does not answer on ${this.uri} (waited ${Math.min(timeoutMs, DAEMON_WAIT_MS)} ms): ${err.detail}`,
            err.code,
          );
        }
        await new Promise((r) => setTimeout(r, 250));
      }
    }
  }

  private async once(args: readonly string[], timeoutMs: number, signal?: AbortSignal): Promise<string> {
    const full = ['-c', this.uri, ...args];
    const started = Date.now();
    try {
      const { stdout } = await runProgram(this.program, full, { timeoutMs, ...(signal ? { signal } : {}) });
      return stdout;
    } catch (err) {
      if (err instanceof ProgramFailed) {
        // killed at our timeout: say so (libvirt itself waits 30 s for a domain's job lock)
        const timedOut = err.code === null && !err.stderr.trim() && Date.now() - started >= timeoutMs;
        throw new VirshError(args, timedOut ? `no answer from libvirtd within ${timeoutMs} ms` : virshErrorText(err.stderr), err.code);
      }
      throw err;
    }
  }
}
