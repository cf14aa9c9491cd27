// A real qemu-ga that lists `count` file systems: run (as root) under `unshare -m` so that its
// mounts (bind mounts of one directory, which qemu-ga lists as file systems on a disk) exist only
// in its own mount namespace, and vanish with it. It serves a VM's agent socket in the bare fault
// cases. Every command that could change the machine it runs on (freeze, exec, file writes,
// shutdown, time) is blocked: the product only reads from it.
//   unshare -m --propagation private node many-filesystems-agent.js <socket> <count> <scratch dir>
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import * as path from 'node:path';

const BLOCKED = [
  'guest-fsfreeze-freeze',
  'guest-fsfreeze-freeze-list',
  'guest-fstrim',
  'guest-shutdown',
  'guest-suspend-disk',
  'guest-suspend-ram',
  'guest-suspend-hybrid',
  'guest-exec',
  'guest-file-open',
  'guest-set-time',
  'guest-set-user-password',
  'guest-set-vcpus',
  'guest-set-memory-blocks',
  'guest-ssh-add-authorized-keys',
  'guest-ssh-remove-authorized-keys',
];

const [socket, countText, scratch] = process.argv.slice(2);
const count = Number(countText);
const source = path.join(scratch, 'source');
mkdirSync(source, { recursive: true });
for (let i = 0; i < count; i++) {
  const target = path.join(scratch, 'mnt', String(i));
  mkdirSync(target, { recursive: true });
  execFileSync('mount', ['--bind', source, target]);
}
const agent = spawn('qemu-ga', ['--method', 'unix-listen', '--path', socket, '--block-rpcs', BLOCKED.join(',')], { stdio: 'inherit' });
const stop = () => agent.kill('SIGTERM');
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
agent.on('exit', (code) => process.exit(code ?? 0));
