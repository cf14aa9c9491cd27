// The pool of buffers a copy in Node-RED's process reuses (src/util/buffer-pool.ts): a buffer given
// back is the next one of its size handed out; one never borrowed is not taken in; a zeroed one is
// zeros whatever it held.
import * as assert from 'node:assert/strict';
import { borrow, borrowZeroed, giveBack } from '../../../src/util/buffer-pool';

describe('buffer pool', () => {
  it('hands a buffer given back out again, by size; zeroed when asked', () => {
    const a = borrow(12345);
    assert.equal(a.length, 12345);
    a.fill(7);
    giveBack(a);
    const b = borrow(12345);
    assert.equal(b, a, 'the same buffer again');
    assert.notEqual(borrow(12346), a, 'another size: another buffer');
    giveBack(b);
    const z = borrowZeroed(12345);
    assert.equal(z, a);
    assert.ok(
      z.every((x) => x === 0),
      'zeros, though it held sevens',
    );
    giveBack(z);
  });

  it('takes in only what it handed out, and each only once', () => {
    const stranger = Buffer.alloc(4321);
    giveBack(stranger);
    assert.notEqual(borrow(4321), stranger, 'a buffer it never lent is not handed out');
    const mine = borrow(999);
    giveBack(mine);
    giveBack(mine); // a second give-back of the same buffer is ignored
    const x = borrow(999);
    const y = borrow(999);
    assert.equal(x, mine);
    assert.notEqual(y, mine, 'never lent to two borrowers at once');
  });
});
