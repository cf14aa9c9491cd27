// The suites that back up the lab VMs through Node-RED share this: the lab started for the suite
// (and stopped after it when the suite started it), a fresh repository and journal folder, the
// test server around each case, and one backup run through the whole pipeline flow.
import { promises as fs, mkdtempSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { labStatus, startLab, stopLab } from '../../lab/lab-vms';
import { CATCH, helper, nextMessage, NODE_MODULES, pipelineFlow } from '../nodes/flow-fixture';

export const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
export const LAB_VMS = ['vm-agent', 'vm-noagent', 'vm-passthrough'];

/** The suite's folders, set once its before() hook ran. */
export interface LabBackupSuite {
  repository: string;
  journalDir: string;
}

/** Register the hooks of a lab backup suite (call it inside describe). `tag` names its temporary folders. */
export function labBackupSuite(tag: string): LabBackupSuite {
  const suite: LabBackupSuite = { repository: '', journalDir: '' };
  let startedHere = false;
  before(async () => {
    startedHere = !labStatus(LAB).vms.some((vm) => vm.alive);
    await startLab({ labDir: LAB, install: false });
    suite.repository = mkdtempSync(path.join(os.tmpdir(), `vmb-repo-${tag}`));
    suite.journalDir = mkdtempSync(path.join(os.tmpdir(), `vmb-journal-${tag}`));
  });
  after(async () => {
    if (startedHere && !process.env.VMBACKUP_KEEP_LAB) await stopLab(LAB);
    if (suite.repository) await fs.rm(suite.repository, { recursive: true, force: true });
    if (suite.journalDir) await fs.rm(suite.journalDir, { recursive: true, force: true });
  });
  beforeEach((done) => {
    helper.startServer(done);
  });
  afterEach(async () => {
    await new Promise<void>((resolve) => helper.stopServer(() => resolve()));
  });
  return suite;
}

/**
 * One backup of the lab through the pipeline flow: resolves with copy's output message, rejects
 * with what the Catch node got. The flow is unloaded after, so that a case may run several.
 */
export async function runLabBackup(suite: LabBackupSuite, fallback = 'checkpoint'): Promise<any> {
  await helper.load(
    [...NODE_MODULES, CATCH],
    pipelineFlow({
      socketDir: path.join(LAB, 'run'),
      repository: suite.repository,
      journalDir: suite.journalDir,
      fallback,
      hostExtra: { hostName: 'lab' },
    }) as any,
  );
  const done = nextMessage('out-copy', 300_000);
  const failed = nextMessage('caught', 300_000).then((m) => Promise.reject(new Error(`backup failed: ${m.error.message}`)));
  helper.getNode('enumerate').receive({ payload: '' });
  try {
    return await Promise.race([done, failed]);
  } finally {
    await helper.unload();
  }
}

/**
 * Back up one VM of the lab through the Node-RED pipeline, node by node (the others dropped
 * between enumerate and classify): resolves with the VM's entry of copy's output set.
 */
export async function backupOneVm(
  vm: string,
  fallback: string,
  o: { socketDir: string; repository: string; journalDir: string; hostName?: string; hostExtra?: Record<string, unknown> },
): Promise<any> {
  await helper.load(
    [...NODE_MODULES, CATCH],
    pipelineFlow({
      socketDir: o.socketDir,
      repository: o.repository,
      journalDir: o.journalDir,
      fallback,
      hostExtra: { hostName: o.hostName ?? 'lab', ...o.hostExtra },
      wired: false,
    }) as any,
  );
  try {
    const caught = nextMessage('caught', 300_000).then((m) => Promise.reject(new Error(`backup failed: ${m.error?.message}`)));
    caught.catch(() => undefined);
    const enumerated = nextMessage('out-enumerate', 120_000);
    helper.getNode('enumerate').receive({ payload: '' });
    let msg: any = await Promise.race([enumerated, caught]);
    msg.payload.vms = msg.payload.vms.filter((v: any) => v.id === vm);
    if (msg.payload.vms.length !== 1) throw new Error(`${vm} is not enumerated`);
    for (const stage of ['classify', 'prepare', 'snapshot', 'post-snapshot', 'copy']) {
      const out = nextMessage(`out-${stage}`, 300_000);
      helper.getNode(stage).receive({ payload: msg.payload });
      msg = await Promise.race([out, caught]);
    }
    return msg.payload.vms[0];
  } finally {
    await helper.unload();
  }
}
