/**
 * Error classes of the QEMU protocol clients (QMP and the guest agent).
 *
 * Every error thrown or used to reject by this package is an instance of
 * {@link QemuProtocolError}; callers can branch on the subclass.
 */

/** Base class of every error raised by the QMP / QGA protocol layer. */
export class QemuProtocolError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server answered a command with `{"error": {"class", "desc"}}`. */
export class QmpError extends QemuProtocolError {
  /** QAPI error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`. */
  readonly errorClass: string;
  /** Human readable description sent by the server. */
  readonly desc: string;
  /** Name of the command that failed. */
  readonly command: string;

  constructor(command: string, errorClass: string, desc: string) {
    super(`${command}: ${errorClass}: ${desc}`);
    this.command = command;
    this.errorClass = errorClass;
    this.desc = desc;
  }
}

/** A command (or an awaited event) did not complete within its time limit. */
export class QmpTimeoutError extends QemuProtocolError {
  /** Command name, or `event <NAME>` for {@link QmpClient.waitEvent}. */
  readonly command: string;
  readonly timeoutMs: number;
  /**
   * `queued`: the command never left the client (it was still waiting for an
   * earlier command); `sent`: it was written and no reply came in time.
   */
  readonly phase: 'queued' | 'sent' | 'waiting';

  constructor(command: string, timeoutMs: number, phase: 'queued' | 'sent' | 'waiting' = 'sent') {
    const where = phase === 'queued' ? ' (still queued, never sent)' : '';
    super(`${command} timed out after ${timeoutMs} ms${where}`);
    this.command = command;
    this.timeoutMs = timeoutMs;
    this.phase = phase;
  }
}

/** The socket could not be opened (ENOENT, ECONNREFUSED, EACCES, connect timeout, ...). */
export class QmpConnectError extends QemuProtocolError {
  readonly socketPath: string;
  /** errno code of the underlying failure if any (e.g. `ENOENT`). */
  readonly code?: string;

  constructor(socketPath: string, message: string, options?: { cause?: unknown; code?: string }) {
    super(`cannot connect to ${socketPath}: ${message}`, options);
    this.socketPath = socketPath;
    this.code = options?.code;
  }
}

/** The connection is closed (by us or by the peer); pending and new commands reject with this. */
export class QmpConnectionClosedError extends QemuProtocolError {
  /** The command that was pending / attempted, if any. */
  readonly command?: string;

  constructor(message: string, options?: { cause?: unknown; command?: string }) {
    super(options?.command ? `${options.command}: ${message}` : message, options);
    this.command = options?.command;
  }
}

/** The QMP greeting or the `qmp_capabilities` negotiation failed. */
export class QmpNegotiationError extends QemuProtocolError {}

/** The peer sent bytes that do not form a JSON object. Reported, never fatal. */
export class QmpParseError extends QemuProtocolError {
  /** The offending text (truncated to 200 characters). */
  readonly raw: string;

  constructor(message: string, raw: string, options?: { cause?: unknown }) {
    super(message, options);
    this.raw = raw.length > 200 ? `${raw.slice(0, 200)}...` : raw;
  }
}

/**
 * The guest agent did not answer the `guest-sync` handshake in time: it is not
 * running in the guest, the guest is not booted / is paused, or another client
 * currently holds the (single-client) agent channel.
 */
export class GuestAgentUnavailableError extends QemuProtocolError {
  readonly socketPath: string;

  constructor(socketPath: string, message: string, options?: { cause?: unknown }) {
    super(`guest agent at ${socketPath} unavailable: ${message}`, options);
    this.socketPath = socketPath;
  }
}
