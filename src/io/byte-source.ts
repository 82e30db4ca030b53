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
