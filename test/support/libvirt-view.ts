// libvirt's own view of the lab domains, asked of libvirt (virsh), for the libvirt fault cases:
// disks on their original images, no job, the state expected, and libvirt's own disk-only
// snapshot and backup still working.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { promises as fs, mkdtempSync } from 'node:fs';
import * as path from 'node:path';
import { domainImage, LIBVIRT_DOMAINS, libvirtdUp, libvirtStart, libvirtStop } from '../../lab/libvirt-lab';
import { parseJobInfo, parseTable } from '../../src/providers/libvirt/parse';

export function virsh(...args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync('virsh', ['-c', 'qemu:///system', ...args], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

export function virshOk(...args: string[]): string {
  const r = virsh(...args);
  assert.equal(r.status, 0, `virsh ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

export function assertLibvirtView(name: string, state: string, lab: string): void {
  const rows = parseTable(virshOk('domblklist', '--domain', name, '--details')).filter((r) => r.Device === 'disk');
  assert.deepEqual(
    rows.map((r) => r.Source),
    [domainImage(name, lab)],
    `${name}: domblklist shows the original image`,
  );
  if (state === 'shut off') {
    assert.match(virsh('domjobinfo', '--domain', name).stderr, /not running/, `${name}: no QEMU, no job`);
  } else {
    assert.equal(parseJobInfo(virshOk('domjobinfo', '--domain', name)).type, 'None', `${name}: no job runs`);
  }
  assert.equal(virshOk('domstate', '--domain', name).trim(), state, `${name} is ${state}`);
}

/** libvirt's own disk-only snapshot (+ blockcommit back) and its own push-mode backup, each checked. */
export async function libvirtOwnSnapshotAndBackup(name: string, lab: string): Promise<void> {
  const tmp = mkdtempSync(path.join(path.dirname(domainImage(name, lab)), 'own-'));
  try {
    const overlay = path.join(tmp, 'own-snap.qcow2');
    virshOk(
      'snapshot-create-as',
      '--domain',
      name,
      '--name',
      'own',
      '--disk-only',
      '--atomic',
      '--no-metadata',
      '--diskspec',
      `vda,file=${overlay}`,
    );
    assert.deepEqual(
      parseTable(virshOk('domblklist', '--domain', name, '--details')).map((r) => r.Source),
      [overlay],
    );
    virshOk('blockcommit', '--domain', name, 'vda', '--active', '--pivot', '--wait');
    assertLibvirtView(name, 'running', lab);
    const target = path.join(tmp, 'own-backup.qcow2');
    const xml = path.join(tmp, 'push.xml');
    await fs.writeFile(
      xml,
      `<domainbackup mode='push'><disks><disk name='vda' type='file'><target file='${target}'/><driver type='qcow2'/></disk></disks></domainbackup>`,
    );
    virshOk('backup-begin', '--domain', name, '--backupxml', xml);
    const deadline = Date.now() + 120_000;
    while (parseJobInfo(virshOk('domjobinfo', '--domain', name)).type !== 'None') {
      assert.ok(Date.now() < deadline, "libvirt's own backup finished");
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(virshOk('domjobinfo', '--domain', name, '--completed'), /Completed/);
    assert.equal(spawnSync('qemu-img', ['check', target]).status, 0, "libvirt's own backup is a sound image");
    assertLibvirtView(name, 'running', lab);
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

/**
 * Bring the lab's libvirtd and domains up for a suite, or skip the suite saying why (virsh or
 * libvirtd missing, libvirtd cannot run here). Returns the suite's lease: `release()` stops the lab
 * only when this suite started it (another suite, or VMBACKUP_KEEP_LAB, keeps it running).
 */
export async function libvirtLabForSuite(ctx: Mocha.Context, lab: string): Promise<{ release(): Promise<void> }> {
  if (spawnSync('virsh', ['--version']).status !== 0 || spawnSync('libvirtd', ['--version']).status !== 0) {
    console.log('    libvirt skipped: virsh/libvirtd are not installed (Debian libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)');
    ctx.skip();
  }
  const agent = LIBVIRT_DOMAINS.find((d) => d.running)?.name ?? LIBVIRT_DOMAINS[0].name;
  const startedHere = !(await libvirtdUp()) || virsh('domstate', agent).stdout.trim() !== 'running';
  try {
    await libvirtStart({ labDir: lab, install: false, log: () => undefined });
  } catch (err) {
    if (!(await libvirtdUp())) {
      console.log(`    libvirt skipped: libvirtd cannot run here: ${(err as Error).message.split('\n')[0]}`);
      ctx.skip();
    }
    throw err;
  }
  return {
    release: async () => {
      if (startedHere && !process.env.VMBACKUP_KEEP_LAB) await libvirtStop({ labDir: lab });
    },
  };
}

/** Run a shell line in a domain's guest through its agent (libvirt's channel) and wait for it; its stdout. */
export async function inGuest(domain: string, script: string): Promise<string> {
  const cmd = { execute: 'guest-exec', arguments: { path: '/bin/sh', arg: ['-c', script], 'capture-output': true } };
  const {
    return: { pid },
  } = JSON.parse(virshOk('qemu-agent-command', domain, JSON.stringify(cmd), '--timeout', '30'));
  const deadline = Date.now() + 60_000;
  for (;;) {
    const st = JSON.parse(
      virshOk('qemu-agent-command', domain, JSON.stringify({ execute: 'guest-exec-status', arguments: { pid } }), '--timeout', '30'),
    ).return;
    if (st.exited) {
      assert.equal(st.exitcode, 0, `guest: ${script}: ${Buffer.from(st['err-data'] ?? '', 'base64').toString()}`);
      return Buffer.from(st['out-data'] ?? '', 'base64').toString();
    }
    assert.ok(Date.now() < deadline, `guest: ${script} finished within 60 s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A guest shell line writing a file of 1 MiB of a known pattern to /data (the data disk) and syncing it. */
export const markerScript = (name: string) =>
  `i=0; while [ $i -lt 16384 ]; do echo "${name}-line-$i-padding-padding-padding-padding"; i=$((i+1)); done > /data/${name} && sync`;

/** What that file holds. */
export function markerText(name: string): string {
  let s = '';
  for (let i = 0; i < 16384; i++) s += `${name}-line-${i}-padding-padding-padding-padding\n`;
  return s;
}

/** A file from a flattened raw ext4 image (debugfs; '' when it is not there). */
export function fileInImage(raw: string, name: string): string {
  return spawnSync('debugfs', ['-R', `cat /${name}`, raw], { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout;
}
