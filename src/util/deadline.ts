// Waiting with a bound: an ending must finish within its deadline whatever it waits for (a stage
// that does not stop, an undo the hypervisor does not answer).

/** True when `p` settled within `ms`. */
export async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const settled = p.then(
    () => true,
    () => true,
  );
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([settled, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** `p`'s value, or `late` when it takes longer than `ms` (no limit when ms is undefined). */
export async function withinMs<T>(p: Promise<T>, ms: number | undefined, late: T): Promise<T> {
  if (ms === undefined) return p;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<T>((r) => (timer = setTimeout(() => r(late), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}
