// A backup process that dies by SIGKILL at a chosen point, for the libvirt fault cases:
//   node libvirt-crash.js <journal> <repository> <runDir> <vm> <after: frozen|snapshotted> <guardian: yes|no>
// It runs the real pipeline (BackupHost, LibvirtProvider) on one domain up to that point, prints
// "at <point>" and kills itself: nothing of the pipeline's own undo runs.
import { Journal } from '../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { LibvirtProvider } from '../../src/providers/libvirt/libvirt-provider';

class Unguarded extends LibvirtProvider {
  override guardianSpec(): undefined {
    return undefined;
  }
}

async function main(): Promise<void> {
  // the pipeline waits for its guardian with unref'd handles (Node-RED keeps its process alive;
  // this script must do it itself)
  setInterval(() => undefined, 1000);
  const [journalFile, repository, runDir, vmId, after, guardian] = process.argv.slice(2);
  const provider = guardian === 'yes' ? new LibvirtProvider({ runDir }) : new Unguarded({ runDir });
  const host = new BackupHost(provider, new Journal(journalFile), {
    hostName: 'lv-crash',
    repositoryRoot: repository,
    timeouts: DEFAULT_TIMEOUTS,
  });
  const enumerated = await host.enumerate();
  const classified = host.classify({ ...enumerated, vms: enumerated.vms.filter((vm) => vm.id === vmId) }, 'checkpoint');
  if (after === 'frozen') {
    // prepare freezes; the process dies with the guest frozen and no job yet
    await host.prepare(classified);
  } else {
    await host.snapshot(await host.prepare(classified));
  }
  process.stdout.write(`at ${after}\n`, () => process.kill(process.pid, 'SIGKILL'));
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(3);
});
