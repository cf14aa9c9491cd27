// Saved state without a shell: QEMU migrates to a unix socket we listen on, and we write the
// stream to the file. (The "exec:" URI would have QEMU run /bin/sh; "file:" needs QEMU >= 8.2.)
import { createWriteStream, promises as fs } from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import type { QmpClient } from './protocol';

export async function saveStateToFile(qmp: QmpClient, file: string, timeoutMs: number): Promise<{ bytes: number }> {
  // unix socket paths are limited to 108 bytes, staging paths may be longer
  const sock = path.join(os.tmpdir(), `vmbackup-mig-${randomBytes(6).toString('hex')}.sock`);
  let accepted: Promise<void> | undefined;
  const server = net.createServer({ allowHalfOpen: false });
  const received = new Promise<void>((resolve, reject) => {
    server.once('connection', (conn) => {
      server.close();
      accepted = pipeline(conn, createWriteStream(file, { mode: 0o600 }));
      accepted.then(resolve, reject);
    });
    server.once('error', reject);
  });
  await new Promise<void>((resolve, reject) => server.listen(sock, resolve).once('error', reject));
  try {
    await fs.chmod(sock, 0o600);
    const done = waitMigration(qmp, timeoutMs);
    await qmp.execute('migrate', { uri: `unix:${sock}` });
    await done;
    await withTimeout(received, timeoutMs, 'writing the saved state');
    const handle = await fs.open(file, 'r');
    try {
      await handle.sync();
      return { bytes: (await handle.stat()).size };
    } finally {
      await handle.close();
    }
  } finally {
    server.close();
    await fs.rm(sock, { force: true });
  }
}

async function waitMigration(qmp: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  // Poll query-migrate: MIGRATION events need the "events" capability, polling works everywhere.
  for (;;) {
    await new Promise((r) => setTimeout(r, 20));
    const st = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') throw new Error(`saving state failed: ${st['error-desc'] ?? st.status}`);
    if (Date.now() > deadline) {
      await qmp.execute('migrate_cancel').catch(() => undefined);
      throw new Error(`saving state took longer than ${timeoutMs} ms; cancelled`);
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}
