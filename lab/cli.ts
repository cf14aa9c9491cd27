#!/usr/bin/env node
/**
 * Lab host CLI.
 *
 *   node dist/lab/cli.js install                 install missing Debian packages
 *   node dist/lab/cli.js build [--force]         build (or reuse) the guest initramfs
 *   node dist/lab/cli.js start [--vm NAME]... [--raw|--qcow2] [--no-install] [--no-wait] [--timeout SEC]
 *                                                install + build + start VMs + wait for agents/workloads
 *   node dist/lab/cli.js stop [--hard]           stop VMs (ACPI power-down, then quit) and qemu-nbd
 *   node dist/lab/cli.js status [--probe]        JSON status (pid alive, sockets; --probe: QMP + guest-sync)
 *   node dist/lab/cli.js records VM              verify /records.log of VM's data disk (offline read)
 *   node dist/lab/cli.js libvirt-start|libvirt-stop|libvirt-status   the libvirt lab (libvirt-lab.ts)
 *
 * Common option: --lab-dir DIR (default $VMBACKUP_LAB_DIR or /tmp/vm-backup-lab)
 */
import { buildGuest, defaultLabDir } from './guest-image';
import { installPackages } from './install-packages';
import { libvirtStart, libvirtStatus, libvirtStop } from './libvirt-lab';
import { DiskFormat, labStatus, probeLab, startLab, stopLab, verifyVmRecords } from './lab-vms';

const USAGE = `usage: node dist/lab/cli.js <command> [options]
commands:
  install                      install missing Debian packages (apt-get)
  build [--force]              build the guest kernel+initramfs (cached by content hash)
  start [--vm NAME]... [--raw|--qcow2] [--no-install] [--no-wait] [--timeout SEC]
                               install packages, build guest, start VMs, wait for agents and workloads
  stop [--hard]                stop all lab VMs and NBD servers
  status [--probe]             print JSON status
  records VM                   verify records.log on VM's data disk (offline read of the image)
  libvirt-start [--no-install] libvirtd by hand + domains vmb-lv-agent, vmb-lv-noagent (running), vmb-lv-off
  libvirt-stop                 stop and undefine those domains, stop the libvirtd it started
  libvirt-status               JSON: each lab domain's state
options:
  --lab-dir DIR                lab directory (default $VMBACKUP_LAB_DIR or /tmp/vm-backup-lab)`;

interface Parsed {
  cmd: string;
  labDir: string;
  flags: Set<string>;
  vms: string[];
  positional: string[];
  timeoutSec?: number;
}

function parse(argv: string[]): Parsed {
  const p: Parsed = { cmd: argv[0] ?? '', labDir: defaultLabDir(), flags: new Set(), vms: [], positional: [] };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--lab-dir') p.labDir = argv[++i];
    else if (a.startsWith('--lab-dir=')) p.labDir = a.slice('--lab-dir='.length);
    else if (a === '--vm') p.vms.push(argv[++i]);
    else if (a === '--timeout') p.timeoutSec = Number(argv[++i]);
    else if (a.startsWith('--')) p.flags.add(a.slice(2));
    else p.positional.push(a);
  }
  if (!p.labDir) throw new Error('--lab-dir needs a value');
  return p;
}

async function main(argv: string[]): Promise<number> {
  const p = parse(argv);
  const log = (m: string): void => console.error(m);
  switch (p.cmd) {
    case 'install': {
      const r = await installPackages({ log: (m) => console.log(m), dryRun: p.flags.has('dry-run') });
      console.log(JSON.stringify(r));
      return 0;
    }
    case 'build': {
      const g = await buildGuest({ labDir: p.labDir, force: p.flags.has('force'), log });
      console.log(JSON.stringify(g, null, 2));
      return 0;
    }
    case 'start': {
      const t0 = Date.now();
      const format: DiskFormat | undefined = p.flags.has('raw') ? 'raw' : p.flags.has('qcow2') ? 'qcow2' : undefined;
      const r = await startLab({
        labDir: p.labDir,
        vms: p.vms.length > 0 ? p.vms : undefined,
        dataFormat: format,
        install: !p.flags.has('no-install'),
        wait: !p.flags.has('no-wait'),
        timeoutMs: p.timeoutSec ? p.timeoutSec * 1000 : undefined,
        log,
      });
      console.log(
        JSON.stringify(
          {
            labDir: r.labDir,
            elapsedMs: Date.now() - t0,
            guest: { kernel: r.guest.kernel, initramfs: r.guest.initramfs, cached: r.guest.cached },
            vms: r.vms.map((v) => ({
              name: v.name,
              pid: v.pid,
              started: v.started,
              agent: v.agent,
              agentReadyMs: v.agentReadyMs,
              workloadReadyMs: v.workloadReadyMs,
              qmp: v.paths.qmpSocket,
              qga: v.paths.qgaSocket,
              log: v.paths.logFile,
              data: v.paths.dataImage,
            })),
          },
          null,
          2,
        ),
      );
      return 0;
    }
    case 'stop':
      await stopLab(p.labDir, { graceful: !p.flags.has('hard'), log });
      return 0;
    case 'status': {
      const st = p.flags.has('probe') ? await probeLab(p.labDir) : labStatus(p.labDir);
      console.log(JSON.stringify(st, null, 2));
      return 0;
    }
    case 'records': {
      const vm = p.positional[0];
      if (!vm) throw new Error('records: which VM?');
      const v = await verifyVmRecords(vm, p.labDir);
      console.log(JSON.stringify(v, null, 2));
      return v.ok ? 0 : 1;
    }
    case 'libvirt-start': {
      const doms = await libvirtStart({
        labDir: p.labDir,
        install: !p.flags.has('no-install'),
        log,
        ...(p.timeoutSec ? { timeoutMs: p.timeoutSec * 1000 } : {}),
      });
      console.log(JSON.stringify(doms, null, 2));
      return 0;
    }
    case 'libvirt-stop':
      await libvirtStop({ labDir: p.labDir, log });
      return 0;
    case 'libvirt-status':
      console.log(JSON.stringify(await libvirtStatus(p.labDir), null, 2));
      return 0;
    case '':
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return p.cmd === '' ? 2 : 0;
    default:
      console.error(`unknown command ${p.cmd}\n${USAGE}`);
      return 2;
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      console.error(e instanceof Error ? e.message : String(e));
      process.exitCode = 1;
    },
  );
}

export { main };
