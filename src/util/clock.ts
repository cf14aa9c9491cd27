// Durations from the monotonic clock, timestamps from the wall clock. A wall clock stepped back
// (NTP, an operator) while a stage runs must not make a reported duration negative (the stage's
// own output would then fail its schema) nor stretch or shorten a deadline that protects a guest.
import { performance } from 'node:perf_hooks';

export interface Stopwatch {
  /** the wall-clock moment it started, ISO 8601 (a timestamp: for people and logs) */
  readonly iso: string;
  /** milliseconds since it started, on the monotonic clock */
  ms(): number;
}

export function stopwatch(): Stopwatch {
  const wall = Date.now();
  const mono = performance.now();
  return { iso: new Date(wall).toISOString(), ms: () => performance.now() - mono };
}

/** The monotonic clock in milliseconds (only differences of it mean anything). */
export function monoNow(): number {
  return performance.now();
}

/** Milliseconds since `mono` (a monoNow() reading), to a tenth of a millisecond: a duration to report. */
export function msSince(mono: number): number {
  return Math.round((performance.now() - mono) * 10) / 10;
}
