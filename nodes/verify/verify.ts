// Verify: check published backups (files, images, chains), prove their consistency labels from
// the images, and write each one's verify record (src/verify). Second output: damage found.
import type { NodeAPI } from 'node-red';
import { runVerifyJob, summarizeVerifyJob, type ProofScope } from '../../src/verify';
import { inside } from '../../src/repository/paths';
import { formatBytes } from '../../src/summary';
import { registerJobNode, type JobNodeDef } from '../shared/job-node';

interface VerifyDef extends JobNodeDef {
  /** 'all' | 'unverified' */
  select?: string;
  /** with 'unverified': verify again what was verified more than this many days ago (empty: never) */
  reverifyDays?: string | number;
  /** 'application' | 'all' | 'none' */
  proof?: string;
}

const daysOf = (c: VerifyDef) => (c.reverifyDays === undefined || c.reverifyDays === '' ? undefined : Number(c.reverifyDays));

module.exports = function register(RED: NodeAPI) {
  registerJobNode<VerifyDef>(RED, {
    type: 'vmbackup-verify',
    checkConfig: (c) => {
      if (c.select !== undefined && c.select !== '' && c.select !== 'all' && c.select !== 'unverified')
        return `select: ${JSON.stringify(c.select)} must be "all" or "unverified"`;
      const d = daysOf(c);
      if (d !== undefined && (!Number.isInteger(d) || d < 1 || d > 3650))
        return `reverifyDays: ${JSON.stringify(c.reverifyDays)} must be empty or whole days from 1 to 3650`;
      if (c.proof !== undefined && c.proof !== '' && !['application', 'all', 'none'].includes(c.proof))
        return `proof: ${JSON.stringify(c.proof)} must be "application", "all" or "none"`;
      return undefined;
    },
    run: async ({ config, root, hostName, vms, status }) => {
      const targets = vms ? vms.map((vm) => inside(root, 'vm', hostName, vm)) : [inside(root, 'host', hostName)];
      const t0 = Date.now();
      let bytes = 0;
      const results = [];
      for (const target of targets) {
        const days = daysOf(config);
        results.push(
          await runVerifyJob(target, {
            select: config.select === 'unverified' ? 'unverified' : 'all',
            ...(days !== undefined ? { reverifyDays: days } : {}),
            proof: (config.proof || 'application') as ProofScope,
            onProgress: (p) => {
              if (p.backup) status(`verifying ${p.done + 1}/${p.total}: ${p.backup.split('/').slice(-2).join(' ')}`);
            },
          }),
        );
        bytes += results[results.length - 1].bytes;
      }
      // one result for the flow, whatever the number of targets
      const merged = results.reduce((a, r) => ({
        ...a,
        ok: a.ok && r.ok,
        backups: [...a.backups, ...r.backups],
        problems: [...a.problems, ...r.problems],
        verified: a.verified + r.verified,
        skipped: a.skipped + r.skipped,
        failed: a.failed + r.failed,
        contradicted: a.contradicted + r.contradicted,
        bytes: a.bytes + r.bytes,
      }));
      merged.target = vms ? `${hostName}: ${vms.join(', ')}` : hostName;
      merged.ms = Date.now() - t0;
      // the verifier's whole per-file report stays in the records; the flow gets the verdicts
      const backups = merged.backups.map(({ report: _report, ...b }) => b);
      status(`${formatBytes(bytes)} checked`);
      return { payload: { ...merged, backups }, summary: summarizeVerifyJob(merged) };
    },
    done: (s) => {
      const v = s as ReturnType<typeof summarizeVerifyJob>;
      return v.ok ? `${v.verified} verified, ${v.skipped} skipped: OK` : `${v.failed} FAILED of ${v.verified + v.skipped}`;
    },
    outputs: 2,
  });
};
