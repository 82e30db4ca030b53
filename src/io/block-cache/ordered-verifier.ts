import { createCipheriv, createHash, type Hash, randomBytes } from 'node:crypto';
import { ErofsOciError } from '../../errors.ts';
import type { BlockGrid } from '../block-grid.ts';

export interface VerifierOptions {
  digest: string;
  name: string;
  size: number;
  grid: BlockGrid;
  /** Bytes of blocks ahead of the running hash it may hold on to. */
  aheadBudget: number;
  /** A block's bytes from memory or disk, when they are still at hand. */
  lookup(block: number): Uint8Array | Promise<Uint8Array | null> | undefined;
  verified(): void;
  failed(error: ErofsOciError): void;
  /** Told of bytes the verifier holds on to beyond the call that handed them over, and lets go of. */
  hold?(bytes: Uint8Array): void;
  drop?(bytes: Uint8Array): void;
}

/**
 * The running digest of an object whose blocks arrive in any order (see "Integrity" in
 * src/io/block-cache.ts): blocks are hashed strictly in order, each as soon as it and all before it are at
 * hand.
 */
export class OrderedVerifier {
  readonly #options: VerifierOptions;
  readonly #algorithm: string;
  readonly #expected: string;
  readonly #hash: Hash;
  /** The next block the running hash needs. */
  #next = 0;
  /**
   * The fingerprint (`#fingerprint`) of every block hashed so far (blocks before `#next`), to check copies
   * fetched again: 16 bytes per block, 0.4% of the object at 4 KiB blocks.
   */
  readonly #blockHashes: Uint8Array;
  readonly #fetched: Uint8Array;
  #fetchedCount = 0;
  /** Blocks that arrived ahead of the running hash, kept within the budget. */
  readonly #ahead = new Map<number, Uint8Array>();
  #aheadBytes = 0;
  /** The hashing in progress: one at a time, in order. */
  #chain: Promise<void> = Promise.resolve();
  #failure: ErofsOciError | undefined;
  /** Key of the block fingerprints: random, and never leaves this object. */
  readonly #fingerprintKey = randomBytes(16);
  state: 'pending' | 'verified' | 'failed' = 'pending';

  constructor(options: VerifierOptions) {
    const match = /^(sha256|sha512):([0-9a-f]+)$/.exec(options.digest);
    if (!match || (match[2] as string).length !== (match[1] === 'sha256' ? 64 : 128)) {
      throw new ErofsOciError(
        'usage',
        `Cannot create block cache: cannot verify digest ${options.digest} (sha256:HEX or sha512:HEX)`,
      );
    }
    this.#options = options;
    this.#algorithm = match[1] as string;
    this.#expected = match[2] as string;
    this.#hash = createHash(this.#algorithm);
    this.#fetched = new Uint8Array(options.grid.count);
    this.#blockHashes = new Uint8Array(options.grid.count * BLOCK_HASH_BYTES);
    if (options.grid.count === 0) void this.#pump().catch(() => {});
  }

  /** Every block has been fetched once and the verdict is still out: reads wait for it. */
  get awaitingVerdict(): boolean {
    return this.state === 'pending' && this.#fetchedCount === this.#options.grid.count;
  }

  /** Whether the running hash has yet to take `block` (it is pending and the block lies ahead of it). */
  needs(block: number): boolean {
    return this.state === 'pending' && block >= this.#next;
  }

  /** Resolves when the hashing started so far is done (it may stop short of the end: see "Integrity"). */
  settled(): Promise<void> {
    return this.#chain;
  }

  /** Blocks a disk cache kept from an earlier run. */
  markFetched(blocks: Iterable<number>): void {
    for (const block of blocks) this.#mark(block);
    if (this.awaitingVerdict) void this.#pump().catch(() => {});
  }

  /** The disk cache holds every block and verified them in an earlier run. */
  trust(): void {
    if (this.state === 'pending') this.state = 'verified';
  }

