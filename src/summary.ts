// One summary of a backup set, finished or failed, shaped for email, MQTT or HTTP nodes. It tells
// two things apart: what happened to the backups (published or not, where) and what happened to
// the VMs (back in their state, or what is left and what to do), and names the step that failed.
import { isDeliberate, type ExcludedBy } from './contract/exclusion';
import type { Consistency, CopiedVm, Method, SkippedVm } from './contract/types';

export interface VmSummary {
  vm: string;
  method?: Method;
  why?: string;
  consistency?: Consistency;
  bytes?: number;
  frozenMs?: number;
  downtimeMs?: number;
  /** where its backup was published */
  path?: string;
  /** the state post-snapshot returned it to */
  returnedTo?: string;
  warnings: string[];
}

/** A disk of a VM in the set that is not in its backup, who left it out and why. */
export interface ExcludedDiskSummary {
  vm: string;
  disk: string;
  reason: string;
  /** host (its configuration) or user (the exclude setting): a choice; hypervisor or product: not one, never ok */
  by: string;
  detail?: string;
}

export interface BackupSummary {
  /**
   * true only when every VM's backup was published, every VM is back in its state, and every disk
   * left out was left out by choice (the host's configuration or the user's exclude setting), named
   * in `excluded` and the text. A disk left out by anything else makes it false.
   */
  ok: boolean;
  backupId?: string;
  host?: string;
  /** the stage the set had reached (its `stage` field) */
  stage?: string;
  /** the step (node) that failed: enumerate, classify, prepare, snapshot, post-snapshot, copy */
  failedAt?: string;
  error?: string;
  vms: VmSummary[];
  /** VMs defined on the host but not backed up (unreachable, reported by policy) */
  skipped: SkippedVm[];
  /** disks of the set's VMs that are not in their backups */
  excluded: ExcludedDiskSummary[];
  /** what happened to the backups */
  backups: { published: boolean; count: number; where?: string; text: string };
  /** what happened to the VMs: every one back in its state, or what is still in place */
  vmState: { returned: boolean; left: string[]; text: string };
  totalBytes: number;
  durationMs?: number;
  text: string;
}

export interface SummaryContext {
  /** the step that failed (the node's own stage, not the input's) */
  failedAt?: string;
  /** what this set still has in place on the VMs (BackupHost.leftovers), when known */
  left?: readonly string[];
  /** the host's name when the set does not carry one (a failure at enumerate, before any set) */
  hostName?: string;
}

/** An error that says which VMs' backups were published although the stage failed afterwards. */
interface PublishedInfo {
  published?: { vm: string; path: string }[];
}

type LooseVm = Partial<CopiedVm> & { id: string };
type LooseSet = {
  backupId?: string;
  host?: { name?: string };
  stage?: string;
  createdAt?: string;
  repository?: string;
  vms?: LooseVm[];
  skipped?: SkippedVm[];
  hostSkipped?: { name: string; reason: string }[];
};

