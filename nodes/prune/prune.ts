// Prune: remove what the retention rules do not keep, chain-aware (src/prune). After the nightly
// backup it prunes the VMs of the set it receives; any other message prunes every VM of the host.
import type { NodeAPI } from 'node-red';
import { parseRetention, pruneHost, RetentionError, RULES, summarizePrune, type Retention, type RuleName } from '../../src/prune';
import { registerJobNode, type JobNodeDef } from '../shared/job-node';

type PruneDef = JobNodeDef & Partial<Record<RuleName, string | number>> & { dryRun?: boolean; wait?: string | number };

/** the rules, or the error naming the field */
function rulesOf(c: PruneDef): Retention | string {
  try {
    return parseRetention(c);
  } catch (err) {
    if (err instanceof RetentionError) return err.message;
    throw err;
  }
}
const waitOf = (c: PruneDef) => (c.wait === undefined || c.wait === '' ? 600 : Number(c.wait));

module.exports = function register(RED: NodeAPI) {
  registerJobNode<PruneDef>(RED, {
    type: 'vmbackup-prune',
    checkConfig: (c) => {
      const rules = rulesOf(c);
      if (typeof rules === 'string') return rules;
      const w = waitOf(c);
      if (!Number.isInteger(w) || w < 0 || w > 86400) return `wait: ${JSON.stringify(c.wait)} must be whole seconds from 0 to 86400`;
      return undefined;
    },
    run: async ({ config, root, hostName, vms, status }) => {
      const rules = rulesOf(config) as Retention; // checked at deploy
      status(config.dryRun ? 'planning (dry run)' : 'pruning');
      const reports = await pruneHost({
        root,
        host: hostName,
        rules,
        dryRun: config.dryRun === true,
        waitMs: waitOf(config) * 1000,
        ...(vms ? { vms } : {}),
        onStep: (step, d) => {
          if (step === 'merge-commit') status(`${d.vm}: merging ${(d.index ?? 0) + 1}/${d.total}`);
          else if (step === 'removed') status(`${d.vm}: removing ${(d.index ?? 0) + 1}/${d.total}`);
          else if (step === 'waiting-for-backup') status(`${d.vm}: waiting for its backup to end`, 'yellow');
        },
      });
      return {
        payload: {
          host: hostName,
          dryRun: config.dryRun === true,
          rules: RULES.filter((r) => rules[r]).map((r) => ({ rule: r, keep: rules[r] })),
          vms: reports,
        },
        summary: summarizePrune(reports),
      };
    },
    done: (s) => {
      const p = s as ReturnType<typeof summarizePrune>;
      return p.ok
        ? `${p.dryRun ? 'would remove' : 'removed'} ${p.removed}, merged ${p.merged}`
        : `FAILED: ${p.vms
            .filter((v) => !v.ok)
            .map((v) => v.vm)
            .join(', ')}`;
    },
    outputs: 1,
  });
};
