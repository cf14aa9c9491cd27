// Boot test: a backup started as a throwaway VM (overlays over the read-only backup, no network)
// to prove it boots; pass or fail with timings on output 1. Settings are defaults; msg.payload's
// fields win. A copied backup set (from the copy node) tests the backup of each of its VMs.
import * as os from 'node:os';
import type { NodeAPI } from 'node-red';
import { bootTestRequest, checkRoots, recoverRestores, summarizeBootTest, type BootTestResult } from '../../src/restore';
import { contextFromHost } from '../../src/restore/host-context';
import { registerActionNode, requestOf, type ActionNodeDef } from '../shared/action-node';

interface BootTestDef extends ActionNodeDef {
  vm: string;
  backupId: string;
  timeout: string | number;
  waitFor: string;
  marker: string;
  command: string;
  args: string;
  expect: string;
  accel: string;
  workDir: string;
}

type Output = BootTestResult | { ok: boolean; results: BootTestResult[] };

function workDirOf(c: BootTestDef): string {
  return c.workDir ? checkRoots([c.workDir], 'workDir')[0] : os.tmpdir();
}

module.exports = function register(RED: NodeAPI) {
  registerActionNode<BootTestDef, Output>(RED, {
    type: 'vmbackup-boot-test',
    topic: 'boot-test',
    checkConfig: (c) => {
      try {
        workDirOf(c);
      } catch (err) {
        return (err as Error).message;
      }
      const t = c.timeout === undefined || c.timeout === '' ? 300 : Number(c.timeout);
      return Number.isFinite(t) && t >= 10 && t <= 21600 ? undefined : `timeout: ${JSON.stringify(c.timeout)} must be from 10 to 21600 s`;
    },
    recover: (host) => recoverRestores(contextFromHost(host, []).journalDir),
    run: async ({ host, config, msg, progress, status }) => {
      const base = contextFromHost(host, []);
      const defaults = {
        vm: config.vm,
        backupId: config.backupId,
        timeout: config.timeout === undefined || config.timeout === '' ? undefined : Number(config.timeout),
        waitFor: config.waitFor,
        marker: config.marker,
        command: config.command,
        args: config.args ? config.args.split(' ').filter(Boolean) : undefined,
        expect: config.expect,
        accel: config.accel,
      };
      const set = msg.payload as { stage?: string; vms?: { id: string; copy?: { path: string } }[]; backupId?: string } | undefined;
      // a copied set: each VM's backup of that set, one after the other (one throwaway VM at a time)
      const requests =
        set && set.stage === 'copied' && Array.isArray(set.vms)
          ? set.vms.map((vm) => requestOf(defaults, { vm: vm.id, backupId: set.backupId }))
          : [requestOf(defaults, msg.payload)];
      const results: BootTestResult[] = [];
      for (const req of requests) {
        status(`${String(req.vm)}: starting`);
        const onProgress = (step: string) => {
          status(`${String(req.vm)}: ${step}`);
          progress({ vm: req.vm, backupId: req.backupId ?? 'latest', step });
        };
        results.push(await bootTestRequest({ ...base, workDir: workDirOf(config), onProgress }, req));
      }
      return requests.length === 1 && !(set && set.stage === 'copied') ? results[0] : { ok: results.every((r) => r.ok), results };
    },
    summary: (r, err) => {
      if (!r) return summarizeBootTest(undefined, err as Error & { field?: string });
      if ('results' in r) {
        const each = r.results.map((x) => summarizeBootTest(x));
        return { ok: r.ok, text: each.map((e) => e.text).join('\n') || 'no VM in the set' };
      }
      return summarizeBootTest(r);
    },
    done: (r) =>
      'results' in r
        ? `${r.results.filter((x) => x.ok).length}/${r.results.length} passed`
        : `${r.ok ? 'passed' : 'FAILED'} in ${Math.round(r.timings.totalMs / 1000)} s`,
  });
};
