// Durations from the monotonic clock, timestamps from the wall clock. A wall clock stepped back
// (NTP, an operator) while a stage runs must not make a reported duration negative (the stage's
// own output would then fail its schema) nor stretch or shorten a deadline that protects a guest.
// One way to time a duration: a monoNow() (performance.now()) reading at the start, msSince() at
// the end; the wall-clock moment, where one is reported, is a Date.now() taken beside it.
import { performance } from 'node:perf_hooks';

/** The monotonic clock in milliseconds (only differences of it mean anything). */
export function monoNow(): number {
  return performance.now();
}

/** Milliseconds since `mono` (a monoNow() reading), to a tenth of a millisecond: a duration to report. */
export function msSince(mono: number): number {
  return Math.round((performance.now() - mono) * 10) / 10;
}
