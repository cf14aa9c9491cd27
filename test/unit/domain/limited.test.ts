// The copy stage's places (src/pipeline/stage-error.ts): at most `limit` steps running; a step that
// frees its place early lets the next item start, but a place never holds more than that step's
// end and one running step; every step is settled before a failure is reported.
import assert from 'node:assert/strict';
import { limitedHandingOn, limitedSettledOrThrow } from '../../../src/pipeline/stage-error';

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));
const items = (n: number) => Array.from({ length: n }, (_, i) => ({ id: `vm${i}` }));

describe('limited steps over the VMs of a set', () => {
  it('limitedHandingOn: a freed step lets the next one start; a place holds at most its end and one running step', async () => {
    let running = 0;
    let maxRunning = 0;
    let alive = 0;
    let maxAlive = 0;
    const order: string[] = [];
    const out = await limitedHandingOn(items(6), 2, async (it, free) => {
      alive++;
      running++;
      maxAlive = Math.max(maxAlive, alive);
      maxRunning = Math.max(maxRunning, running);
      order.push(`start ${it.id}`);
      await tick(20); // the part the limit bounds
      running--;
      free();
      await tick(60); // its end: longer than the next one's bounded part
      alive--;
      return it.id;
    });
    assert.deepEqual(out, ['vm0', 'vm1', 'vm2', 'vm3', 'vm4', 'vm5'], 'results in the order of the items');
    assert.equal(maxRunning, 2, 'never more than the limit in the bounded part');
    assert.equal(maxAlive, 4, 'two places, each with one ending step and one running one');
    assert.equal(order.length, 6);
  });

  it('a step that never frees its place holds it to its end, as limitedSettledOrThrow', async () => {
    for (const run of [
      (step: () => Promise<void>) => limitedHandingOn(items(5), 2, () => step()),
      (step: () => Promise<void>) => limitedSettledOrThrow(items(5), 2, () => step()),
    ]) {
      let alive = 0;
      let maxAlive = 0;
      await run(async () => {
        maxAlive = Math.max(maxAlive, ++alive);
        await tick(15);
        alive--;
      });
      assert.equal(maxAlive, 2);
    }
  });

  it('a failing step (freed or not) fails the whole, naming it, only once every other step has ended', async () => {
    const ended: string[] = [];
    const err = await limitedHandingOn(items(5), 2, async (it, free) => {
      await tick(10);
      if (it.id === 'vm1') throw new Error('copy failed');
      free();
      await tick(it.id === 'vm4' ? 80 : 10);
      if (it.id === 'vm2') throw new Error('flush failed');
      ended.push(it.id);
    }).then(
      () => undefined,
      (e: Error) => e,
    );
    assert.ok(err);
    assert.match(err.message, /^no VM backed up: vm1: copy failed; vm2: flush failed$/);
    assert.deepEqual(ended.sort(), ['vm0', 'vm3', 'vm4'], 'vm4, the slowest to end, ended before the error was thrown');
  });
});
