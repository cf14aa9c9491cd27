// Restore (c): a point started again as a NEW VM beside the original: its disks restored into a
// new directory (directory.ts), then
//   - plain QEMU: the command line the backup recorded, rewritten (qemu-argv.ts) for the new
//     disks, name, sockets, UUID and MACs; kept in <target>/qemu-argv.json, and an inventory
//     entry <socketDir>/<name>.vm.json so the backups see the VM even while it is off;
//   - libvirt: the backup's domain XML, rewritten (libvirt-xml.ts), given to `virsh define`.
// Left off, or started; a saved-state backup on QEMU resumes from its saved memory (no boot).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { FlattenFormat } from '../chain/flatten';
import { writeFileDurable } from '../repository/durable';
import { isSafeName } from '../util/ids';
import { runProgram } from '../util/run';
import type { NewVm, RestoreContext, RestoreResult } from './context';
import { checkDirectory, restoreToDirectory } from './directory';
import { verifyPoint } from './images';
import { createOverlays, streamAll } from './instant';
import { rewriteDomainXml } from './libvirt-xml';
import { driveFiles, rewriteCommandLine, type QemuLaunch, type RestoredDrive } from './qemu-argv';
import { loadSavedState, runVcpus, startQemu, stopQemu } from './qemu-process';
import { pointFacts, type BackupPoint } from './point';
import { RestoreRefused } from './refused';

export interface NewVmInput {
  point: BackupPoint;
  disks?: readonly string[];
  format?: FlattenFormat;
  target: string;
  name?: string;
  hypervisor?: 'qemu' | 'libvirt';
  start?: boolean;
  resume?: boolean;
  network?: 'keep' | 'none';
  /** QEMU: start at once on the backup's chain, the disks streamed into place while it runs */
  instant?: boolean;
}

export function hypervisorOf(ctx: RestoreContext, input: NewVmInput): 'qemu' | 'libvirt' {
  if (input.hypervisor) return input.hypervisor;
  if (ctx.provider === 'hyperv')
    throw new RestoreRefused('hypervisor', 'a Hyper-V host gets no new VM from here (restore to a directory and import the disks)');
  return ctx.provider;
}

export function virshArgs(ctx: RestoreContext, ...args: string[]): string[] {
  return ['-c', ctx.libvirtUri ?? 'qemu:///system', ...args];
}

/** Everything checked before anything is written: the name is free, the definition can be rewritten. */
async function preflight(ctx: RestoreContext, input: NewVmInput, name: string, kind: 'qemu' | 'libvirt', target: string): Promise<void> {
  const def = input.point.definition;
  const probe = new Map<string, { file: string; format: 'qcow2' | 'raw' }>(
    input.point.disks.map((d) => [d.id, { file: '/x', format: 'qcow2' }]),
  );
  if (kind === 'qemu') {
    if (!Array.isArray(def.commandLine))
      throw new RestoreRefused(
        'backup',
        `backup ${input.point.manifest.backupId} holds no QEMU command line (the VM was off or not a plain QEMU VM): restore it to a directory instead`,
      );
    try {
      rewriteCommandLine(def.commandLine, { name, runDir: target, drives: probe, network: input.network ?? 'keep' });
    } catch (err) {
      throw new RestoreRefused('backup', (err as Error).message);
    }
    const runDir = qemuRunDir(ctx, target);
    for (const f of [`${name}.qmp`, `${name}.pid`, `${name}.vm.json`, `${name}.qga`]) {
      if (
        await fs.lstat(path.join(runDir, f)).then(
          () => true,
          () => false,
        )
      )
        throw new RestoreRefused('name', `a VM named ${name} exists on this host (${path.join(runDir, f)})`);
    }
  } else {
    if (typeof def.domainXml !== 'string')
      throw new RestoreRefused('backup', `backup ${input.point.manifest.backupId} holds no libvirt domain XML`);
    try {
      rewriteDomainXml(def.domainXml, { name, disks: probe, consoleLog: '/x', network: 'keep' });
    } catch (err) {
      throw new RestoreRefused('backup', (err as Error).message);
    }
    const known = await runProgram('virsh', virshArgs(ctx, 'domuuid', '--domain', name), { timeoutMs: 60_000 }).then(
      () => true,
      () => false,
    );
    if (known) throw new RestoreRefused('name', `libvirt already has a domain named ${name}`);
  }
}

