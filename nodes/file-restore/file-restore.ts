// File restore: list or take out files and directories of one disk of any backup point, read by a
// throwaway appliance VM (libguestfs), never mounted on the host. Settings are defaults;
// msg.payload's fields win.
import type { NodeAPI } from 'node-red';
import { fileRestoreRequest, summarizeFileRestore, type FileRestoreResult } from '../../src/restore';
import { contextFromHost } from '../../src/restore/host-context';
import { registerActionNode, requestOf, rootsSetting, type ActionNodeDef } from '../shared/action-node';

interface FileRestoreDef extends ActionNodeDef {
  vm: string;
  backupId: string;
  disk: string;
  filesystem: string;
  paths: string;
  action: string;
  output: string;
  target: string;
  root: string;
}

module.exports = function register(RED: NodeAPI) {
  registerActionNode<FileRestoreDef, FileRestoreResult>(RED, {
    type: 'vmbackup-file-restore',
    topic: 'file-restore',
    checkConfig: (c) => {
      const roots = rootsSetting(c.root);
      return typeof roots === 'string' ? roots : undefined;
    },
    run: async ({ host, config, msg, progress, status }) => {
      const ctx = contextFromHost(host, rootsSetting(config.root) as string[]);
      const request = requestOf(
        {
          vm: config.vm,
          backupId: config.backupId,
          disk: config.disk,
          filesystem: config.filesystem,
          // one path a line
          paths: config.paths
            ? config.paths
                .split('\n')
                .map((p) => p.trim())
                .filter(Boolean)
            : undefined,
          action: config.action,
          output: config.output,
          target: config.target,
        },
        msg.payload,
      );
      const onProgress = (step: string) => {
        status(step);
        progress({ vm: request.vm, backupId: request.backupId ?? 'latest', step });
      };
      status('starting');
      return fileRestoreRequest({ ...ctx, onProgress }, request);
    },
    summary: (r, err) => summarizeFileRestore(r, err as Error & { field?: string }),
    done: (r) =>
      r.action === 'list' ? `${r.entries?.length ?? 0} entries` : `${(r.extracted ?? []).reduce((n, e) => n + e.files, 0)} files`,
  });
};
