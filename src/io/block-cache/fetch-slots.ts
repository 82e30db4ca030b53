/**
 * A counting semaphore for range fetches where demand reads overtake queued readahead: prefetching must
 * not delay what a reader is waiting for.
 */
export class FetchSlots {
  readonly #max: number;
  #used = 0;
  readonly #demand: (() => void)[] = [];
  readonly #readahead: (() => void)[] = [];

  constructor(max: number) {
    this.#max = max;
  }

  acquire(priority: 'demand' | 'readahead'): Promise<void> {
    if (this.#used < this.#max) {
      this.#used++;
      return Promise.resolve();
    }
    return new Promise((resolve) => (priority === 'demand' ? this.#demand : this.#readahead).push(resolve));
  }

  release(): void {
    const next = this.#demand.shift() ?? this.#readahead.shift();
    if (next) next();
    else this.#used--;
  }
}
