// One error type for everything the Hyper-V provider can fail at, carrying what PowerShell said.

export type HyperVErrorCode =
  /** the script ran and reported a PowerShell error (message, category, cmdlet below) */
  | 'script'
  /** the script did not finish within its time */
  | 'timeout'
  /** powershell.exe could not be started, or died without a JSON answer */
  | 'spawn'
  /** the SSH connection, session or file transfer failed */
  | 'ssh'
  /** the answer was not the JSON the script promises */
  | 'protocol'
  /** a value handed to the provider was refused before anything ran */
  | 'invalid-argument'
  /** the VM is in a shape this provider does not back up (documented limitation) */
  | 'unsupported'
  /** the result contradicts what the operation must produce */
  | 'inconsistent';

export interface HyperVErrorDetails {
  script?: string | undefined;
  category?: string | undefined;
  fullyQualifiedErrorId?: string | undefined;
  cmdlet?: string | undefined;
  exceptionType?: string | undefined;
  exitCode?: number | null | undefined;
  stderr?: string | undefined;
  warnings?: string[] | undefined;
  cause?: unknown;
}

export class HyperVError extends Error {
  readonly code: HyperVErrorCode;
  readonly script?: string;
  readonly category?: string;
  readonly fullyQualifiedErrorId?: string;
  readonly cmdlet?: string;
  readonly exceptionType?: string;
  readonly exitCode?: number | null;
  readonly stderr?: string;
  readonly warnings: string[];

  constructor(code: HyperVErrorCode, message: string, details: HyperVErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = 'HyperVError';
    this.code = code;
    this.warnings = details.warnings ?? [];
    if (details.script !== undefined) this.script = details.script;
    if (details.category) this.category = details.category;
    if (details.fullyQualifiedErrorId) this.fullyQualifiedErrorId = details.fullyQualifiedErrorId;
    if (details.cmdlet) this.cmdlet = details.cmdlet;
    if (details.exceptionType) this.exceptionType = details.exceptionType;
    if (details.exitCode !== undefined) this.exitCode = details.exitCode;
    if (details.stderr) this.stderr = details.stderr;
  }
}
