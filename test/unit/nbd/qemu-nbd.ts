// A real NBD server for the pull tests: qemu-nbd exporting a qcow2 image read-only as `d0` (with a
// disabled persistent bitmap as its `qemu:dirty-bitmap:` context when one is named), the way QEMU
// exports a view; and qemu-io to write into the images.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { runProgram } from '../../../src/util/run';

export async function qemuIo(file: string, ...cmds: string[]): Promise<void> {
  await runProgram('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file]);
}

export async function serve(file: string, sock: string, bitmap?: string): Promise<ChildProcess> {
  const p = spawn('qemu-nbd', ['-r', '-f', 'qcow2', '-k', sock, '-x', 'd0', ...(bitmap ? ['-B', bitmap] : []), '--persistent', file], {
    stdio: 'ignore',
  });
  for (let i = 0; i < 500 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 10));
  await new Promise((r) => setTimeout(r, 50)); // the socket exists at bind(), before listen()
  return p;
}
