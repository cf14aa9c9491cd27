// Restore: any point of any chain of a VM's backups, to a directory, in place over the VM's own
// disks, or as a new VM (plain QEMU or libvirt); single files out of a disk (files.ts); a boot
// test that proves a backup starts (boot-test.ts). The node and the command both call these.
import { formatBytes } from '../summary';
import type { RestoreContext, RestoreResult } from './context';
import { restoreToDirectory } from './directory';
import { restoreInPlace } from './in-place';
import { restoreNewVm } from './new-vm';
import { openPoint } from './point';
import { bootTest, type BootTestResult } from './boot-test';
import { restoreFiles, type FileRestoreResult } from './files';
import { checkBootTestRequest, checkFileRestoreRequest, checkRestoreRequest, type RestoreRequest } from './request';

export type { RestoreContext, RestoreResult, RestoredDisk, NewVm } from './context';
export type { RestoreProgress } from './images';
export { RestoreRefused } from './refused';
export { checkRestoreRequest, restoreRequestSchema, RESTORE_MODES, type RestoreRequest } from './request';
export { checkRoots } from './targets';
export { recoverRestores, type RestoreRecovery } from './recover';
export { openPoint, readPoint, type BackupPoint, type PointRef } from './point';

/** Check the request (refused naming the field before anything is written), find the point, restore. */
export async function restore(ctx: RestoreContext, doc: unknown): Promise<RestoreResult> {
  const t0 = Date.now();
  const req: RestoreRequest = checkRestoreRequest(doc);
  const point = await openPoint(ctx.repositoryRoot, {
    host: req.host ?? ctx.hostName,
    vm: req.vm,
    ...(req.backupId ? { backupId: req.backupId } : {}),
  });
  const disks = req.disks ? { disks: req.disks } : {};
  // {vm}, {backupId} and {host} in a target or name: one setting serves every VM and every point
  const fill = (s: string) =>
    s.replace(
      /\{(vm|backupId|host)\}/g,
      (_m, k: string) => ({ vm: point.manifest.vm, backupId: point.manifest.backupId, host: point.manifest.host })[k] ?? '',
    );
  if (req.target) req.target = fill(req.target);
  if (req.name) req.name = fill(req.name);
  switch (req.mode) {
    case 'directory':
      return restoreToDirectory(ctx, { point, target: req.target ?? '', ...disks, ...(req.format ? { format: req.format } : {}) }, t0);
    case 'in-place':
      return restoreInPlace(ctx, { point, ...disks, ...(req.keepOld !== undefined ? { keepOld: req.keepOld } : {}) }, t0);
    case 'new-vm':
      return restoreNewVm(
        ctx,
        {
          point,
          target: req.target ?? '',
          ...disks,
          ...(req.format ? { format: req.format } : {}),
          ...(req.name ? { name: req.name } : {}),
          ...(req.hypervisor ? { hypervisor: req.hypervisor } : {}),
          ...(req.start !== undefined ? { start: req.start } : {}),
          ...(req.resume !== undefined ? { resume: req.resume } : {}),
          ...(req.network ? { network: req.network } : {}),
          ...(req.instant ? { instant: true } : {}),
        },
        t0,
      );
  }
}

export interface RestoreSummary {
  ok: boolean;
  mode?: string;
  host?: string;
  vm?: string;
  backupId?: string;
  /** the field a refusal names */
  field?: string;
  error?: string;
  target?: string;
  disks: number;
  bytes: number;
  warnings: string[];
  durationMs?: number;
  text: string;
}

/** One summary of a restore, finished or failed, shaped like the backup's for email, MQTT or HTTP nodes. */
export function summarizeRestore(
  result: RestoreResult | undefined,
  err?: Error & { field?: string },
  request?: Partial<RestoreRequest>,
): RestoreSummary {
  if (!result) {
    const what = request?.vm
      ? `${request.mode ?? 'restore'} of ${request.vm}${request.backupId ? ` (${request.backupId})` : ''}`
      : 'restore';
    return {
      ok: false,
      ...(request?.mode ? { mode: request.mode } : {}),
      ...(request?.vm ? { vm: request.vm } : {}),
      ...(err?.field ? { field: err.field } : {}),
      error: err?.message ?? 'failed',
      disks: 0,
      bytes: 0,
      warnings: [],
      text: `FAILED ${what}: ${err?.message ?? 'failed'}`,
    };
  }
  const bytes = result.disks.reduce((n, d) => n + d.bytes, 0);
  const where =
    result.mode === 'in-place'
      ? 'over its own disks'
      : result.mode === 'new-vm' && result.newVm
        ? `as new ${result.newVm.hypervisor} VM ${result.newVm.name} (${result.newVm.started ? (result.newVm.resumed ? 'resumed from its saved memory' : 'started') : 'left off'}) in ${result.target}`
        : `to ${result.target}`;
  const chain = result.chain.length > 1 ? ` through ${result.chain.length - 1} parent${result.chain.length > 2 ? 's' : ''}` : '';
  return {
    ok: true,
    mode: result.mode,
    host: result.host,
    vm: result.vm,
    backupId: result.backupId,
    ...(result.target ? { target: result.target } : {}),
    disks: result.disks.length,
    bytes,
    warnings: result.warnings,
    durationMs: result.ms,
    text: `OK restored ${result.vm} from backup ${result.backupId} (${result.method}, ${result.consistency}${chain}) ${where}: ${result.disks.length} disk${result.disks.length === 1 ? '' : 's'}, ${formatBytes(bytes)} in ${(result.ms / 1000).toFixed(1)} s${result.warnings.length ? `; ${result.warnings.join('; ')}` : ''}`,
  };
}