function qemuRunDir(ctx: RestoreContext, target: string): string {
  return ctx.provider === 'qemu' && ctx.socketDir ? ctx.socketDir : target;
}

export async function restoreNewVm(ctx: RestoreContext, input: NewVmInput, t0 = Date.now()): Promise<RestoreResult> {
  const kind = hypervisorOf(ctx, input);
  const name = input.name ?? `${input.point.manifest.vm}-restored`.slice(0, 64);
  if (!isSafeName(name)) throw new RestoreRefused('name', `"${String(name).slice(0, 80)}" must be letters, digits, . _ - (at most 64)`);
  const { target } = await checkDirectory(ctx, input);
  await preflight(ctx, input, name, kind, target);
  if (input.instant && (kind !== 'qemu' || !input.start || input.disks || input.format === 'raw'))
    throw new RestoreRefused(
      'instant',
      'an instant restore is a started plain QEMU VM with every disk as qcow2 (start: true; no disks, format, hypervisor libvirt)',
    );
  const result = input.instant
    ? await instantDirectory(ctx, input.point, target, t0)
    : await restoreToDirectory(
        ctx,
        { point: input.point, target, format: input.format ?? 'qcow2', ...(input.disks ? { disks: input.disks } : {}) },
        t0,
      );
  result.mode = 'new-vm';
  const drives = new Map<string, RestoredDrive>(result.disks.map((d) => [d.disk, { file: d.file, format: d.format }]));
  result.newVm =
    kind === 'qemu'
      ? await newQemuVm(ctx, input, name, target, drives, result)
      : await newLibvirtVm(ctx, input, name, target, drives, result);
  if (input.instant && result.newVm.pid !== undefined) {
    // the VM runs now; its disks move to their own images while it does
    const upMs = Date.now() - t0;
    const streamMs = await streamAll(result.newVm.qmpSocket!, result.newVm.pid, input.point, [...drives.keys()], ctx.onProgress);
    result.newVm.instant = { upMs, streamMs };
    for (const d of result.disks) d.bytes = (await fs.stat(d.file)).size;
  }
  if (result.newVm.dropped.length) result.warnings.push(`the new VM has no ${result.newVm.dropped.join(', ')} (not restored)`);
  result.ms = Date.now() - t0;
  return result;
}

