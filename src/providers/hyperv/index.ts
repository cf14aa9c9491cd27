// Hyper-V provider: backs up the VMs of a Hyper-V host from the host side with WMI recovery
// snapshots (application-consistent ones quiesce the guest through its own VSS / fsfreeze) and
// Resilient Change Tracking, driven by small PowerShell scripts shipped in ./scripts; disks are
// read out of the snapshot by our VHDX reader and written as qcow2 links. See docs/hyperv.md.
import type { HostProvider } from '../provider';
import { HyperVError } from './errors';
import { HyperVProvider } from './provider';
import { LocalPowerShellRunner, type PowerShellRunner } from './runner';
import { SshPowerShellRunner, type SshClientFactory } from './ssh-runner';
import type { SshTarget } from '../ssh-target';

export interface HyperVOptions {
  hostName: string;
  mode: 'local' | 'ssh';
  ssh?: SshTarget;
  /** default powershell.exe */
  powershell?: string;
  /** per script run; default 600000 (10 minutes) */
  timeoutMs?: number;
  /** SSH mode: a fixed Windows folder for the uploaded scripts instead of a fresh one in the user's home */
  remoteScriptsDir?: string;
  /** where the .ps1 files are on this machine (default: shipped next to this module) */
  scriptsDir?: string;
  /** replaces the runner built from `mode` (tests, or callers with their own transport) */
  runner?: PowerShellRunner;
  /** SSH mode, tests: replaces ssh2's Client */
  sshClientFactory?: SshClientFactory;
}

export const DEFAULT_TIMEOUT_MS = 600_000;

/**
 * The runner `createHyperVProvider` would use: also what findRecoveryCheckpoints and
 * removeLeftoverCheckpoints take (or use `provider.runner` of a HyperVProvider).
 */
export function createRunner(opts: HyperVOptions): PowerShellRunner {
  if (opts.runner) return opts.runner;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const common = {
    ...(opts.powershell !== undefined ? { powershell: opts.powershell } : {}),
    ...(opts.scriptsDir !== undefined ? { scriptsDir: opts.scriptsDir } : {}),
    timeoutMs,
  };
  if (opts.mode === 'local') return new LocalPowerShellRunner(common);
  if (opts.mode === 'ssh') {
    if (!opts.ssh)
      throw new HyperVError('invalid-argument', 'hyperv.ssh: host, username and password or privateKey are required in SSH mode');
    return new SshPowerShellRunner({
      ...common,
      ssh: opts.ssh,
      ...(opts.remoteScriptsDir !== undefined ? { remoteScriptsDir: opts.remoteScriptsDir } : {}),
      ...(opts.sshClientFactory ? { clientFactory: opts.sshClientFactory } : {}),
    });
  }
  throw new HyperVError('invalid-argument', `hyperv.mode: "${String(opts.mode)}" is not local or ssh`);
}

export { createRunner as createHyperVRunner };

export function createHyperVProvider(opts: HyperVOptions): HostProvider {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs < 1000)
    throw new HyperVError('invalid-argument', `hyperv.timeoutMs: ${String(timeoutMs)} is not a time of at least 1000 ms`);
  return new HyperVProvider(createRunner(opts), { timeoutMs });
}

export { HyperVError, type HyperVErrorCode } from './errors';
export { HyperVProvider, checkSignature } from './provider';
export {
  LocalPowerShellRunner,
  HOST_SCRIPTS,
  SCRIPT_FILES,
  POWERSHELL_FLAGS,
  encodeArgs,
  decodeArgs,
  powershellArgs,
  interpretRun,
  defaultScriptsDir,
  type PowerShellRunner,
  type ScriptName,
  type ScriptParams,
  type RunOptions,
  type RawRun,
  type SpawnFn,
} from './runner';
export {
  SshPowerShellRunner,
  sshCommandLine,
  windowsToSftpPath,
  sftpToWindowsPath,
  sshFingerprint,
  type SshClientFactory,
} from './ssh-runner';
export { VhdxReader, crc32c, normaliseRanges, type RandomAccessFile, type Range } from './vhdx';
export { copyRangesToQcow2, alignRanges } from './disk-copy';
export { extractVmFiles, embedVmFiles, type VmFile } from './vm-files';
export { decodeStderr, decodeOem } from './oem';
export { mapHost, rctRecords, trackingOf, changedRanges, configurationVersion, type HostFacts, type RctRecord } from './rct';
export {
  findRecoveryCheckpoints,
  removeLeftoverCheckpoints,
  mapLeftovers,
  type LeftoverCheckpoint,
  type RecoveryOptions,
  type RemoveLeftoversOptions,
  type RemoveLeftoversResult,
} from './recovery';
export {
  mapEnumeration,
  mapVm,
  mapState,
  mapAgent,
  parseKvpItems,
  parseGuestVolumes,
  overlaysFromCheckpoint,
  GUEST_VOLUMES_KEY,
} from './parse';
