// A libvirt backup restored as a NEW libvirt domain through the restore node: a domain of this
// suite (vmb-rs-src: the lab guest, shut off, so its backup needs no boot) is backed up through
// Node-RED with the libvirt provider, then restored as vmb-rs-new (virsh define of the backup's
// domain XML with a new name, UUID, MAC and the restored disk) and started: it boots and its guest
// agent answers. The suite defines and removes its own vmb-rs-* domains only; it uses the running
// libvirtd (or starts the lab's, and stops it after, when none runs), and skips saying why when
// libvirtd cannot run here.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs, mkdtempSync, writeFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { buildGuest } from '../../lab/guest-image';
import { domainXml, libvirtdUp } from '../../lab/libvirt-lab';
import { helper } from '../nodes/flow-fixture';
import { backupOneVm } from '../support/lab-backup';
import { libvirtLabForSuite, virsh, virshOk } from '../support/libvirt-view';
import { actOn, loadActionNode, serverPerCase } from '../support/restore-flow';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';
const SRC = 'vmb-rs-src';
const NEW = 'vmb-rs-new';

function removeDomain(name: string): void {
  if (virsh('domstate', '--domain', name).status !== 0) return;
  virsh('destroy', '--domain', name);
  virsh('undefine', '--domain', name, '--managed-save', '--checkpoints-metadata', '--snapshots-metadata');
}

describe('restore: a libvirt backup as a new libvirt domain', function () {
  this.timeout(900_000);
  let tmp = '';
  let lease: { release(): Promise<void> } | undefined;

  before(async function () {
    this.timeout(600_000);
    if (spawnSync('virsh', ['--version']).status !== 0) {
      console.log('    libvirt restore skipped: virsh is not installed (Debian libvirt-clients)');
      this.skip();
    }
    if (!(await libvirtdUp())) lease = await libvirtLabForSuite(this, LAB);
    removeDomain(SRC);
    removeDomain(NEW);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmb-rs-libvirt-'));
    await fs.chmod(tmp, 0o755);
    const guest = await buildGuest({ labDir: LAB });
    const image = path.join(tmp, `${SRC}.qcow2`);
    assert.equal(spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', image, '64M']).status, 0);
    // the lab's domain XML for a domain of ours: its disk and console in this suite's folder
    const xml = domainXml({ name: SRC, agent: true, running: false }, guest, LAB)
      .replace(/<source file='[^']*'\/>/, `<source file='${image}'/>`)
      .replace(/<source path='[^']*' append='on'\/>/, `<source path='${path.join(tmp, `${SRC}.log`)}' append='on'/>`)
      .replace('<devices>', "<devices>\n    <interface type='user'><model type='virtio'/></interface>");
    writeFileSync(path.join(tmp, `${SRC}.xml`), xml);
    virshOk('define', '--file', path.join(tmp, `${SRC}.xml`));
  });
  after(async () => {
    removeDomain(NEW);
    removeDomain(SRC);
    if (tmp && !process.env.VMBACKUP_RESTORE_KEEP) await fs.rm(tmp, { recursive: true, force: true });
    await lease?.release();
  });
  serverPerCase();

  it('backs up the shut-off domain through Node-RED, restores it as a new domain, started: it boots and its agent answers', async () => {
    const repository = path.join(tmp, 'repo');
    const journalDir = path.join(tmp, 'journal');
    const root = path.join(tmp, 'restored');
    for (const d of [repository, journalDir, root]) await fs.mkdir(d);
    const host = { provider: 'libvirt', libvirtUri: 'qemu:///system' };
    const vm = await backupOneVm(SRC, 'checkpoint', { socketDir: tmp, repository, journalDir, hostExtra: host });
    assert.equal(vm.method, 'offline');
    await helper.unload();
    await loadActionNode(
      'vmbackup-restore',
      { mode: 'new-vm', root, start: true },
      { socketDir: tmp, repository, journalDir, provider: 'libvirt', hostExtra: { libvirtUri: 'qemu:///system' } },
    );
    const t0 = Date.now();
    const msg = await actOn({ vm: SRC, name: NEW, target: path.join(root, NEW) });
    const r = msg.payload;
    assert.equal(r.newVm.hypervisor, 'libvirt');
    assert.equal(r.newVm.started, true);
    const dumped = virshOk('dumpxml', '--domain', NEW);
    assert.match(dumped, new RegExp(`<uuid>${r.newVm.uuid}</uuid>`));
    assert.match(dumped, new RegExp(`<source file='${r.disks[0].file}'`));
    assert.match(dumped, new RegExp(`<mac address='${r.newVm.macs[0]}'/>`));
    assert.notEqual(virshOk('domuuid', '--domain', SRC).trim(), r.newVm.uuid);
    assert.equal(virshOk('domstate', '--domain', NEW).trim(), 'running');
    // the guest agent answers through libvirt
    let answered = '';
    const deadline = Date.now() + 300_000;
    while (Date.now() < deadline && !answered) {
      const ping = virsh('qemu-agent-command', '--domain', NEW, '{"execute":"guest-get-host-name"}');
      if (ping.status === 0) answered = ping.stdout;
      else await new Promise((res) => setTimeout(res, 2000));
    }
    assert.match(answered, /"host-name":"vmb-rs-src"/, 'the restored guest answers as itself');
    assert.equal(virshOk('domstate', '--domain', SRC).trim(), 'shut off', 'the original is untouched');
    console.log(`      libvirt domain ${NEW} restored, started and agent answering after ${Date.now() - t0} ms`);
  });
});