  /** Throws when a block fetched again differs from its first copy, which the running hash has taken. */
  check(block: number, bytes: Uint8Array): void {
    if (this.#failure) throw this.#failure;
    if (block >= this.#next) return;
    const known = this.#blockHashes.subarray(block * BLOCK_HASH_BYTES, (block + 1) * BLOCK_HASH_BYTES);
    if (!this.#fingerprint(block, bytes).equals(known)) {
      const start = this.#options.grid.start(block);
      throw new ErofsOciError(
        'digest-mismatch',
        `Cannot verify block ${block} (bytes ${start}-${start + bytes.byteLength - 1}) of ${this.#options.name}: fetched again, it differs from the copy hashed before`,
      );
    }
  }

  /**
   * Takes a block just fetched (after `check`) or loaded from the disk cache, which the caller has kept in
   * memory or on disk where it could. Rejects, when it is the last block missing, with the verdict.
   */
  async offer(block: number, bytes: Uint8Array): Promise<void> {
    if (this.#failure) throw this.#failure;
    if (this.state !== 'pending' || block < this.#next) return;
    this.#mark(block);
    const completing = this.awaitingVerdict;
    // The block the hash needs next and the one completing the object are held whatever the budget: the
    // caches may not have kept them (no disk cache, a small memory budget).
    if (
      !this.#ahead.has(block) &&
      (block === this.#next || completing || this.#aheadBytes + bytes.byteLength <= this.#options.aheadBudget)
    ) {
      this.#ahead.set(block, bytes);
      this.#aheadBytes += bytes.byteLength;
      this.#options.hold?.(bytes);
    }
    if (block !== this.#next && !completing) return;
    const run = this.#pump();
    if (completing) await run;
    else run.catch(() => {});
  }

  #mark(block: number): void {
    if (block < this.#options.grid.count && this.#fetched[block] === 0) {
      this.#fetched[block] = 1;
      this.#fetchedCount++;
    }
  }

  #pump(): Promise<void> {
    const run = this.#chain.then(() => this.#advance());
    this.#chain = run.catch(() => {
      // The reader whose block completed the hash gets the verdict; later hashing still runs.
    });
    return run;
  }

  /**
   * A block's fingerprint, to recognise a different copy fetched later: its GMAC (the AES-128-GCM tag of
   * the block as additional data, nonce = the block index) under a random key no one outside this process
   * knows, so an origin cannot make a different block match (forgery chance about 2^-112 for 1 MiB
   * blocks). A keyed universal hash rather than SHA-256: the running hash already costs one SHA-256 pass
   * over the object, and this costs a tenth of another.
   */
  #fingerprint(block: number, bytes: Uint8Array): Buffer {
    const nonce = Buffer.alloc(12);
    nonce.writeUIntBE(block, 6, 6);
    const gmac = createCipheriv('aes-128-gcm', this.#fingerprintKey, nonce);
    gmac.setAAD(bytes);
    gmac.final();
    return gmac.getAuthTag();
  }

  async #advance(): Promise<void> {
    const count = this.#options.grid.count;
    while (this.state === 'pending' && this.#next < count) {
      const block = this.#next;
      let bytes = this.#ahead.get(block) ?? null;
      if (!bytes) {
        const found = this.#options.lookup(block);
        bytes = (found instanceof Promise ? await found : found) ?? null;
        if (this.state !== 'pending' || this.#next !== block) continue;
      }
      // Not at hand (never fetched, or evicted): a later fetch of it resumes the hashing.
      if (!bytes) break;
      this.#hash.update(bytes);
      this.#blockHashes.set(this.#fingerprint(block, bytes), block * BLOCK_HASH_BYTES);
      const held = this.#ahead.get(block);
      if (held) {
        this.#ahead.delete(block);
        this.#aheadBytes -= held.byteLength;
        this.#options.drop?.(held);
      }
      this.#next++;
    }
    // Blocks held beyond the budget (see `offer`) are let go once this pass is over.
    if (this.#aheadBytes > this.#options.aheadBudget) {
      for (const held of [...this.#ahead.keys()].sort((a, b) => b - a)) {
        if (this.#aheadBytes <= this.#options.aheadBudget) break;
        const bytes = this.#ahead.get(held) as Uint8Array;
        this.#aheadBytes -= bytes.byteLength;
        this.#ahead.delete(held);
        this.#options.drop?.(bytes);
      }
    }
    if (this.state === 'pending' && this.#next === count) {
      const actual = this.#hash.digest('hex');
      for (const bytes of this.#ahead.values()) this.#options.drop?.(bytes);
      this.#ahead.clear();
      this.#aheadBytes = 0;
      if (actual === this.#expected) {
        this.state = 'verified';
        this.#options.verified();
      } else {
        this.state = 'failed';
        this.#failure = new ErofsOciError(
          'digest-mismatch',
          `Cannot verify ${this.#options.name}: its ${this.#options.size} bytes have digest ${this.#algorithm}:${actual}, expected ${this.#options.digest}`,
        );
        this.#options.failed(this.#failure);
      }
    }
    if (this.#failure) throw this.#failure;
  }
}

const BLOCK_HASH_BYTES = 16;
