import * as assert from 'node:assert/strict';
import { nextLookMs } from '../../../src/providers/qemu/job';

// The looks at a backup job: soon after its predicted end, never a storm of them.
describe('qemu job: when to look next', () => {
  const look = (elapsedMs: number, done: number, total: number, moved = true, lastWaitMs = 5) => ({
    elapsedMs,
    done,
    total,
    moved,
    lastWaitMs,
  });

  it('a job moving at a steady pace is looked at right after its predicted end', () => {
    // 120 ms for 80 of 100 MiB: 30 ms left
    assert.equal(nextLookMs(look(120, 80, 100), 1000), 31);
  });

  it('never waits longer than half the time the job has run (a wrong prediction costs at most half again)', () => {
    // 10 ms for 1 of 100 parts: the pace says 990 ms, the cap says 5
    assert.equal(nextLookMs(look(10, 1, 100), 1000), 5);
    assert.equal(nextLookMs(look(400, 1, 100), 1000), 200);
    assert.equal(nextLookMs(look(60_000, 1, 100), 1000), 1000, 'and never longer than the longest wait');
  });

  it('a job that did not move since the last look (stuck flushing at its end, or not started) is not asked every few ms', () => {
    assert.equal(nextLookMs(look(100, 100, 100, false, 20), 1000), 40, 'done but not concluded: the wait doubles');
    assert.equal(nextLookMs(look(100, 50, 100, false, 20), 1000), 40);
    assert.equal(nextLookMs(look(100_000, 50, 100, false, 800), 1000), 1000);
  });

  it('a job about to end is looked at within a few ms, never sooner than 2 ms', () => {
    assert.equal(nextLookMs(look(1000, 99_999, 100_000), 1000), 2);
  });

  it('a look over many hours stays at the longest wait: 1 look a second', () => {
    let wait = 5;
    let looks = 0;
    for (let t = 0; t < 3_600_000; t += wait, looks++) wait = nextLookMs(look(t, t, 3_600_000 * 2, true, wait), 1000);
    assert.ok(looks < 3_700, `${looks} looks in an hour`);
    assert.ok(looks > 3_500, `${looks} looks in an hour`);
  });
});
