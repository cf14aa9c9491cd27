// sha256 on the hashing thread (src/util/hash-worker.ts): the same digest as node:crypto on this
// thread, for shared buffers read in place and ordinary ones copied, several hashes interleaved;
// an idle thread does not hold a process open, a hash in progress does.
import * as assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { SharedHash, sharedBuffer } from '../../../src/util/hash-worker';
import { runProgram } from '../../../src/util/run';

describe('sha256 on the hashing thread', function () {
  this.timeout(20_000);

  it('digests as node:crypto does, shared buffers in place and others copied, two hashes interleaved', async () => {
    const a = new SharedHash();
    const b = new SharedHash();
    const ra = createHash('sha256');
    const rb = createHash('sha256');
    const shared = sharedBuffer(1 << 20);
    for (let i = 0; i < 5; i++) {
      randomBytes(shared.length).copy(shared);
      const plain = randomBytes(1000 + i);
      ra.update(shared);
      rb.update(plain);
      // the shared buffer is rewritten only after its update resolved: that is the contract
      await Promise.all([a.update(shared), b.update(plain)]);
    }
    assert.equal(await a.digest(), ra.digest('hex'));
    assert.equal(await b.digest(), rb.digest('hex'));
    await assert.rejects(a.update(shared), /after its digest/);
    const empty = new SharedHash();
    assert.equal(await empty.digest(), createHash('sha256').digest('hex'));
  });

  it('an idle thread lets a process end; an awaited hash keeps it until the answer', async () => {
    const mod = path.join(__dirname, '../../../src/util/hash-worker.js');
    const script = `const { SharedHash, sharedBuffer } = require(${JSON.stringify(mod)});
      (async () => { const h = new SharedHash(); await h.update(sharedBuffer(1 << 20)); console.log(await h.digest()); })();`;
    const t0 = Date.now();
    const r = await runProgram(process.execPath, ['-e', script]);
    assert.equal(
      r.stdout.trim(),
      createHash('sha256')
        .update(Buffer.alloc(1 << 20))
        .digest('hex'),
    );
    assert.ok(Date.now() - t0 < 10_000, 'the process ended by itself');
  });
});
