// sha256File reads into buffers it keeps between calls: whatever runs at once, every digest must
// be the digest of its own file's bytes.
import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { sha256File } from '../../../src/repository/repository';

describe('sha256File', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-sha-'));
  after(() => fs.rm(dir, { recursive: true, force: true }));

  it('gives each file its own digest, ten at once, sizes from empty to several read pieces', async () => {
    const sizes = [0, 1, 4095, 2 << 20, (2 << 20) + 1, 5 * (1 << 20) + 7, 3, 7 << 20, 1 << 20, 12345];
    const files = await Promise.all(
      sizes.map(async (n, i) => {
        const data = randomBytes(n);
        const file = path.join(dir, `f${i}`);
        await fs.writeFile(file, data);
        return { file, want: createHash('sha256').update(data).digest('hex') };
      }),
    );
    for (let round = 0; round < 2; round++) {
      const got = await Promise.all(files.map((f) => sha256File(f.file)));
      assert.deepEqual(
        got,
        files.map((f) => f.want),
      );
    }
  });

  it('fails for a file that cannot be read, and the next call still works', async () => {
    await assert.rejects(sha256File(path.join(dir, 'missing')), { code: 'ENOENT' });
    const file = path.join(dir, 'after');
    await fs.writeFile(file, 'abc');
    assert.equal(await sha256File(file), createHash('sha256').update('abc').digest('hex'));
  });
});
