// Restore: any point of a VM's backups to a directory, in place over its own disks, or as a new
// VM (QEMU or libvirt), left off or started. Settings are defaults; msg.payload's fields win.
import type { NodeAPI } from 'node-red';
import { recoverRestores, restore, summarizeRestore, type RestoreResult } from '../../src/restore';
import { contextFromHost } from '../../src/restore/host-context';
import { formatBytes } from '../../src/summary';
import { registerActionNode, requestOf, rootsSetting, type ActionNodeDef } from '../shared/action-node';

interface RestoreDef extends ActionNodeDef {
  mode: string;
  vm: string;
  backupId: string;
  target: string;
  root: string;
  format: string;
  vmName: string;
  hypervisor: string;
  start: boolean;
  network: string;
  keepOld: boolean;
  instant?: boolean;
}

module.exports = function register(RED: NodeAPI) {
  registerActionNode<RestoreDef, RestoreResult>(RED, {
    type: 'vmbackup-restore',
    topic: 'restore',
    checkConfig: (c) => {
      const roots = rootsSetting(c.root);
      return typeof roots === 'string' ? roots : undefined;
    },
    recover: (host) => recoverRestores(contextFromHost(host, []).journalDir),
    run: async ({ host, config, msg, progress, status }) => {
      const ctx = contextFromHost(host, rootsSetting(config.root) as string[]);
      const request = requestOf(
        {
          mode: config.mode || 'directory',
          vm: config.vm,
          backupId: config.backupId,
          target: config.target,
          format: config.format,
          name: config.vmName,
          hypervisor: config.hypervisor,
          start: config.start === true ? true : undefined,
          network: config.network,
          keepOld: config.keepOld === true ? true : undefined,
          instant: config.instant === true ? true : undefined,
        },
        msg.payload,
      );
      let last = 0;
      ctx.onProgress = (p) => {
        const now = Date.now();
        if (now - last < 250 && p.bytes < p.total) return;
        last = now;
        const percent = p.total ? Math.min(100, Math.round((p.bytes / p.total) * 100)) : 0;
        status(`${p.step} ${p.total ? `${percent} %` : ''}`);
        progress({ vm: request.vm, backupId: request.backupId ?? 'latest', step: p.step, bytes: p.bytes, total: p.total, percent });
      };
      status('restoring');
      return restore(ctx, request);
    },
    summary: (result, err, msg) => summarizeRestore(result, err as Error & { field?: string }, (msg?.payload ?? undefined) as never),
    done: (r) => `${r.mode} ${r.vm}: ${r.disks.length} disks, ${formatBytes(r.disks.reduce((n, d) => n + d.bytes, 0))}`,
  });
};
