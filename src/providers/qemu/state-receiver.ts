// Receives one VM's saved state: `node state-receiver.js <socket> <file>`. Listens on the unix
// socket (mode 0600), writes the one stream QEMU's `migrate` sends to the file (mode 0600) and
// exits 0 when the stream has ended and the file is closed. Prints "listening" once QEMU may
// connect and "received <bytes>" at the end; a failure goes to stderr with exit code 1.
//
// Its own small process (see saved-state.ts): the stream, as large as the VM's memory, does not
// pass through Node-RED's event loop, and its speed, which is the stopped VM's downtime, does not
// depend on how busy Node-RED is.
import { createWriteStream, chmodSync, openSync } from 'node:fs';
import * as net from 'node:net';
import { pipeline } from 'node:stream/promises';

const [socketPath, file] = process.argv.slice(2);
if (!socketPath || !file) {
  process.stderr.write('usage: state-receiver <socket> <file>\n');
  process.exit(2);
}

function fail(err: Error): never {
  process.stderr.write(`${err.message}\n`);
  process.exit(1);
}

// opened before QEMU may connect: an unwritable repository fails here, before the VM is stopped
let fd: number;
try {
  fd = openSync(file, 'w', 0o600);
} catch (err) {
  fail(err as Error);
}
const server = net.createServer((conn) => {
  server.close();
  // A large write buffer: the socket's 64 KiB reads are written together (writev) while the
  // previous write runs, rather than each waiting for its own.
  const out = createWriteStream('', { fd, highWaterMark: 8 * 1024 * 1024 });
  pipeline(conn, out).then(() => {
    process.stdout.write(`received ${out.bytesWritten}\n`, () => process.exit(0));
  }, fail);
});
server.on('error', fail);
server.listen(socketPath, () => {
  try {
    chmodSync(socketPath, 0o600);
  } catch (err) {
    fail(err as Error);
  }
  process.stdout.write('listening\n');
});
// The parent gave up (it kills us) or went away: nothing is left to receive for.
process.on('SIGTERM', () => fail(new Error('stopped before the saved state was received')));