export function summarize(set: unknown, error?: Error, context: SummaryContext = {}): BackupSummary {
  const s = (set && typeof set === 'object' ? set : {}) as LooseSet;
  const root = s.repository ? s.repository.replace(/\/+$/, '') : undefined;
  const publishedOnError = (error as (Error & PublishedInfo) | undefined)?.published;
  const paths = new Map((publishedOnError ?? []).map((p) => [p.vm, p.path]));
  const vms: VmSummary[] = (Array.isArray(s.vms) ? s.vms : [])
    .filter((vm) => vm && typeof vm.id === 'string')
    .map((vm) => {
      const failed = (vm.reasons ?? []).filter((r) => !r.ok);
      const out: VmSummary = { vm: vm.id, warnings: Array.isArray(vm.warnings) ? vm.warnings : [] };
      if (vm.method) out.method = vm.method;
      if (vm.reasons)
        out.why = failed.length ? failed.map((r) => `${r.rule}: ${r.detail}`).join('; ') : 'every condition for an online backup holds';
      if (vm.unreachable) out.why = `unreachable: ${vm.unreachable.reason}`;
      if (vm.consistency) out.consistency = vm.consistency;
      if (vm.copy && !error) Object.assign(out, { bytes: vm.copy.bytes, path: root ? `${root}/${vm.copy.path}` : vm.copy.path });
      if (paths.has(vm.id)) out.path = paths.get(vm.id)!;
      if (vm.snapshot?.frozenMs !== undefined) out.frozenMs = vm.snapshot.frozenMs;
      if (vm.postSnapshot?.downtimeMs !== undefined) out.downtimeMs = vm.postSnapshot.downtimeMs;
      if (vm.postSnapshot?.returnedTo !== undefined) out.returnedTo = vm.postSnapshot.returnedTo;
      return out;
    });
  // what looks like a VM on the host but cannot be one is not backed up either: listed with the unreachable
  const notVms = (Array.isArray(s.hostSkipped) ? s.hostSkipped : []).map((h) => ({ vm: h.name, reason: h.reason }));
  const skipped = [...(Array.isArray(s.skipped) ? s.skipped : []), ...notVms];
  const excluded: ExcludedDiskSummary[] = (Array.isArray(s.vms) ? s.vms : []).flatMap((vm) =>
    (Array.isArray(vm?.disks) ? vm.disks : [])
      .filter((d) => d && d.included === false)
      .map((d) => ({
        vm: vm.id,
        disk: d.id,
        reason: d.excludedReason ?? 'excluded',
        by: d.excludedBy ?? 'unknown',
        ...(d.excludedDetail ? { detail: d.excludedDetail } : {}),
      })),
  );
  const notChosen = excluded.filter((e) => !isDeliberate(e.by as ExcludedBy));
  const totalBytes = vms.reduce((n, v) => n + (v.bytes ?? 0), 0);
  const copied = !error && s.stage === 'copied';
  const hostName = s.host?.name ?? context.hostName ?? 'host';

  const publishedVms = copied ? vms : vms.filter((v) => paths.has(v.vm));
  const where = root && s.host?.name ? `${root}/${s.host.name}/` : undefined;
  const backups =
    publishedVms.length > 0
      ? {
          published: true,
          count: publishedVms.length,
          ...(where ? { where } : {}),
          text: `${publishedVms.length === vms.length ? 'all' : publishedVms.length} of ${vms.length} VM(s) published${where ? ` under ${where}` : ''}: ${publishedVms.map((v) => v.path ?? v.vm).join(', ')}`,
        }
      : {
          published: false,
          count: 0,
          text: error
            ? 'none published (all or none: nothing partial is kept, earlier backups are untouched)'
            : vms.length === 0
              ? 'none: no VM to back up'
              : 'none published yet',
        };

  const left = [...(context.left ?? [])];
  const vmState =
    left.length > 0
      ? {
          returned: false,
          left,
          text: `NOT all back in their state: ${left.join('; ')}. The host keeps retrying what it can; the journal keeps the rest and recovery finishes it when the host node starts again (redeploy or restart Node-RED); if it persists, check the VM with its hypervisor (QMP query-status, query-block).`,
        }
      : {
          returned: true,
          left,
          text: error
            ? context.left
              ? 'every VM is back in its state (whatever this set did was undone)'
              : 'not known here (see the error)'
            : `every VM is back in its state${vms.some((v) => v.returnedTo) ? ` (${vms.map((v) => `${v.vm}: ${v.returnedTo ?? '?'}`).join(', ')})` : ''}`,
        };
  if (!vmState.returned || (error && !context.left)) vmState.returned = false;

  // never "ok" about nothing: VMs defined but not backed up, or no VM at all, is not a success
  // nor about a disk left out that nobody chose to leave out
  const ok = copied && vms.length > 0 && skipped.length === 0 && notChosen.length === 0 && vmState.returned;
  const durationMs = s.createdAt ? Date.now() - Date.parse(s.createdAt) : undefined;
  const failedAt = error ? (context.failedAt ?? s.stage ?? 'start') : undefined;
  const head = error
    ? `Backup ${s.backupId ?? ''} on ${hostName} FAILED at ${failedAt}: ${error.message}`
    : `Backup ${s.backupId ?? ''} on ${hostName}: ${vms.length} VM(s), ${formatBytes(totalBytes)}${copied ? '' : ` (at stage ${s.stage})`}${ok ? '' : ' NOT OK'}`;
  const lines = [
    `backups: ${backups.text}`,
    `VMs: ${vmState.text}`,
    ...(skipped.length - notVms.length
      ? [
          `NOT backed up (defined but unreachable): ${skipped
            .slice(0, skipped.length - notVms.length)
            .map((x) => `${x.vm} (${x.reason})`)
            .join('; ')}`,
        ]
      : []),
    ...(notVms.length ? [`NOT backed up (not a valid VM name): ${notVms.map((x) => x.reason).join('; ')}`] : []),
    ...(notChosen.length
      ? [
          `disks NOT backed up (not a choice of yours or the host): ${notChosen.map((e) => `${e.vm}/${e.disk} (by ${e.by}: ${e.detail ?? e.reason})`).join('; ')}`,
        ]
      : []),
    ...(excluded.length > notChosen.length
      ? [
          `disks left out by choice: ${excluded
            .filter((e) => isDeliberate(e.by as ExcludedBy))
            .map((e) => `${e.vm}/${e.disk} (by ${e.by}: ${e.detail ?? e.reason})`)
            .join('; ')}`,
        ]
      : []),
    ...(vms.length === 0 && skipped.length === 0 && !error ? ['no VM is defined on this host: nothing was backed up'] : []),
    ...vms.map(
      (v) =>
        `- ${v.vm}: ${v.method ?? '?'} (${v.consistency ?? '?'})${v.bytes !== undefined ? `, ${formatBytes(v.bytes)}` : ''}${v.why && v.method !== 'child-vm-snapshot' ? ` because ${v.why}` : ''}${v.warnings.length ? `; warnings: ${v.warnings.join('; ')}` : ''}`,
    ),
  ];
  return {
    ok,
    ...(s.backupId ? { backupId: s.backupId } : {}),
    ...(s.host?.name || context.hostName ? { host: s.host?.name ?? context.hostName } : {}),
    ...(s.stage ? { stage: s.stage } : {}),
    ...(failedAt ? { failedAt } : {}),
    ...(error ? { error: error.message } : {}),
    vms,
    skipped,
    excluded,
    backups,
    vmState,
    totalBytes,
    ...(durationMs !== undefined && Number.isFinite(durationMs) ? { durationMs } : {}),
    text: [head, ...lines].join('\n'),
  };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}
