// One summary of a backup set, finished or failed, shaped for email, MQTT or HTTP nodes.
export interface VmSummary {
  vm: string;
  method?: string;
  why?: string;
  consistency?: string;
  bytes?: number;
  frozenMs?: number;
  downtimeMs?: number;
  path?: string;
  warnings: string[];
}

export interface BackupSummary {
  ok: boolean;
  backupId?: string;
  host?: string;
  stage?: string;
  error?: string;
  vms: VmSummary[];
  totalBytes: number;
  durationMs?: number;
  text: string;
}

interface LooseVm {
  id: string;
  method?: string;
  consistency?: string;
  reasons?: { rule: string; ok: boolean; detail: string }[];
  warnings?: string[];
  snapshot?: { frozenMs?: number };
  postSnapshot?: { downtimeMs?: number };
  copy?: { bytes: number; path: string };
}

export function summarize(set: unknown, error?: Error): BackupSummary {
  const s = (set && typeof set === 'object' ? set : {}) as { backupId?: string; host?: { name?: string }; stage?: string; createdAt?: string; repository?: string; vms?: LooseVm[] };
  const vms: VmSummary[] = (Array.isArray(s.vms) ? s.vms : []).filter((vm) => vm && typeof vm.id === 'string').map((vm) => {
    const failed = (vm.reasons ?? []).filter((r) => !r.ok);
    const out: VmSummary = { vm: vm.id, warnings: Array.isArray(vm.warnings) ? vm.warnings : [] };
    if (vm.method) out.method = vm.method;
    if (vm.reasons) out.why = failed.length ? failed.map((r) => `${r.rule}: ${r.detail}`).join('; ') : 'every condition for an online backup holds';
    if (vm.consistency) out.consistency = vm.consistency;
    if (vm.copy) Object.assign(out, { bytes: vm.copy.bytes, path: s.repository ? `${s.repository.replace(/\/+$/, '')}/${vm.copy.path}` : vm.copy.path });
    if (vm.snapshot?.frozenMs !== undefined) out.frozenMs = vm.snapshot.frozenMs;
    if (vm.postSnapshot?.downtimeMs !== undefined) out.downtimeMs = vm.postSnapshot.downtimeMs;
    return out;
  });
  const totalBytes = vms.reduce((n, v) => n + (v.bytes ?? 0), 0);
  const ok = !error && s.stage === 'copied';
  const durationMs = s.createdAt ? Date.now() - Date.parse(s.createdAt) : undefined;
  const head = error
    ? `Backup ${s.backupId ?? ''} on ${s.host?.name ?? 'host'} FAILED at ${s.stage ?? 'start'}: ${error.message}`
    : `Backup ${s.backupId ?? ''} on ${s.host?.name ?? 'host'}: ${vms.length} VM(s), ${formatBytes(totalBytes)}${ok ? '' : ` (at stage ${s.stage})`}`;
  const lines = vms.map((v) => `- ${v.vm}: ${v.method ?? '?'} (${v.consistency ?? '?'})${v.bytes !== undefined ? `, ${formatBytes(v.bytes)}` : ''}${v.why && v.method !== 'child-vm-snapshot' ? ` because ${v.why}` : ''}${v.warnings.length ? `; warnings: ${v.warnings.join('; ')}` : ''}`);
  return {
    ok,
    ...(s.backupId ? { backupId: s.backupId } : {}),
    ...(s.host?.name ? { host: s.host.name } : {}),
    ...(s.stage ? { stage: s.stage } : {}),
    ...(error ? { error: error.message } : {}),
    vms,
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
