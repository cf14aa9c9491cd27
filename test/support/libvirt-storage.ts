// Real storage of the kinds libvirt hosts use, made on this machine for the libvirt storage
// suite: a loop device (a block device like an LVM volume; no device-mapper here), an NBD export
// served by qemu-nbd, an iSCSI target served by tgtd (Debian `tgt`, a userspace target) and a
// libvirt dir pool. Each returns its own stop; nothing here touches what it did not make.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';

function run(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8', timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.stderr || r.error?.message || `exit ${r.status}`}`);
  return r.stdout;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A free TCP port on 127.0.0.1 (asked of the kernel). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

export interface Stoppable {
  stop(): Promise<void>;
}

/** `losetup` a file: the returned device is a host block device. */
export function loopDevice(file: string): Stoppable & { dev: string } {
  const dev = run('losetup', ['--find', '--show', file]).trim();
  return {
    dev,
    stop: async () => {
      spawnSync('losetup', ['-d', dev]);
    },
  };
}

async function waitPort(port: number, child: ChildProcess, what: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1');
      s.on('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on 127.0.0.1:${port}`);
    await sleep(100);
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const kill = setTimeout(() => child.kill('SIGKILL'), 5000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** qemu-nbd serving `file` (raw) on 127.0.0.1, several clients at once, until stopped. */
export async function nbdServer(file: string, exportName: string): Promise<Stoppable & { port: number; exportName: string }> {
  const port = await freePort();
  const child = spawn('qemu-nbd', ['-f', 'raw', '-x', exportName, '-b', '127.0.0.1', '-p', String(port), '-e', '8', '-t', file], {
    stdio: 'ignore',
  });
  await waitPort(port, child, 'qemu-nbd');
  return { port, exportName, stop: () => stopChild(child) };
}

/**
 * tgtd (userspace iSCSI) on 127.0.0.1:`port` with `file` as LUN 1 of one target. Its own control
 * port, so another tgtd on this machine (another suite's, on port 3260) is never addressed.
 */
export async function iscsiTarget(
  file: string,
  o: { port: number; controlPort: number; iqn: string },
): Promise<Stoppable & { url: string; iqn: string; port: number }> {
  const child = spawn('tgtd', ['-f', '-C', String(o.controlPort), '--iscsi', `portal=127.0.0.1:${o.port}`], { stdio: 'ignore' });
  await waitPort(o.port, child, 'tgtd');
  const adm = (...args: string[]) => run('tgtadm', ['-C', String(o.controlPort), '--lld', 'iscsi', ...args]);
  try {
    adm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', o.iqn);
    adm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', file);
    adm('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  } catch (err) {
    await stopChild(child);
    throw err;
  }
  return {
    url: `iscsi://127.0.0.1:${o.port}/${o.iqn}/1`,
    iqn: o.iqn,
    port: o.port,
    stop: async () => {
      // tgtd stays up while a target exists: the target goes first, then the daemon
      spawnSync('tgtadm', ['-C', String(o.controlPort), '--lld', 'iscsi', '--op', 'delete', '--mode', 'target', '--tid', '1', '--force']);
      spawnSync('tgtadm', ['-C', String(o.controlPort), '--op', 'delete', '--mode', 'system']);
      await stopChild(child);
    },
  };
}

/** A transient libvirt dir pool over `dir` (gone with pool-destroy; its files stay). */
export function dirPool(name: string, dir: string): Stoppable {
  spawnSync('virsh', ['-c', 'qemu:///system', 'pool-destroy', name]);
  run('virsh', ['-c', 'qemu:///system', 'pool-create-as', name, 'dir', '--target', dir]);
  return {
    stop: async () => {
      spawnSync('virsh', ['-c', 'qemu:///system', 'pool-destroy', name]);
    },
  };
}