export { bootTest, type BootTestResult };

/** A boot test asked for by a request (the node's settings with msg.payload over them). */
export async function bootTestRequest(
  ctx: Pick<RestoreContext, 'repositoryRoot' | 'hostName' | 'journalDir' | 'qemuImg'> & {
    workDir: string;
    onProgress?: (step: string) => void;
  },
  doc: unknown,
): Promise<BootTestResult> {
  const req = checkBootTestRequest(doc);
  const point = await openPoint(ctx.repositoryRoot, {
    host: req.host ?? ctx.hostName,
    vm: req.vm,
    ...(req.backupId ? { backupId: req.backupId } : {}),
  });
  return bootTest({
    point,
    workDir: ctx.workDir,
    journalDir: ctx.journalDir,
    ...(req.timeout !== undefined ? { timeoutMs: req.timeout * 1000 } : {}),
    ...(req.waitFor ? { waitFor: req.waitFor } : {}),
    ...(req.marker ? { marker: req.marker } : {}),
    ...(req.command
      ? {
          command: {
            path: req.command,
            ...(req.args ? { args: req.args } : {}),
            ...(req.expect !== undefined && req.expect !== '' ? { expect: req.expect } : {}),
          },
        }
      : {}),
    ...(req.accel ? { accel: req.accel } : {}),
    ...(req.verify !== undefined ? { verify: req.verify } : {}),
    ...(ctx.qemuImg ? { qemuImg: ctx.qemuImg } : {}),
    ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
  });
}

/** The boot test's summary: pass or fail, with timings, for people and alerts. */
export function summarizeBootTest(
  r: BootTestResult | undefined,
  err?: Error & { field?: string },
): { ok: boolean; text: string; field?: string } {
  if (!r) return { ok: false, text: `FAILED boot test: ${err?.message ?? 'failed'}`, ...(err?.field ? { field: err.field } : {}) };
  const t = r.timings;
  const up = t.upMs !== undefined ? `, up after ${(t.upMs / 1000).toFixed(1)} s` : '';
  const cmd = r.command ? `, check command exit ${r.command.exitcode ?? '?'}${r.command.matched ? '' : ' (output did not match)'}` : '';
  return {
    ok: r.ok,
    text: `${r.ok ? 'PASSED' : 'FAILED'} boot test of ${r.vm} backup ${r.backupId} (${r.accel}${up}${cmd}, ${(t.totalMs / 1000).toFixed(1)} s in all)${r.ok ? '' : `: ${r.reason}`}`,
  };
}

export { restoreFiles, type FileRestoreResult };
export type { ListedEntry } from './files';

/** A file restore asked for by a request (the node's settings with msg.payload over them). */
export async function fileRestoreRequest(
  ctx: Pick<RestoreContext, 'repositoryRoot' | 'hostName' | 'roots'> & { onProgress?: (step: string) => void },
  doc: unknown,
): Promise<FileRestoreResult> {
  const req = checkFileRestoreRequest(
    typeof doc === 'object' && doc !== null && typeof (doc as { paths?: unknown }).paths === 'string'
      ? { ...doc, paths: [(doc as { paths: string }).paths] }
      : doc,
  );
  const point = await openPoint(ctx.repositoryRoot, {
    host: req.host ?? ctx.hostName,
    vm: req.vm,
    ...(req.backupId ? { backupId: req.backupId } : {}),
  });
  const action = req.action ?? 'extract';
  const fill = (s: string) =>
    s.replace(
      /\{(vm|backupId|host)\}/g,
      (_m, k: string) => ({ vm: point.manifest.vm, backupId: point.manifest.backupId, host: point.manifest.host })[k] ?? '',
    );
  return restoreFiles({
    point,
    paths: [...req.paths],
    action,
    roots: ctx.roots,
    ...(req.disk ? { disk: req.disk } : {}),
    ...(req.filesystem ? { filesystem: req.filesystem } : {}),
    ...(action === 'extract' ? { output: { kind: req.output ?? 'directory', target: fill(req.target ?? '') } } : {}),
    ...(req.verify !== undefined ? { verify: req.verify } : {}),
    ...(req.accel ? { accel: req.accel } : {}),
    ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
  });
}

export function summarizeFileRestore(
  r: FileRestoreResult | undefined,
  err?: Error & { field?: string },
): { ok: boolean; text: string; field?: string } {
  if (!r) return { ok: false, text: `FAILED file restore: ${err?.message ?? 'failed'}`, ...(err?.field ? { field: err.field } : {}) };
  const what =
    r.action === 'list'
      ? `listed ${r.entries?.length ?? 0} entries`
      : `extracted ${(r.extracted ?? []).map((e) => `${e.path} (${e.files} file${e.files === 1 ? '' : 's'})`).join(', ')} to ${r.output?.target}`;
  return {
    ok: true,
    text: `OK ${what} from ${r.vm} backup ${r.backupId} disk ${r.disk} (${r.filesystem}) in ${(r.ms / 1000).toFixed(1)} s${r.skipped.length ? `; left out: ${r.skipped.slice(0, 5).join('; ')}${r.skipped.length > 5 ? ` and ${r.skipped.length - 5} more` : ''}` : ''}`,
  };
}
