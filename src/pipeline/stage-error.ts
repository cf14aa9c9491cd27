/** A stage refused or failed (its message names the field, or every VM that failed and why). */
export class StageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StageError';
  }
}

/** Every VM's backup was published, but undoing the set's effects (merge, resume) failed afterwards. */
export class CleanupFailed extends StageError {
  constructor(
    message: string,
    readonly published: { vm: string; path: string }[],
  ) {
    super(message);
    this.name = 'CleanupFailed';
  }
}

/**
 * Run `step` for every item concurrently and wait for all of them (never leave one running
 * behind a failure: its side effect must be known before anything is undone). Throws one
 * StageError naming every item that failed.
 */
export async function allSettledOrThrow<In extends { id: string }, Out>(
  items: readonly In[],
  step: (item: In) => Promise<Out>,
): Promise<Out[]> {
  const results = await Promise.allSettled(items.map((item) => step(item)));
  const failed = results
    .map((r, i) => (r.status === 'rejected' ? { vm: items[i].id, error: (r.reason as Error)?.message ?? String(r.reason) } : undefined))
    .filter((f): f is { vm: string; error: string } => f !== undefined);
  if (failed.length > 0) {
    throw new StageError(`no VM backed up: ${failed.map((f) => `${f.vm}: ${f.error}`).join('; ')}`);
  }
  return results.map((r) => (r as PromiseFulfilledResult<Out>).value);
}

/** Like allSettledOrThrow, with at most `limit` steps running at once. */
export function limitedSettledOrThrow<In extends { id: string }, Out>(
  items: readonly In[],
  limit: number,
  step: (item: In) => Promise<Out>,
): Promise<Out[]> {
  // a step that never gives its place on holds it to its end
  return limitedHandingOn(items, limit, (item) => step(item));
}

/**
 * Like limitedSettledOrThrow, but a step may give its place to the next item before it ends
 * (`free()`: what is left of it needs nothing the limit bounds). A place then holds that step's
 * end and the next one, never more: it waits for the first to end before it takes a third.
 */
export async function limitedHandingOn<In extends { id: string }, Out>(
  items: readonly In[],
  limit: number,
  step: (item: In, free: () => void) => Promise<Out>,
): Promise<Out[]> {
  const started = new Map<In, Promise<Out>>();
  let next = 0;
  const worker = async (): Promise<void> => {
    let ending: Promise<void> = Promise.resolve();
    while (next < items.length) {
      const item = items[next++];
      let free: () => void = () => undefined;
      const freed = new Promise<void>((resolve) => (free = resolve));
      const result = step(item, free);
      started.set(item, result);
      const settled = result.then(
        () => undefined,
        () => undefined,
      );
      await Promise.race([freed, settled]);
      await ending;
      ending = settled;
    }
    await ending;
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return allSettledOrThrow(items, (item) => started.get(item)!);
}
