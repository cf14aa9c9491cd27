// The main job: set up the lab host (packages, guest, three VMs with workloads), install this
// package into a fresh Node-RED the way a user does, deploy the nightly example flow against the
// lab, trigger it, and print the backup summary. Exit status 0 only for a complete backup.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { startLab } from './lab-vms';
import { defaultLabDir } from './guest-image';
import { NodeRed, packAndInstall, readExample, removeDir } from '../test/e2e/harness';

const EXAMPLE = 'Nightly backup of every VM';
const SUMMARY_KEY = 'vmbackupLastSummary';

async function main(): Promise<number> {
  const labDir = path.resolve(process.env.VMBACKUP_LAB_DIR ?? defaultLabDir());
  const repository = path.join(labDir, 'repository');
  fs.mkdirSync(repository, { recursive: true });
  const say = (text: string) => process.stderr.write(`main-job: ${text}\n`);

  say(`starting the lab host in ${labDir} (installs Debian packages if missing, builds the guest)`);
  const lab = await startLab({ labDir, install: true, log: (t) => say(t) });
  say(`lab VMs: ${lab.vms.map((vm) => vm.name).join(', ')}`);

  say('installing the package into a fresh Node-RED user directory (npm pack + npm install)');
  const installed = await packAndInstall();
  const nr = await NodeRed.start(installed.userDir);
  try {
    say(`Node-RED ${nr.base} is up; deploying the example "${EXAMPLE}"`);
    const flow = readExample(EXAMPLE).map((n) =>
      n.type === 'vmbackup-host' ? { ...n, socketDir: path.join(labDir, 'run'), repository, hostName: 'lab' } : n,
    );
    await nr.deploy(flow);
    await nr.deleteGlobal(SUMMARY_KEY);
    const inject = flow.find((n) => n.type === 'inject');
    if (!inject) throw new Error(`the example "${EXAMPLE}" has no inject node`);
    const t0 = Date.now();
    await nr.inject(inject.id);
    const { value: summary } = await nr.waitForGlobal<{
      ok: boolean;
      text: string;
      vms: { vm: string; method?: string; consistency?: string; bytes?: number; frozenMs?: number; path?: string; warnings: string[] }[];
    }>([SUMMARY_KEY], 600_000);
    process.stdout.write(`\n${summary.text}\n\n`);
    process.stdout.write(
      `${'VM'.padEnd(16)}${'method'.padEnd(20)}${'consistency'.padEnd(13)}${'bytes'.padStart(12)}${'frozen ms'.padStart(11)}  path\n`,
    );
    for (const vm of summary.vms) {
      process.stdout.write(
        `${vm.vm.padEnd(16)}${(vm.method ?? '').padEnd(20)}${(vm.consistency ?? '').padEnd(13)}${String(vm.bytes ?? '').padStart(12)}${String(vm.frozenMs ?? '').padStart(11)}  ${vm.path ?? ''}\n`,
      );
    }
    process.stdout.write(`\nbackup took ${((Date.now() - t0) / 1000).toFixed(1)} s; repository: ${repository}\n`);
    process.stdout.write(`the lab keeps running; stop it with: node dist/lab/cli.js stop --lab-dir ${labDir}\n`);
    return summary.ok ? 0 : 1;
  } finally {
    await nr.stop();
    removeDir(installed.dir);
  }
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    process.stderr.write(`main-job: FAILED: ${err.stack ?? err.message}\n`);
    process.exit(1);
  },
);