async function newQemuVm(
  ctx: RestoreContext,
  input: NewVmInput,
  name: string,
  target: string,
  drives: Map<string, RestoredDrive>,
  result: RestoreResult,
): Promise<NewVm> {
  const def = input.point.definition;
  const argv = def.commandLine as string[];
  const images = new Map<string, string>();
  for (const [id, file] of driveFiles(argv)) if (drives.has(id)) images.set(file, drives.get(id)!.file);
  const resume = input.start === true && input.resume !== false && input.point.savedState !== undefined;
  const runDir = qemuRunDir(ctx, target);
  const launch: QemuLaunch = rewriteCommandLine(argv, { name, runDir, drives, images, network: input.network ?? 'keep', incoming: resume });
  const commandFile = path.join(target, 'qemu-argv.json');
  await writeFileDurable(commandFile, JSON.stringify({ program: launch.program, args: launch.args }, null, 2) + '\n');
  if (runDir !== target) {
    // the host's inventory: the new VM is a VM of this host, backed up like the others
    const inventory = { name, disks: [...drives].map(([id, d]) => ({ id, file: d.file, format: d.format })) };
    await writeFileDurable(path.join(runDir, `${name}.vm.json`), JSON.stringify(inventory, null, 2) + '\n');
  }
  const vm: NewVm = {
    hypervisor: 'qemu',
    name,
    uuid: launch.uuid,
    macs: launch.macs,
    started: false,
    commandFile,
    qmpSocket: launch.qmpSocket,
    ...(launch.qgaSocket ? { qgaSocket: launch.qgaSocket } : {}),
    dropped: launch.dropped,
  };
  if (!input.start) return vm;
  ctx.onProgress?.({ step: 'start', bytes: 0, total: 0 });
  const pid = await startQemu(launch);
  try {
    if (resume) {
      ctx.onProgress?.({ step: 'state', bytes: 0, total: 0 });
      await loadSavedState(launch.qmpSocket, path.join(target, 'state.vmstate'), path.join(runDir, `${name}.incoming`));
      await runVcpus(launch.qmpSocket);
      vm.resumed = true;
    }
  } catch (err) {
    await stopQemu(pid, launch.qmpSocket).catch(() => undefined);
    throw err;
  } finally {
    await fs.rm(path.join(runDir, `${name}.incoming`), { force: true });
  }
  if (input.point.savedState && !resume)
    result.warnings.push('started from its disks only: the saved memory was not used (crash-consistent)');
  return { ...vm, started: true, pid };
}

async function newLibvirtVm(
  ctx: RestoreContext,
  input: NewVmInput,
  name: string,
  target: string,
  drives: Map<string, RestoredDrive>,
  result: RestoreResult,
): Promise<NewVm> {
  const dom = rewriteDomainXml(input.point.definition.domainXml, {
    name,
    disks: drives,
    consoleLog: path.join(target, `${name}.console.log`),
    network: input.network ?? 'keep',
  });
  const xmlFile = path.join(target, 'domain.xml');
  await writeFileDurable(xmlFile, dom.xml);
  await runProgram('virsh', virshArgs(ctx, 'define', '--file', xmlFile), { timeoutMs: 60_000 });
  const vm: NewVm = { hypervisor: 'libvirt', name, uuid: dom.uuid, macs: dom.macs, started: false, dropped: dom.dropped };
  if (input.point.savedState && input.start)
    result.warnings.push(
      'libvirt resumes a saved state only under the original domain name and UUID: the new domain boots from its disks (crash-consistent)',
    );
  if (!input.start) return vm;
  ctx.onProgress?.({ step: 'start', bytes: 0, total: 0 });
  await runProgram('virsh', virshArgs(ctx, 'start', '--domain', name), { timeoutMs: 120_000 });
  return { ...vm, started: true };
}

/** The target of an instant restore: each disk a new qcow2 on the verified backup, the definition beside. */
async function instantDirectory(ctx: RestoreContext, point: BackupPoint, target: string, t0: number): Promise<RestoreResult> {
  await verifyPoint(point, { ...(ctx.qemuImg ? { qemuImg: ctx.qemuImg } : {}), ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}) });
  await fs.mkdir(target, { mode: 0o750 });
  const overlays = await createOverlays(point, target, ctx.qemuImg);
  const def = point.manifest.files.find((f) => f.kind === 'definition');
  if (def) await fs.copyFile(path.join(point.dir, def.name), path.join(target, 'definition.json'), fs.constants.COPYFILE_EXCL);
  if (point.savedState) await fs.copyFile(point.savedState, path.join(target, 'state.vmstate'), fs.constants.COPYFILE_EXCL);
  return {
    mode: 'new-vm',
    ...pointFacts(point),
    chain: [point.manifest.backupId],
    target,
    disks: [...overlays].map(([disk, file]) => ({ disk, file, format: 'qcow2' as const, bytes: 0 })),
    warnings: point.manifest.excludedDisks.map((d) => `disk ${d.id} was not in the backup (${d.reason})`),
    startedAt: new Date(t0).toISOString(),
    ms: 0,
  };
}
