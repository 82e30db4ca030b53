/**
 * The currency between layers: a random-access, read-only sequence of bytes. Registry blobs, caches, gzip
 * indexes, concatenations and local files are all byte sources; NBD and FUSE servers export one.
 */
export interface ReadOptions {
  signal?: AbortSignal;
}

export interface ByteSource {
  /** Total length in bytes. */
  readonly size: number;
  /**
   * Returns exactly `length` bytes starting at `offset`, or throws an `ErofsOciError`.
   * `offset + length` must not exceed `size`. The bytes may be a view of what the source keeps (a cache
   * hands out views of its blocks): callers must not modify them.
   */
  read(offset: number, length: number, options?: ReadOptions): Promise<Uint8Array>;
}

/** Optional ability: sources holding OS resources release them here. Found with `isClosable`. */
export interface Closable {
  close(): Promise<void>;
}

export function isClosable(value: unknown): value is Closable {
  return typeof (value as Partial<Closable>)?.close === 'function';
}

/** Bytes lent by a source: valid until `release()`, after which the source may reuse their memory. */
export interface Loan {
  readonly bytes: Uint8Array;
  /** Once, when done with the bytes (sent, copied). */
  release(): void;
}

/**
 * Optional ability: a source that can lend the bytes of a read instead of giving them away, so that it can
 * recycle its buffers (the block cache does). Found with `isLending`.
 */
export interface Lending {
  /** As `read`, but the bytes must not be used after `release()`. */
  lend(offset: number, length: number, options?: ReadOptions): Promise<Loan>;
}

export function isLending(value: unknown): value is Lending {
  return typeof (value as Partial<Lending>)?.lend === 'function';
}
