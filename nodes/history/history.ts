// History: the backups of each VM at a glance, and which VM has had no backup for too long (src/history).
import type { NodeAPI } from 'node-red';
import { readHistory, summarizeHistory } from '../../src/history/history';
import { registerJobNode, type JobNodeDef } from '../shared/job-node';

interface HistoryDef extends JobNodeDef {
  /** hours without a published backup before a VM counts as stale (default 26) */
  staleHours?: string | number;
  /** backups listed per VM (default 30) */
  limit?: string | number;
}

const num = (v: string | number | undefined, dflt: number) => (v === undefined || v === '' ? dflt : Number(v));

module.exports = function register(RED: NodeAPI) {
  registerJobNode<HistoryDef>(RED, {
    type: 'vmbackup-history',
    checkConfig: (c) => {
      const h = num(c.staleHours, 26);
      if (!Number.isFinite(h) || h < 1 || h > 8784) return `staleHours: ${JSON.stringify(c.staleHours)} must be from 1 to 8784 hours`;
      const l = num(c.limit, 30);
      if (!Number.isInteger(l) || l < 1 || l > 10000) return `limit: ${JSON.stringify(c.limit)} must be a whole number from 1 to 10000`;
      return undefined;
    },
    run: async ({ config, root, hostName, vms, status }) => {
      status('reading');
      const history = await readHistory({
        root,
        host: hostName,
        staleHours: num(config.staleHours, 26),
        limit: num(config.limit, 30),
        ...(vms ? { vms } : {}),
      });
      return { payload: history, summary: summarizeHistory(history) };
    },
    done: (s) => {
      const h = s as ReturnType<typeof summarizeHistory>;
      return h.ok ? `${h.vms} VMs, ${h.backups} backups` : `${h.stale.length} stale, ${h.damaged.length} damaged`;
    },
    outputs: 2,
  });
};
