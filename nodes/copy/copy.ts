// Copy artifacts: disks, definition and saved state into the repository, published all or none;
// overlays merged afterwards whatever happened. Progress goes out on the second output.
import type { NodeAPI, NodeMessage } from 'node-red';
import { ChainPolicyError, parseChainPolicy, type ChainPolicy } from '../../src/chain';
import type { CopiedSet, PostSnapshotSet } from '../../src/contract/types';
import type { CopyOptions, CopyProgress } from '../../src/pipeline/copy';
import { formatBytes } from '../../src/summary';
import { registerStageNode, type StageNodeDef } from '../shared/stage-node';

interface CopyDef extends StageNodeDef {
  compress: boolean;
  /** qemu-img compare of every copy with its source; missing in flows made before it existed: on */
  verify?: boolean;
  concurrency: string | number;
  progressInterval: string | number; // ms
  /** 'incremental' (default; missing in flows made before it existed) | 'full' */
  mode?: string;
  /** empty = never; a count of backups in a chain ("7"), or days since the chain's full ("7d") */
  fullEvery?: string | number;
}

/** the chain policy, or the error naming the field */
function chainPolicyOf(c: CopyDef): ChainPolicy | string {
  try {
    return parseChainPolicy({ mode: c.mode, fullEvery: c.fullEvery });
  } catch (err) {
    if (err instanceof ChainPolicyError) return err.message;
    throw err;
  }
}

function concurrencyOf(c: CopyDef): number {
  return c.concurrency === undefined || c.concurrency === '' ? 2 : Number(c.concurrency);
}

module.exports = function register(RED: NodeAPI) {
  registerStageNode<CopyDef>(RED, {
    type: 'vmbackup-copy',
    input: 'post-snapshot',
    output: 'copied',
    outputs: 2,
    checkConfig: (c) => {
      const n = concurrencyOf(c);
      if (!Number.isInteger(n) || n < 1 || n > 16)
        return `concurrency: ${JSON.stringify(c.concurrency)} must be a whole number from 1 to 16`;
      const p = c.progressInterval === undefined || c.progressInterval === '' ? 250 : Number(c.progressInterval);
      if (!Number.isFinite(p) || p < 50 || p > 60000)
        return `progressInterval: ${JSON.stringify(c.progressInterval)} must be from 50 to 60000 ms`;
      const chain = chainPolicyOf(c);
      if (typeof chain === 'string') return chain;
      return undefined;
    },
    run: async ({ host, config, status, sendExtra, msg }, set: PostSnapshotSet) => {
      const interval = config.progressInterval === undefined || config.progressInterval === '' ? 250 : Number(config.progressInterval);
      const t0 = Date.now();
      let last = 0;
      const onProgress = (p: CopyProgress) => {
        const now = Date.now();
        if (now - last < interval && p.setDone < p.setTotal) return; // throttled: a few a second
        last = now;
        const percent = p.setTotal ? Math.min(100, Math.round((p.setDone / p.setTotal) * 100)) : 0;
        const rate = p.setDone / Math.max(0.001, (now - t0) / 1000);
        status(`copying ${percent} %, ${formatBytes(rate)}/s`);
        const progress: NodeMessage = {
          _msgid: msg._msgid,
          topic: `vm-backup/${set.host.name}/progress`,
          payload: {
            backupId: set.backupId,
            vm: p.vm,
            file: p.file,
            bytes: p.done,
            total: p.total,
            setBytes: p.setDone,
            setTotal: p.setTotal,
            percent,
            bytesPerSecond: Math.round(rate),
          },
        };
        sendExtra([null, progress]);
      };
      status('copying 0 %');
      // checked at deploy (checkConfig): a policy here is valid
      const chain = chainPolicyOf(config) as ChainPolicy;
      const options: CopyOptions = {
        concurrency: concurrencyOf(config),
        compress: config.compress === true,
        verify: config.verify !== false,
        onProgress,
        chain,
      };
      return host.copy(set, options);
    },
    done: (set: CopiedSet) => `${set.vms.length} VMs, ${formatBytes(set.vms.reduce((n, vm) => n + vm.copy.bytes, 0))}`,
  });
};
